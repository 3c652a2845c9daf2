"""Operators: users and roles (admins), API tokens (everyone their own; admins anyone's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.console.forms import FORM, FormDep, FormErrors, service_errors, text
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    render,
    see_other,
)
from otacm.errors import OtacmError
from otacm.security import service
from otacm.security.auth import Principal, refuse
from otacm.security.models import User
from otacm.security.permissions import Permission, Role, allows

router = console_router()

USER_FIELDS = ("name", "role", "password")
TOKEN_FIELDS = ("name", "user", "expires_in")


def _users_page(
    request: Request,
    session: Session,
    errors: FormErrors | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    users = [
        (u, service.user_summary(u)) for u in session.scalars(select(User).order_by(User.name))
    ]
    return render(
        request,
        "users.html",
        status_code=status,
        users=users,
        roles=list(Role),
        errors=errors or {},
        form=form or {},
    )


@router.get("/admin/users", response_class=HTMLResponse)
def users(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.USERS_MANAGE))],
) -> HTMLResponse:
    return _users_page(request, session)


@router.post("/admin/users", response_class=HTMLResponse)
def create_user(
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.USERS_MANAGE))],
) -> Response:
    sent = {name: text(form, name) for name in USER_FIELDS}
    try:
        service.create_user(session, principal.actor, sent["name"], sent["role"], sent["password"])
    except OtacmError as exc:
        session.rollback()
        sent.pop("password")  # never sent back to the browser
        return _users_page(
            request, session, service_errors(exc, USER_FIELDS), sent, exc.status_code
        )
    return see_other("/admin/users", "user_created")


@router.post("/admin/users/{name}/{change}", response_class=HTMLResponse)
def change_user(
    name: str,
    change: str,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.USERS_MANAGE))],
) -> Response:
    actor = principal.actor
    try:
        if change == "role":
            service.update_user(session, actor, name, role=text(form, "role"))
        elif change in ("disable", "enable"):
            service.update_user(session, actor, name, disabled=change == "disable")
        elif change == "password":
            service.set_password(session, actor, name, text(form, "password"))
        elif change == "unlock":
            service.unlock(session, actor, name)
        else:
            return _users_page(request, session, {FORM: f"no such change: {change}"}, status=404)
    except OtacmError as exc:
        session.rollback()
        return _users_page(
            request, session, {FORM: f"{name}: {exc.detail}"}, status=exc.status_code
        )
    done = {"role": "user_changed", "disable": "user_changed", "enable": "user_changed"}
    return see_other(
        "/admin/users", done.get(change, "password" if change == "password" else "unlocked")
    )


def _tokens_page(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    everyone: bool,
    errors: FormErrors | None = None,
    form: dict[str, str] | None = None,
    secret: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    manage = allows(principal.role, Permission.TOKENS_MANAGE)
    tokens = service.list_tokens(session, None if everyone and manage else principal.name)
    return render(
        request,
        "tokens.html",
        status_code=status,
        # The secret is on this page only: never stored, never cached.
        headers={"Cache-Control": "no-store"} if secret else None,
        tokens=tokens,
        everyone=everyone and manage,
        manage=manage,
        errors=errors or {},
        form=form or {},
        secret=secret,
    )


@router.get("/tokens", response_class=HTMLResponse)
def tokens(
    request: Request,
    session: ConsoleSession,
    principal: Annotated[Principal, Depends(can_view(Permission.TOKENS_OWN))],
    all: bool = False,
) -> HTMLResponse:
    if all and not allows(principal.role, Permission.TOKENS_MANAGE):
        raise refuse(request, principal, Permission.TOKENS_MANAGE)
    return _tokens_page(request, session, principal, everyone=all)


@router.post("/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.TOKENS_OWN))],
) -> Response:
    sent = {name: text(form, name) for name in TOKEN_FIELDS}
    owner = sent["user"] or principal.name
    if owner != principal.name and not allows(principal.role, Permission.TOKENS_MANAGE):
        raise refuse(request, principal, Permission.TOKENS_MANAGE)
    try:
        expires = service.parse_duration(sent["expires_in"]) if sent["expires_in"] else None
        new = service.create_token(session, principal.actor, owner, sent["name"], expires)
    except OtacmError as exc:
        session.rollback()
        errors = service_errors(exc, TOKEN_FIELDS)
        if exc.status_code == 404:
            errors = {"user": exc.detail}
        return _tokens_page(
            request, session, principal, everyone=False, errors=errors, form=sent,
            status=exc.status_code,
        )  # fmt: skip
    session.flush()
    return _tokens_page(
        request, session, principal, everyone=owner != principal.name, secret=new.secret
    )


@router.post("/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(
    token_id: int,
    request: Request,
    session: ConsoleWriteSession,
    principal: Annotated[Principal, Depends(can_do(Permission.TOKENS_OWN))],
) -> Response:
    _, owner = service.get_token(session, token_id)
    if owner != principal.name and not allows(principal.role, Permission.TOKENS_MANAGE):
        raise refuse(request, principal, Permission.TOKENS_MANAGE)
    service.revoke_token(session, principal.actor, token_id)
    return see_other("/tokens?all=true" if owner != principal.name else "/tokens", "revoked")
