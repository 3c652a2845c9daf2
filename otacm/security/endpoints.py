"""HTTP endpoints for operators: users, API tokens, the audit log, and who is asking."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from otacm.deps import SessionDep
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security import service
from otacm.security.auth import Principal, audit_refusal, refuse, require
from otacm.security.models import ApiToken, AuditEntry, User
from otacm.security.permissions import ROLE_PERMISSIONS, Permission, Role, allows
from otacm.security.schemas import (
    AuditEntryOut,
    AuditPage,
    NewTokenOut,
    PasswordChange,
    TokenCreate,
    TokenOut,
    UserChange,
    UserCreate,
    UserOut,
    WhoAmI,
)

router = APIRouter(prefix="/api/v1", tags=["operators"])


def _user_out(user: User) -> UserOut:
    summary = service.user_summary(user)
    return UserOut(
        name=user.name,
        role=user.role,
        disabled=bool(summary["disabled"]),
        locked=bool(summary["locked"]),
        created_at=user.created_at,
    )


def _token_out(token: ApiToken, owner: str) -> TokenOut:
    return TokenOut(
        id=token.id,
        user=owner,
        name=token.name,
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        last_used_at=token.last_used_at,
    )


@router.get("/whoami", response_model=WhoAmI)
def whoami(principal: Annotated[Principal, Depends(require(Permission.TOKENS_OWN))]) -> WhoAmI:
    """The operator behind the credential and what the role allows."""
    return WhoAmI(
        name=principal.name,
        role=principal.role,
        permissions=sorted(ROLE_PERMISSIONS[Role(principal.role)]),
    )


@router.get("/users", response_model=list[UserOut])
def list_users(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> list[UserOut]:
    return [_user_out(u) for u in session.scalars(select(User).order_by(User.name))]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserCreate,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> UserOut:
    user = service.create_user(session, principal.actor, body.name, body.role.value, body.password)
    return _user_out(user)


@router.get("/users/{name}", response_model=UserOut)
def get_user(
    name: str,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> UserOut:
    return _user_out(service.get_user(session, name))


@router.patch("/users/{name}", response_model=UserOut)
def change_user(
    name: str,
    body: UserChange,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> UserOut:
    """Change a user's role, or disable / enable the account (users are never deleted)."""
    user = service.update_user(
        session,
        principal.actor,
        name,
        role=body.role.value if body.role else None,
        disabled=body.disabled,
    )
    return _user_out(user)


@router.post("/users/{name}/password", status_code=204)
def set_password(
    name: str,
    body: PasswordChange,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> None:
    service.set_password(session, principal.actor, name, body.password)


@router.post("/users/{name}/unlock", response_model=UserOut)
def unlock_user(
    name: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
) -> UserOut:
    """Lift the lockout that repeated failed logins put on an account."""
    return _user_out(service.unlock(session, principal.actor, name))


def _check_may_manage(request: Request, principal: Principal, owner: str | None) -> None:
    """Acting on someone else's tokens needs tokens.manage; a refusal is audited."""
    if owner != principal.name and not allows(principal.role, Permission.TOKENS_MANAGE):
        raise refuse(request, principal, Permission.TOKENS_MANAGE)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.TOKENS_OWN))],
    user: str | None = None,
    all_users: bool = False,
) -> list[TokenOut]:
    """Your own tokens; admins may name another `user` or ask for `all_users`."""
    owner = None if all_users else (user or principal.name)
    _check_may_manage(request, principal, owner)
    return [_token_out(t, name) for t, name in service.list_tokens(session, owner)]


@router.post("/tokens", response_model=NewTokenOut, status_code=201)
def create_token(
    request: Request,
    body: TokenCreate,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.TOKENS_OWN))],
) -> NewTokenOut:
    """A new API token for yourself (admins: for anyone). The secret is in this answer only."""
    owner = body.user or principal.name
    _check_may_manage(request, principal, owner)
    expires = service.parse_duration(body.expires_in) if body.expires_in else None
    new = service.create_token(session, principal.actor, owner, body.name, expires)
    return NewTokenOut(**_token_out(new.token, owner).model_dump(), token=new.secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    request: Request,
    token_id: int,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.TOKENS_OWN))],
) -> TokenOut:
    token, owner = service.get_token(session, token_id)
    if owner != principal.name and not allows(principal.role, Permission.TOKENS_MANAGE):
        # Someone else's token: recorded as refused, and as far as the caller can tell it
        # does not exist.
        audit_refusal(request, principal.actor, f"token {token_id} belongs to another user")
        raise service.TokenNotFound(f"no token with id {token_id}", field="id")
    token = service.revoke_token(session, principal.actor, token_id)
    return _token_out(token, owner)


CSV_DOWNLOAD = {"Content-Disposition": 'attachment; filename="audit.csv"'}
AUDIT_CSV_COLUMNS = (
    "id",
    "at",
    "actor",
    "actor_role",
    "address",
    "request_id",
    "action",
    "object_type",
    "object_id",
    "outcome",
    "detail",
    "entry_hash",
)


@router.get("/audit", response_model=AuditPage, responses={200: {"content": {"text/csv": {}}}})
def audit_log(
    request: Request,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.AUDIT_READ))],
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    outcome: Literal["success", "refused", "failed"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> AuditPage | StreamingResponse:
    """The audit log, newest first; `format=csv` streams every matching entry."""
    query = select(AuditEntry)
    for column, value in (
        (AuditEntry.actor, actor),
        (AuditEntry.action, action),
        (AuditEntry.object_type, object_type),
        (AuditEntry.object_id, object_id),
        (AuditEntry.outcome, outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    # A time without an offset is read as UTC.
    if since is not None:
        query = query.where(AuditEntry.at >= _as_utc(since))
    if until is not None:
        query = query.where(AuditEntry.at < _as_utc(until))
    if format == "csv":
        factory = request.app.state.session_factory
        return StreamingResponse(
            _audit_csv(factory, query),
            media_type="text/csv",
            headers=CSV_DOWNLOAD,
        )
    if cursor:
        query = query.where(AuditEntry.id < decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return AuditPage(
        items=[AuditEntryOut.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor
    )


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _csv_cell(value: object) -> object:
    """Cells a spreadsheet would run as a formula are quoted with a leading apostrophe: actor
    names and request ids come from outside."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _audit_csv(factory: sessionmaker[Session], query: Select[Any]) -> Iterator[str]:
    """Every matching entry, oldest first, on a session of its own: the response streams on
    after the request's session has closed."""
    with factory() as session:
        yield from _audit_rows(session, query)


def _audit_rows(session: Session, query: Select[Any]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AUDIT_CSV_COLUMNS)
    last_id = 0
    while True:
        rows = list(
            session.scalars(
                query.where(AuditEntry.id > last_id).order_by(AuditEntry.id).limit(2000)
            )
        )
        if not rows:
            break
        for row in rows:
            writer.writerow([_csv_cell(getattr(row, c)) for c in AUDIT_CSV_COLUMNS])
        last_id = rows[-1].id
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    if out.getvalue():
        yield out.getvalue()
