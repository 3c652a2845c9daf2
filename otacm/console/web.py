"""What every console page shares: who is asking, what they may do, CSRF, rendering, errors.

- `UserDep` is the logged-in operator (a console session cookie, never an API token); without
  one a page redirects to the login form.
- `can_view(permission)` and `can_do(permission)` are the dependencies of pages and of form
  posts: both check the role table (`security/permissions.py`) and audit a refusal exactly as
  the API's `require` does; `can_do` first checks the session's CSRF token, sent as the form's
  `csrf` field or the `X-CSRF-Token` header.
- Routes use `ConsoleRoute`: an error escaping a handler rolls back the request's console
  sessions and answers an HTML page (the API's handlers answer JSON).
- `render` fills in the layout: the user, the navigation for the role, the CSRF token.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from otacm.console import charts
from otacm.db import unit_of_work
from otacm.errors import OtacmError
from otacm.security.auth import (
    CSRF_HEADER,
    Forbidden,
    NotAuthenticated,
    Principal,
    audit_refusal,
    authenticate,
    refuse,
)
from otacm.security.permissions import Permission, allows

log = logging.getLogger("otacm.console")

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

# Messages a redirect after a successful post may ask the next page to show (`?done=KEY`):
# a fixed list, so that a link cannot make the console display text of someone's choosing.
NOTICES = {
    "imported": "The import finished; its report is below.",
    "created": "Saved.",
    "saved": "Saved.",
    "uploaded": "The file was uploaded.",
    "file_deleted": "The file was removed from the draft.",
    "released": "The update was released and signed into the image repository.",
    "withdrawn": "The update was withdrawn.",
    "submitted": "The campaign was submitted for approval.",
    "approved": "The campaign was approved.",
    "rejected": "The campaign was sent back to its author.",
    "launched": "The campaign was launched.",
    "paused": "The campaign is paused.",
    "resumed": "The campaign runs again.",
    "next_wave": "The next wave is open.",
    "cancelled": "The campaign was cancelled.",
    "child": "A child campaign was drafted; review and submit it.",
    "acknowledged": "The alert was acknowledged.",
    "status": "The vehicle's status changed.",
    "user_created": "The user was created.",
    "user_changed": "The user was changed.",
    "password": "The password was set.",
    "unlocked": "The account was unlocked.",
    "revoked": "The token was revoked.",
}


class LoginRequired(Exception):
    """No console session: the page answers with a redirect to the login form."""


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str
    permission: Permission


NAVIGATION = (
    NavItem("dashboard", "Dashboard", "/", Permission.FLEET_READ),
    NavItem("fleet", "Fleet", "/fleet", Permission.FLEET_READ),
    NavItem("imports", "Imports", "/fleet/imports", Permission.FLEET_READ),
    NavItem("updates", "Updates", "/updates", Permission.UPDATES_READ),
    NavItem("targeting", "Targeting", "/targeting", Permission.TARGETING_PREVIEW),
    NavItem("campaigns", "Campaigns", "/campaigns", Permission.CAMPAIGNS_READ),
    NavItem("alerts", "Alerts", "/alerts", Permission.ALERTS_READ),
    NavItem("audit", "Audit log", "/audit", Permission.AUDIT_READ),
    NavItem("users", "Users", "/admin/users", Permission.USERS_MANAGE),
    NavItem("tokens", "API tokens", "/tokens", Permission.TOKENS_OWN),
)


def _rollback_console_sessions(request: Request) -> None:
    for session in getattr(request.state, "console_sessions", []):
        session.rollback()


class ConsoleRoute(APIRoute):
    """Turns what escapes a console handler into an HTML answer.

    The handler's exception does not pass through its session dependency here (the
    dependency sees a normal return and commits), so the sessions are rolled back first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                _rollback_console_sessions(request)
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                if request.method != "GET" or target == "/":
                    return RedirectResponse("/login", status_code=303)
                return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
            except OtacmError as exc:
                _rollback_console_sessions(request)
                return await run_in_threadpool(error_page, request, exc.status_code, exc.detail)
            except RequestValidationError as exc:
                _rollback_console_sessions(request)
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return await run_in_threadpool(
                    error_page, request, 422, f"the request is not valid: {problems}"
                )

        return console_handler


def console_router() -> APIRouter:
    return APIRouter(include_in_schema=False, route_class=ConsoleRoute)


def _session(factory_name: str) -> Callable[[Request], Iterator[Session]]:
    def dependency(request: Request) -> Iterator[Session]:
        with unit_of_work(getattr(request.app.state, factory_name)) as session:
            if not hasattr(request.state, "console_sessions"):
                request.state.console_sessions = []
            request.state.console_sessions.append(session)
            yield session

    return dependency


# Like deps.SessionDep / WriteSessionDep (committed before the answer is sent), but known to
# ConsoleRoute, which rolls them back when an error escapes the handler.
ConsoleSession = Annotated[Session, Depends(_session("session_factory"), scope="function")]
ConsoleWriteSession = Annotated[
    Session, Depends(_session("write_session_factory"), scope="function")
]


def current_user(request: Request) -> Principal:
    """The operator of the console session; `LoginRequired` without one."""
    try:
        with unit_of_work(request.app.state.session_factory) as session:
            principal = authenticate(request, session)
    except NotAuthenticated:
        raise LoginRequired() from None
    if principal.csrf_token is None:  # an API token is no console session
        raise LoginRequired()
    request.state.principal = principal
    return principal


UserDep = Annotated[Principal, Depends(current_user)]


def can_view(permission: Permission) -> Callable[..., Principal]:
    """The dependency of a page that needs `permission`."""

    def dependency(request: Request, principal: UserDep) -> Principal:
        if not allows(principal.role, permission):
            raise refuse(request, principal, permission)
        return principal

    return dependency


async def _sent_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get("csrf")
        return value if isinstance(value, str) else None
    return None


def can_do(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """The dependency of a form post that needs `permission`: the CSRF token first (a post
    from another site is refused whoever's cookie it carries), then the role."""

    async def dependency(request: Request, principal: UserDep) -> Principal:
        sent = await _sent_csrf(request)
        assert principal.csrf_token is not None
        if not sent or not secrets.compare_digest(sent, principal.csrf_token):
            await run_in_threadpool(audit_refusal, request, principal.actor, "no CSRF token")
            raise Forbidden(
                "the form did not come from this console session (its CSRF token is missing "
                "or wrong); reload the page and try again",
                field="csrf",
            )
        if not allows(principal.role, permission):
            raise await run_in_threadpool(refuse, request, principal, permission)
        return principal

    return dependency


def _nav(principal: Principal | None) -> list[NavItem]:
    if principal is None:
        return []
    return [item for item in NAVIGATION if allows(principal.role, item.permission)]


def _active(request: Request) -> str:
    path = request.url.path
    best = ""
    for item in NAVIGATION:
        prefix = item.href
        if (path == prefix or path.startswith(prefix.rstrip("/") + "/")) and len(prefix) > len(
            best
        ):
            best = prefix
    return next((i.key for i in NAVIGATION if i.href == best), "")


def render(
    request: Request,
    template: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)

    def can(permission: Permission | str) -> bool:
        return principal is not None and allows(principal.role, Permission(permission))

    done = request.query_params.get("done")
    values = {
        "user": principal,
        "csrf": principal.csrf_token if principal else None,
        "nav": _nav(principal),
        "active": _active(request),
        "can": can,
        "Permission": Permission,
        "notice": NOTICES.get(done) if done else None,
        **context,
    }
    response = templates.TemplateResponse(
        request, template, values, status_code=status_code, headers=headers
    )
    assert isinstance(response, HTMLResponse)
    return response


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    titles = {
        403: "Not allowed",
        404: "Not found",
        409: "Not possible now",
        422: "Not valid",
        503: "Not ready",
    }
    title = titles.get(status, "Something went wrong")
    return render(request, "error.html", status_code=status, title=title, detail=detail)


def see_other(url: str, done: str | None = None) -> RedirectResponse:
    """The answer to a successful post: the page to look at next (Post/Redirect/Get)."""
    if done:
        url += ("&" if "?" in url else "?") + urlencode({"done": done})
    return RedirectResponse(url, status_code=303)


# --- pages of results -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pager:
    """Links of a keyset-paginated list: the next page and the first (no "previous": a cursor
    only goes forward, which keeps every page one index range scan)."""

    next_url: str | None
    first_url: str | None


def pager(request: Request, next_cursor: str | None) -> Pager:
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "done")]
    base = request.url.path
    next_url = f"{base}?{urlencode([*params, ('cursor', next_cursor)])}" if next_cursor else None
    first_url = None
    if request.query_params.get("cursor"):
        first_url = f"{base}?{urlencode(params)}" if params else base
    return Pager(next_url=next_url, first_url=first_url)


def query_string(request: Request, drop: tuple[str, ...] = ("cursor", "done")) -> str:
    """The page's query, for links that must carry the same filters (downloads)."""
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in drop])


# --- template filters -----------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if isinstance(value, int) or value == int(value) else f"{value:,.1f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _label(value: str | None) -> str:
    """An enum value as words: `busy_in_other_campaign` → "busy in other campaign"."""
    return (value or "").replace("_", " ")


templates.env.filters["when"] = _when
templates.env.filters["number"] = _number
templates.env.filters["percent"] = _percent
templates.env.filters["label"] = _label
templates.env.globals["GROUP_COLOURS"] = charts.GROUP_COLOURS
