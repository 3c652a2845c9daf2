"""A small fleet over the air: keys, a released confidential update with a real file, vehicles
provisioned with credentials and keys, and a launched campaign offering it."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work, utcnow
from otacm.security.audit import SYSTEM
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.vehicle_api import credentials
from tests.campaigns.conftest import as_role  # noqa: F401  (fixture)
from tests.targeting.test_preview import add_ecu, add_vehicle

FIRMWARE = secrets.token_bytes(300_000)
VEHICLES = 6

NOTICE = {
    "en": {
        "purpose": "Fixes the interior light.",
        "what_changes": "The light switches off after the doors lock.",
        "expected_duration_minutes": 12,
        "functions_unavailable": ["driving"],
        "instructions": "Park the vehicle and switch the ignition off.",
    },
    "de": {
        "purpose": "Behebt das Innenlicht.",
        "what_changes": "Das Licht geht nach dem Verriegeln aus.",
        "expected_duration_minutes": 12,
        "functions_unavailable": ["Fahren"],
        "instructions": "Fahrzeug abstellen und Zündung aus.",
    },
}


@dataclass
class Ota:
    settings: Settings
    engine: Engine
    app_client: TestClient
    records: dict[str, dict[str, Any]]  # VIN → provisioning record
    update_id: int
    campaign_id: int
    manager: TestClient

    def vehicle(self, vin: str) -> TestClient:
        """A client acting as the vehicle `vin`."""
        client = TestClient(self.app_client.app)
        client.headers["Authorization"] = f"Bearer {self.records[vin]['token']}"
        return client

    @property
    def vins(self) -> list[str]:
        return sorted(self.records)


def release_update(engineer: TestClient, **changes: Any) -> int:
    from otacm.updates.samples import sample_update

    body = sample_update(
        compatible_models=["Nordra"], fuel_types=["electric"], hardware_part_numbers=["HW-A"],
        dependencies=[], confidential=True, applicable_version_min="4.0.0", **changes,
    )  # fmt: skip
    created = engineer.post("/api/v1/updates", json=body)
    assert created.status_code == 201, created.text
    update_id = int(created.json()["id"])
    uploaded = engineer.post(
        f"/api/v1/updates/{update_id}/artifacts",
        params={"filename": "bcm.bin", "sha256": hashlib.sha256(FIRMWARE).hexdigest()},
        content=FIRMWARE,
    )
    assert uploaded.status_code == 201, uploaded.text
    released = engineer.post(f"/api/v1/updates/{update_id}/release")
    assert released.status_code == 200, released.text
    return update_id


def launch(
    as_role: Callable[..., TestClient],  # noqa: F811
    update_id: int,
    expected: int,
    **changes: Any,
) -> int:
    alice = as_role("campaign_manager", "alice")
    bob = as_role("campaign_manager", "bob")
    body: dict[str, Any] = {
        "name": f"BCM light fix {update_id}",
        "category": "bug_fix",
        "urgency": "immediate",
        "priority": 500,
        "update_ids": [update_id],
        "selection": {"query": "region==EU"},
        "user_notice": NOTICE,
        "rollout": {"waves": {"steps": [{"percent": 100}]}},
        **changes,
    }
    created = alice.post("/api/v1/campaigns", json=body)
    assert created.status_code == 201, created.text
    cid = int(created.json()["id"])
    assert alice.post(f"/api/v1/campaigns/{cid}/submit").status_code == 200
    assert bob.post(f"/api/v1/campaigns/{cid}/approve", json={}).status_code == 200
    launched = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": expected})
    assert launched.status_code == 200, launched.text
    return cid


@pytest.fixture
def ota(
    settings: Settings,
    engine: Engine,
    as_role: Callable[..., TestClient],  # noqa: F811
) -> Iterator[Ota]:
    initialise_keys_and_repository(settings, None, engine=engine)
    with unit_of_work(make_session_factory(engine)) as session:
        vehicles = []
        for n in range(VEHICLES):
            vehicle = add_vehicle(session, n)
            add_ecu(session, vehicle, "BCM", software_version="4.1.0")
            vehicles.append(vehicle)
        session.flush()
        records = {
            r.vin: r.as_json()
            for r in credentials.provision(session, SYSTEM, vehicles, utcnow(), keys=True)
        }
    update_id = release_update(as_role("engineer"))
    campaign_id = launch(as_role, update_id, VEHICLES)
    with TestClient(create_app(settings, engine)) as app_client:
        yield Ota(
            settings, engine, app_client, records, update_id, campaign_id,
            as_role("campaign_manager", "alice"),
        )  # fmt: skip
