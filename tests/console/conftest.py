"""Fixtures of the console tests: operators logged in to the console by role, a small fleet
with released updates, cheap password hashing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from httpx import Response
from playwright.sync_api import Browser
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work
from otacm.security import service
from otacm.security.audit import Actor
from tests.conftest import TEST_PASSWORD
from tests.console.browser import launched_browser
from tests.live_server import live_server  # noqa: F401  (fixture)
from tests.security.helpers import console_login

SETUP = Actor("test-setup", "admin", "local")


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Password hashing is tested in tests/security; here it only needs to be quick.
    monkeypatch.setattr(
        service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for every browser test (Playwright's sync API runs one at a time). Closed
    when the console's tests end: while Playwright's sync API is alive it holds the main
    thread's event loop, and later tests that run their own (`asyncio.run`) would fail."""
    yield from launched_browser()


@dataclass
class Operator:
    """A console session: the client (its cookie jar) and the session's CSRF token."""

    client: TestClient
    name: str
    csrf: str

    def post(self, url: str, data: dict[str, str] | None = None) -> Response:
        """A form post from this session's pages (its CSRF token included)."""
        return self.client.post(
            url, data={"csrf": self.csrf, **(data or {})}, follow_redirects=False
        )


def add_user(engine: Engine, name: str, role: str) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        service.create_user(session, SETUP, name, role, TEST_PASSWORD)


@pytest.fixture
def login(settings: Settings, engine: Engine) -> Iterator[Callable[..., Operator]]:
    """`login(role, name)`: a new operator with that role, logged in to the console."""
    clients: list[TestClient] = []

    def make(role: str, name: str | None = None, **changes: object) -> Operator:
        name = name or f"{role}-{len(clients)}"
        add_user(engine, name, role)
        client = TestClient(create_app(settings.model_copy(update=changes), engine))
        client.__enter__()
        clients.append(client)
        return Operator(client, name, console_login(client, name, TEST_PASSWORD))

    yield make
    for client in clients:
        client.__exit__(None, None, None)
