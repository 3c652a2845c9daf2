"""Authentication and authorization of operator requests: the one dependency every route uses.

`require(permission)` authenticates the request (an API token in `Authorization: Bearer`, or
the console's session cookie) and checks the permission against the role table. Failures
answer 401 (who are you?) or 403 (not allowed); a refused permission is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from otacm.db import unit_of_work, utcnow
from otacm.errors import OtacmError
from otacm.observability import request_id
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.security.models import ApiToken, ConsoleSession, User
from otacm.security.permissions import Permission, allows
from otacm.security.service import any_users, digest

SESSION_COOKIE = "otacm_session"
CSRF_HEADER = "X-CSRF-Token"
# How stale a token's last_used_at may get before a request writes it again.
LAST_USED_GRANULARITY = timedelta(minutes=5)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotAuthenticated(OtacmError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(OtacmError):
    status_code = 403
    code = "forbidden"


class NoOperators(OtacmError):
    status_code = 503
    code = "no_operators"


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    name: str
    role: str
    token_id: int | None
    actor: Actor
    csrf_token: str | None = None  # set for console sessions
    # The token's recorded last use is older than LAST_USED_GRANULARITY: record this one.
    token_use_stale: bool = False


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _operators_exist(request: Request, session: Session) -> bool:
    # Once an operator exists one always will (users are disabled, never deleted).
    if getattr(request.app.state, "operators_exist", False):
        return True
    exists = any_users(session)
    request.app.state.operators_exist = exists
    return exists


def authenticate(request: Request, session: Session) -> Principal:
    if not _operators_exist(request, session):
        raise NoOperators(
            "no operator account exists yet: create the first admin with "
            "`otacm users create NAME --role admin`, then a token with "
            "`otacm tokens create --user NAME`"
        )
    address, rid = client_address(request), request_id(request)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated("use `Authorization: Bearer <api token>`")
        row = session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == digest(secret.strip()))
        ).first()
        if row is None:
            raise NotAuthenticated("the API token is not valid")
        token, user = row
        now = utcnow()
        if token.revoked_at is not None:
            raise NotAuthenticated("the API token was revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise NotAuthenticated("the API token has expired")
        if user.disabled_at is not None:
            raise NotAuthenticated("the user of this API token is disabled")
        stale = token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY
        return Principal(
            user.id,
            user.name,
            user.role,
            token.id,
            Actor(user.name, user.role, address, rid),
            token_use_stale=stale,
        )
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = session.execute(
            select(ConsoleSession, User)
            .join(User, User.id == ConsoleSession.user_id)
            .where(ConsoleSession.session_hash == digest(cookie))
        ).first()
        if found is not None:
            console_session, user = found
            if (
                console_session.ended_at is None
                and console_session.expires_at > utcnow()
                and user.disabled_at is None
            ):
                return Principal(
                    user.id,
                    user.name,
                    user.role,
                    None,
                    Actor(user.name, user.role, address, rid),
                    console_session.csrf_token,
                )
        raise NotAuthenticated("the console session has ended; log in again")
    raise NotAuthenticated("authentication required: `Authorization: Bearer <api token>`")


def record_token_use(request: Request, token_id: int) -> None:
    """Note a token's use, at most every LAST_USED_GRANULARITY: a write of its own (on SQLite
    under the write lock from BEGIN), so that authenticating stays a read."""
    with unit_of_work(request.app.state.write_session_factory) as session:
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow())
        )


def audit_refusal(request: Request, actor: Actor, detail: str) -> None:
    """Record a refused attempt, in a transaction of its own: the request's rolls back."""
    with unit_of_work(request.app.state.session_factory) as session:
        audit.record(
            session, actor, f"{request.method} {request.url.path}", outcome="refused", detail=detail
        )


def refuse(request: Request, principal: Principal, permission: str) -> Forbidden:
    audit_refusal(request, principal.actor, f"role {principal.role} lacks {permission}")
    return Forbidden(
        f"role {principal.role!r} may not do this (needs {permission})", permission=permission
    )


def require(permission: Permission) -> Callable[..., Principal]:
    """The dependency of a route that needs `permission`."""

    def dependency(request: Request) -> Principal:
        # Authentication is a unit of work of its own, done before the request's own
        # transaction starts: bookkeeping such as a token's last use never mixes with it.
        try:
            with unit_of_work(request.app.state.session_factory) as session:
                principal = authenticate(request, session)
        except NotAuthenticated as exc:
            # Attempts to change something without valid credentials are worth a record;
            # reads are not (they would let anyone fill the log).
            if request.method not in SAFE_METHODS:
                anonymous = Actor(
                    "(unauthenticated)", None, client_address(request), request_id(request)
                )
                audit_refusal(request, anonymous, exc.detail)
            raise
        if principal.token_use_stale and principal.token_id is not None:
            record_token_use(request, principal.token_id)
        # A cookie-authenticated change must prove it comes from our own page.
        if (
            principal.csrf_token is not None
            and request.method not in SAFE_METHODS
            and request.headers.get(CSRF_HEADER) != principal.csrf_token
        ):
            audit_refusal(request, principal.actor, "no CSRF token")
            raise Forbidden("the request lacks the console's CSRF token", field=CSRF_HEADER)
        if not allows(principal.role, permission):
            raise refuse(request, principal, permission)
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency
