"""Helpers shared by the security tests: the CLI, raw database reads, console logins."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings
from otacm.db import Base, make_session_factory, unit_of_work
from otacm.security.models import ApiToken, AuditEntry, User
from otacm.security.service import digest

runner = CliRunner()
# Wide enough that rich tables never wrap a cell.
CLI_ENV = {"COLUMNS": "250"}
CSRF_INPUT = re.compile(r'name="csrf" value="([^"]+)"')


def otacm(settings: Settings, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run `otacm ARGS --database-url ...`; (exit code, stdout, stdout and stderr)."""
    result = runner.invoke(
        app,
        [*args, "--database-url", settings.resolved_database_url()],
        input=stdin,
        env=CLI_ENV,
    )
    return result.exit_code, result.stdout, result.output


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def audit_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every audit entry, oldest first, as plain dicts straight from the table."""
    table = AuditEntry.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.id))
        return [dict(r._mapping) for r in rows]


def database_text(engine: Engine) -> str:
    """Every row of every table, serialised: what someone with a database dump would see."""
    dump: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            dump[table.name] = [dict(r._mapping) for r in conn.execute(select(table))]
    return json.dumps(dump, default=str)


def token_row(engine: Engine, secret: str) -> ApiToken:
    with unit_of_work(make_session_factory(engine)) as session:
        token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(secret)))
        assert token is not None
        return token


def user_row(engine: Engine, name: str) -> User:
    with unit_of_work(make_session_factory(engine)) as session:
        user = session.scalar(select(User).where(User.name == name))
        assert user is not None
        return user


def login_form(client: TestClient) -> str:
    """GET /login; the form's CSRF token (its cookie is now in the client's jar)."""
    page = client.get("/login")
    assert page.status_code == 200, page.text
    found = CSRF_INPUT.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def post_login(client: TestClient, name: str, password: str, csrf: str | None) -> Response:
    form = {"name": name, "password": password}
    if csrf is not None:
        form["csrf"] = csrf
    return client.post("/login", data=form, follow_redirects=False)


def console_login(client: TestClient, name: str, password: str) -> str:
    """Log `client` in to the console; the session's CSRF token (from the home page)."""
    response = post_login(client, name, password, login_form(client))
    assert response.status_code == 303, response.text
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 200, home.text
    found = CSRF_INPUT.search(home.text)
    assert found is not None, home.text
    return found.group(1)


def set_cookie_headers(response: Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of a rich table the CLI printed, keyed by column heading."""
    lines = stdout.splitlines()
    headings = [
        c.strip() for c in next(x for x in lines if x.startswith("┃")).strip("┃").split("┃")
    ]
    return [
        dict(zip(headings, [c.strip() for c in line.strip("│").split("│")], strict=True))
        for line in lines
        if line.startswith("│")
    ]
