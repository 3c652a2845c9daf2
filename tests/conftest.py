"""Test fixtures: a real database per test, on SQLite and (when configured) PostgreSQL.

Set OTACM_TEST_POSTGRES_URL to an administrative PostgreSQL URL to run every database test on
both engines; `scripts/test` starts a throwaway cluster and sets it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

import otacm.models  # noqa: F401  (every table on the metadata)
from otacm.app import create_app
from otacm.config import Settings
from otacm.db import Base, make_engine, make_session_factory, unit_of_work, upgrade
from otacm.security import service
from otacm.security.audit import Actor
from otacm.security.models import User

TEST_ACTOR = Actor("test-setup", "admin", "local")

POSTGRES_ADMIN_URL = os.environ.get("OTACM_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_ADMIN_URL else ["sqlite"]


def pytest_report_header() -> str:
    return f"otacm database backends: {', '.join(BACKENDS)}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "otacm.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A freshly migrated PostgreSQL database for this test session, dropped at the end."""
    assert POSTGRES_ADMIN_URL
    name = f"otacm_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "otacm.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        maintenance_interval=timedelta(0),
        engine_interval=timedelta(0),
        notification_interval=timedelta(0),
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url())
    yield engine
    engine.dispose()


TEST_PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_operator(engine: Engine) -> Callable[..., str]:
    """Creates an operator with `role` and returns a fresh API token of theirs."""

    def make(role: str = "admin", name: str | None = None, **token: Any) -> str:
        with unit_of_work(make_session_factory(engine)) as session:
            user_name = name or f"{role}-{uuid.uuid4().hex[:6]}"
            if session.query(User).filter_by(name=user_name).first() is None:
                service.create_user(session, TEST_ACTOR, user_name, role, TEST_PASSWORD)
            expires = token.get("expires_in")
            return service.create_token(session, TEST_ACTOR, user_name, "test", expires).secret

    return make


@pytest.fixture
def anonymous_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A client without credentials."""
    with TestClient(create_app(settings, engine)) as client:
        yield client


@pytest.fixture
def client(anonymous_client: TestClient, make_operator: Callable[..., str]) -> Iterator[TestClient]:
    """A client acting as an admin through an API token."""
    anonymous_client.headers["Authorization"] = f"Bearer {make_operator('admin', 'test-admin')}"
    yield anonymous_client
