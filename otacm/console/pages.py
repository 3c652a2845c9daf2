"""Console pages: login, logout and the home page.

Sessions live in a cookie (HttpOnly, SameSite=Lax) whose SHA-256 is stored server-side. Every
form that changes something carries a CSRF token: the login form a double-submit cookie (there
is no session yet), the others the session's own token.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from otacm.deps import SessionDep
from otacm.errors import OtacmError
from otacm.fleet.models import FleetImport, Vehicle
from otacm.observability import request_id
from otacm.security import service
from otacm.security.auth import (
    SESSION_COOKIE,
    NotAuthenticated,
    Principal,
    authenticate,
    client_address,
    refuse,
)
from otacm.security.permissions import ROLE_PERMISSIONS, Permission, Role, allows

LOGIN_CSRF_COOKIE = "otacm_login_csrf"

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    request: Request, *, name: str = "", error: str | None = None, status: int = 200
) -> Response:
    token = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(
        request, "login.html", {"csrf": token, "name": name, "error": error}, status_code=status
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    name: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, csrf):
        return _login_page(
            request,
            name=name,
            status=403,
            error="the form expired or did not come from this console; try again",
        )
    try:
        user, secret, _csrf = service.login(
            session, name.strip(), password, client_address(request), request_id(request)
        )
    except OtacmError as exc:
        # The failure is recorded (it throttles the next guess): keep it, show the form again.
        session.commit()
        return _login_page(request, name=name, error=exc.detail, status=exc.status_code)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        max_age=int(service.SESSION_LIFETIME.total_seconds()),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _console_principal(request: Request, session: Session) -> Principal | None:
    try:
        return authenticate(request, session)
    except NotAuthenticated:
        return None


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    principal = _console_principal(request, session)
    if principal is None or principal.csrf_token is None:
        return RedirectResponse("/login", status_code=303)
    if not secrets.compare_digest(principal.csrf_token, csrf):
        return Response("the form lacks this session's CSRF token", status_code=403)
    service.logout(session, principal.actor, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> Response:
    principal = _console_principal(request, session)
    if principal is None or principal.csrf_token is None:
        return RedirectResponse("/login", status_code=303)
    if not allows(principal.role, Permission.FLEET_READ):
        raise refuse(request, principal, Permission.FLEET_READ)
    by_model = session.execute(
        select(Vehicle.model, func.count()).group_by(Vehicle.model).order_by(Vehicle.model)
    ).all()
    imports = list(session.scalars(select(FleetImport).order_by(FleetImport.id.desc()).limit(5)))
    return templates.TemplateResponse(
        request,
        "home.html",
        {
            "user": principal,
            "permissions": sorted(ROLE_PERMISSIONS[Role(principal.role)]),
            "csrf": principal.csrf_token,
            "by_model": by_model,
            "total": sum(n for _, n in by_model),
            "imports": imports,
        },
    )
