"""Fixtures of the campaign tests: released updates, a small fleet, operators by role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work
from tests.targeting.test_preview import add_update


@pytest.fixture
def released(engine: Engine) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 1)
        add_update(session, 2, ecu_type="GATEWAY", state="draft")


@pytest.fixture
def as_role(
    settings: Settings, engine: Engine, make_operator: Callable[..., str]
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(role: str, name: str | None = None, **changes: Any) -> TestClient:
        app = create_app(settings.model_copy(update=changes), engine)
        client = TestClient(app)
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {make_operator(role, name)}"
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def fleet(engine: Engine, released: None) -> list[str]:
    from tests.targeting.test_preview import add_ecu, add_vehicle

    vins = []
    with unit_of_work(make_session_factory(engine)) as session:
        for n in range(40):
            vehicle = add_vehicle(session, n, region="EU" if n < 37 else "NA")
            add_ecu(session, vehicle, "BCM", software_version="4.0.0")
            vins.append(vehicle.vin)
    return vins
