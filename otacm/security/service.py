"""Operator accounts, API tokens and console logins.

Passwords are hashed with Argon2; API tokens and session secrets are random 256-bit values of
which only the SHA-256 is stored (fast enough to check on every request). No secret is ever
logged, audited or answered except the new token, once, to whoever created it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from otacm.db import utcnow
from otacm.errors import Conflict, NotFound, OtacmError, ValidationFailed
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.security.models import ApiToken, ConsoleSession, LoginFailure, User
from otacm.security.permissions import Role

TOKEN_PREFIX = "otacm_"
# Names appear in URLs, audit entries and CSV exports: keep them plain.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
# Longest lifetime a token may be given.
MAX_TOKEN_LIFETIME = timedelta(days=3650)
MIN_PASSWORD_LENGTH = 12
# Failed logins before an account locks, and for how long.
ACCOUNT_LOCK_AFTER = 5
ACCOUNT_LOCK_FOR = timedelta(minutes=15)
# Failed logins from one address within the window before it is refused outright.
ADDRESS_LIMIT = 20
ADDRESS_WINDOW = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=8)

_hasher = PasswordHasher()


class UserNotFound(NotFound):
    code = "user_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class LoginRefused(OtacmError):
    status_code = 401
    code = "login_refused"


class TooManyAttempts(OtacmError):
    status_code = 429
    code = "too_many_login_attempts"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"a password needs at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )


def user_summary(user: User) -> dict[str, object]:
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled_at is not None,
        "locked": user.locked_until is not None and user.locked_until > utcnow(),
    }


def get_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(f"no user named {name!r}", field="name")
    return user


def any_users(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(User)) != 0


def create_user(session: Session, actor: Actor, name: str, role: str, password: str) -> User:
    name = name.strip()
    if not USER_NAME.fullmatch(name):
        raise ValidationFailed(
            "a user name is 1-100 letters, digits and . _ @ - (starting with a letter or digit)",
            field="name",
        )
    try:
        Role(role)
    except ValueError:
        raise ValidationFailed(
            f"{role!r} is not a role; use one of {', '.join(Role)}", field="role"
        ) from None
    check_password_rules(password)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists already", field="name")
    now = utcnow()
    user = User(
        name=name,
        role=role,
        password_hash=_hasher.hash(password),
        failed_logins=0,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    session.flush()
    audit.record(
        session, actor, "user.create", object_type="user", object_id=name, after=user_summary(user)
    )
    return user


def update_user(
    session: Session,
    actor: Actor,
    name: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
) -> User:
    user = get_user(session, name)
    before = user_summary(user)
    if role is not None:
        try:
            user.role = Role(role).value
        except ValueError:
            raise ValidationFailed(
                f"{role!r} is not a role; use one of {', '.join(Role)}", field="role"
            ) from None
    if disabled is not None:
        user.disabled_at = (user.disabled_at or utcnow()) if disabled else None
        if disabled:
            # A disabled operator's console sessions end; enabling does not revive them.
            for console_session in session.scalars(
                select(ConsoleSession).where(
                    ConsoleSession.user_id == user.id, ConsoleSession.ended_at.is_(None)
                )
            ):
                console_session.ended_at = utcnow()
    user.updated_at = utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "user.update",
        object_type="user",
        object_id=name,
        before=before,
        after=user_summary(user),
    )
    return user


def set_password(session: Session, actor: Actor, name: str, password: str) -> None:
    user = get_user(session, name)
    check_password_rules(password)
    user.password_hash = _hasher.hash(password)
    user.updated_at = utcnow()
    audit.record(session, actor, "user.set_password", object_type="user", object_id=name)


def unlock(session: Session, actor: Actor, name: str) -> User:
    user = get_user(session, name)
    before = user_summary(user)
    user.failed_logins, user.locked_until, user.updated_at = 0, None, utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "user.unlock",
        object_type="user",
        object_id=name,
        before=before,
        after=user_summary(user),
    )
    return user


@dataclass(frozen=True, slots=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once, never stored


def token_summary(token: ApiToken, user_name: str) -> dict[str, object]:
    return {
        "id": token.id,
        "user": user_name,
        "name": token.name,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def create_token(
    session: Session, actor: Actor, user_name: str, label: str, expires_in: timedelta | None
) -> NewToken:
    user = get_user(session, user_name)
    label = label.strip() or "token"
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = ApiToken(
        user_id=user.id,
        name=label[:100],
        token_hash=digest(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 4],
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor,
        "token.create",
        object_type="token",
        object_id=token.id,
        after=token_summary(token, user.name),
    )
    return NewToken(token, secret)


def list_tokens(session: Session, user_name: str | None) -> list[tuple[ApiToken, str]]:
    query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
    if user_name is not None:
        query = query.where(User.name == user_name)
    return [(t, n) for t, n in session.execute(query.order_by(ApiToken.id))]


def get_token(session: Session, token_id: int) -> tuple[ApiToken, str]:
    row = session.execute(
        select(ApiToken, User.name)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == token_id)
    ).first()
    if row is None:
        raise TokenNotFound(f"no token with id {token_id}", field="id")
    return row[0], row[1]


def revoke_token(session: Session, actor: Actor, token_id: int) -> ApiToken:
    token, owner = get_token(session, token_id)
    if token.revoked_at is not None:
        return token  # revoked already: nothing changes, nothing to record
    before = token_summary(token, owner)
    token.revoked_at = utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "token.revoke",
        object_type="token",
        object_id=token.id,
        before=before,
        after=token_summary(token, owner),
    )
    return token


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m' or '3600s' as a time span: more than nothing, at most ten years."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    digits = text[:-1]
    if not (1 <= len(digits) <= 9 and digits.isascii() and digits.isdigit()) or (
        text[-1:] not in units
    ):
        raise ValidationFailed(
            f"{text[:20]!r} is not a duration like 30d, 12h or 90m", field="expires_in"
        )
    span = timedelta(seconds=int(digits) * units[text[-1]])
    if not timedelta(0) < span <= MAX_TOKEN_LIFETIME:
        raise ValidationFailed(
            f"a token lives more than 0 seconds and at most {MAX_TOKEN_LIFETIME.days} days",
            field="expires_in",
        )
    return span


_dummy_hash: list[str] = []


def _spend_a_password_check(password: str) -> None:
    """As long as checking a real password, so that timing does not tell user names apart."""
    if not _dummy_hash:
        _dummy_hash.append(_hasher.hash(secrets.token_hex(16)))
    with contextlib.suppress(VerificationError, InvalidHashError):
        _hasher.verify(_dummy_hash[0], password)


def _verify_password(user: User, password: str) -> bool:
    if not user.password_hash:
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def login(
    session: Session, name: str, password: str, address: str, request_id: str | None = None
) -> tuple[User, str, str]:
    """Check a console login; returns the user, the session secret and its CSRF token.

    Raises LoginRefused (wrong name or password, locked, disabled) or TooManyAttempts (this
    address failed too often lately). The caller commits failures too: they are the record
    that throttles the next guess.
    """
    now = utcnow()
    recent = session.scalar(
        select(func.count())
        .select_from(LoginFailure)
        .where(LoginFailure.address == address, LoginFailure.at > now - ADDRESS_WINDOW)
    )
    actor = Actor(name or "(anonymous)", None, address, request_id)
    if (recent or 0) >= ADDRESS_LIMIT:
        audit.record(
            session,
            actor,
            "login",
            object_type="user",
            object_id=name,
            outcome="refused",
            detail="too many failed logins from this address",
        )
        raise TooManyAttempts("too many failed logins from this address; try again later")
    user = session.scalar(select(User).where(User.name == name))
    if user is not None and user.locked_until is not None and user.locked_until <= now:
        # The lockout has run out: mistakes count afresh from here.
        user.failed_logins, user.locked_until = 0, None
    reason = None
    if user is None:
        _spend_a_password_check(password)
        reason = "unknown user"
    elif user.locked_until is not None and user.locked_until > now:
        reason = "account locked after repeated failures"
    elif not _verify_password(user, password):
        reason = "wrong password"
        user.failed_logins += 1
        if user.failed_logins >= ACCOUNT_LOCK_AFTER:
            user.locked_until = now + ACCOUNT_LOCK_FOR
            reason = "wrong password; account now locked"
    elif user.disabled_at is not None:
        reason = "user disabled"
    if reason is not None:
        session.add(LoginFailure(address=address, user_name=name[:100], at=now))
        audit.record(
            session,
            actor,
            "login",
            object_type="user",
            object_id=name,
            outcome="refused",
            detail=reason,
        )
        locked = user is not None and user.locked_until is not None and user.locked_until > now
        raise LoginRefused(
            "this account is locked; an admin can unlock it"
            if locked
            else "wrong user name or password"
        )
    assert user is not None
    user.failed_logins, user.locked_until = 0, None
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            user_id=user.id,
            session_hash=digest(secret),
            csrf_token=csrf,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    audit.record(
        session,
        Actor(user.name, user.role, address, request_id),
        "login",
        object_type="user",
        object_id=user.name,
    )
    return user, secret, csrf


def logout(session: Session, actor: Actor, secret: str) -> None:
    console_session = session.scalar(
        select(ConsoleSession).where(ConsoleSession.session_hash == digest(secret))
    )
    if console_session is not None and console_session.ended_at is None:
        console_session.ended_at = utcnow()
        audit.record(session, actor, "logout", object_type="user", object_id=actor.name)


def expiry_text(value: datetime | None) -> str:
    return value.isoformat() if value else "never"
