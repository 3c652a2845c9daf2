"""The web console: login, logout, its static files, and every screen's router.

Sessions live in a cookie (HttpOnly, SameSite=Lax) whose SHA-256 is stored server-side. Every
form that changes something carries a CSRF token: the login form a double-submit cookie (there
is no session yet), the others the session's own token (`web.can_do`).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from otacm.console import (
    admin,
    alerts,
    audit,
    campaign_ops,
    campaigns,
    dashboard,
    fleet,
    imports,
    targeting,
    updates,
    wizard,
)
from otacm.console.web import ConsoleSession, console_router, current_user, log, render
from otacm.errors import NotFound, OtacmError
from otacm.observability import request_id
from otacm.security import service
from otacm.security.auth import (
    SESSION_COOKIE,
    NotAuthenticated,
    authenticate,
    client_address,
)

LOGIN_CSRF_COOKIE = "otacm_login_csrf"

STATIC_DIR = Path(__file__).parent / "static"
# Installed from the npm registry by scripts/bootstrap (`npm ci`, pinned by package-lock.json).
VENDOR_DIR = Path(__file__).parent / "assets" / "node_modules"
# Every file the console serves, by the name in its URL: nothing else on disk is reachable.
STATIC_FILES = {
    "console.css": STATIC_DIR / "console.css",
    "console.js": STATIC_DIR / "console.js",
    "vendor/htmx.min.js": VENDOR_DIR / "htmx.org" / "dist" / "htmx.min.js",
    "vendor/chart.umd.min.js": VENDOR_DIR / "chart.js" / "dist" / "chart.umd.min.js",
}
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}

router = console_router()
for module in (
    dashboard,
    fleet,
    imports,
    updates,
    targeting,
    wizard,
    campaigns,
    campaign_ops,
    alerts,
    audit,
    admin,
):
    router.include_router(module.router)

_missing_reported: set[str] = set()


@router.get("/static/{name:path}")
def static_file(name: str) -> Response:
    path = STATIC_FILES.get(name)
    if path is None or not path.is_file():
        if path is not None and name not in _missing_reported:
            # Pages work without it (they are readable without JavaScript); say why it is gone.
            _missing_reported.add(name)
            log.warning("console asset %s is missing: run scripts/bootstrap (npm ci)", path)
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache"},  # revalidated (ETag), so an upgrade shows at once
    )


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _local(target: str) -> str:
    """Where to go after logging in: only a path of this console, never another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_page(
    request: Request,
    *,
    name: str = "",
    target: str = "/",
    error: str | None = None,
    status: int = 200,
) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        status_code=status,
        login_csrf=token,
        name=name,
        next=_local(target),
        error=error,
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
def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, target=next)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: ConsoleSession,
    name: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, csrf):
        return _login_page(
            request,
            name=name,
            target=next,
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
        return _login_page(
            request, name=name, target=next, error=exc.detail, status=exc.status_code
        )
    response = RedirectResponse(_local(next), status_code=303)
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


@router.post("/logout")
def logout(
    request: Request,
    session: ConsoleSession,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    try:
        principal = authenticate(request, session)
    except NotAuthenticated:
        return RedirectResponse("/login", status_code=303)
    if principal.csrf_token is None:
        return RedirectResponse("/login", status_code=303)
    if not secrets.compare_digest(principal.csrf_token, csrf):
        return Response("the form lacks this session's CSRF token", status_code=403)
    service.logout(session, principal.actor, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


__all__ = ["current_user", "router"]
