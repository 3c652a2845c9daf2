"""The idle-poll index (`otacm/vehicle_api/idle.py`): idle polls answered from memory, and what
a refresh brings in — an opened wave, a retry, a revoked or a new credential — on both engines.

The app under test refreshes its index only when a test says so (`Served.refresh`): what a
test sees between two refreshes is exactly what `otacm serve` may answer within one
OTACM_VEHICLE_INDEX_REFRESH, and nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update

from otacm.app import create_app
from otacm.campaigns.engine import tick
from otacm.campaigns.models import Deployment
from otacm.db import (
    make_engine,
    make_session_factory,
    make_write_session_factory,
    unit_of_work,
    utcnow,
)
from otacm.fleet.models import Vehicle
from otacm.security.audit import SYSTEM
from otacm.vehicle_api import credentials, idle
from otacm.vehicle_api.auth import FastIdentifier
from otacm.vehicle_api.idle import IdleIndex
from otacm.vehicle_api.models import VehicleCredential, VehicleSecurityEvent
from tests.vehicle_api.conftest import Ota

UPDATES = "/vehicle/v1/updates"


@dataclass
class Served:
    """The app with its own engine and an index refreshed by hand; counts every statement
    its engine runs and every call of the database path."""

    client: TestClient
    identifier: FastIdentifier
    statements: list[str] = field(default_factory=list)
    lookups: int = 0

    @property
    def index(self) -> IdleIndex:
        return self.identifier.index

    def refresh(self, *, full: bool = False) -> None:
        assert self.client.portal is not None
        self.client.portal.call(lambda: self.index.refresh(full=full))

    def poll(self, token: str) -> Any:
        return self.client.get(UPDATES, headers={"Authorization": f"Bearer {token}"})

    def quiet(self) -> None:
        """Forget what was counted so far."""
        self.statements.clear()
        self.lookups = 0

    @property
    def queried(self) -> bool:
        return bool(self.statements) or self.lookups > 0


@pytest.fixture
def served(ota: Ota, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    # Only `refresh(full=True)` rebuilds: each other refresh is the one-interval delta.
    monkeypatch.setattr(idle, "WORK_REBUILD_EVERY", float("inf"))
    monkeypatch.setattr(idle, "CREDENTIALS_RELOAD_EVERY", float("inf"))
    settings = ota.settings.model_copy(update={"vehicle_index_refresh": timedelta(hours=1)})
    engine = make_engine(settings.resolved_database_url())
    with TestClient(create_app(settings, engine)) as client:
        identifier: FastIdentifier = client.app.state.vehicle_identifier  # type: ignore[attr-defined]
        assert client.portal is not None
        # The load at start; then the task sleeps for an hour.
        client.portal.call(asyncio.wait_for, identifier.index.ready(), 120)
        served = Served(client, identifier)
        event.listen(
            engine, "before_cursor_execute", lambda *a: served.statements.append(str(a[2]))
        )
        identify, identify_sync = identifier.identify, identifier.identify_sync

        async def counted(request: Any) -> Any:
            served.lookups += 1
            return await identify(request)

        def counted_sync(request: Any) -> Any:
            served.lookups += 1
            return identify_sync(request)

        monkeypatch.setattr(identifier, "identify", counted)
        monkeypatch.setattr(identifier, "identify_sync", counted_sync)
        yield served
    engine.dispose()


def token(ota: Ota, vin: str) -> str:
    return str(ota.records[vin]["token"])


def open_waves(ota: Ota) -> None:
    tick(make_write_session_factory(ota.engine), utcnow())


def vehicle_id(ota: Ota, vin: str) -> int:
    with unit_of_work(make_session_factory(ota.engine)) as session:
        found = session.scalar(select(Vehicle.id).where(Vehicle.vin == vin))
    assert found is not None
    return found


def event_of(name: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event": name, "attempt": 1, **fields}


def test_tokens_name_their_vehicle_and_earlier_tokens_name_none() -> None:
    fresh = credentials.new_token(4711)
    assert fresh.startswith("otv_4711_") and len(fresh) == len("otv_4711_") + 43
    assert credentials.token_vehicle_id(fresh) == 4711
    earlier = "otv_" + "_" * 43  # the earlier format: its secret may hold underscores
    assert credentials.token_vehicle_id(earlier) is None
    assert credentials.token_vehicle_id("otv_" + secrets.token_urlsafe(32)) is None
    for junk in ("", "otv_", "otv_12_short", "otacm_1_" + "a" * 43, "otv_-1_" + "a" * 43,
                 "otv_" + "9" * 5000 + "_" + "a" * 43, "otv_١٢_" + "a" * 43):  # fmt: skip
        assert credentials.token_vehicle_id(junk) is None, junk


def test_idle_polls_are_answered_from_memory_without_a_query(ota: Ota, served: Served) -> None:
    served.quiet()
    answers = [served.poll(token(ota, vin)) for vin in ota.vins for _ in range(2)]
    assert {a.status_code for a in answers} == {204}
    assert all("Poll-After" in a.headers for a in answers)
    assert served.statements == [] and served.lookups == 0
    # The same vehicle with an earlier-format credential: the database answers.
    vin = ota.vins[0]
    earlier = "otv_" + secrets.token_urlsafe(32)
    with unit_of_work(make_session_factory(ota.engine)) as session:
        session.add(
            VehicleCredential(
                vehicle_id=vehicle_id(ota, vin), token_hash=credentials.hash_token(earlier),
                issued_at=utcnow(), issued_by="test",
            )
        )  # fmt: skip
    served.quiet()
    assert served.poll(earlier).status_code == 204
    assert served.lookups == 1
    # A wrong secret under a known vehicle id is not a match: the database refuses it.
    wrong = f"otv_{vehicle_id(ota, vin)}_{secrets.token_urlsafe(32)}"
    assert served.poll(wrong).status_code == 401


def test_an_index_that_stopped_refreshing_answers_nothing(ota: Ota, served: Served) -> None:
    served.index.fresh_until = 0.0  # as when refreshes fail: the last one is too old
    served.quiet()
    assert served.poll(token(ota, ota.vins[0])).status_code == 204
    assert served.lookups == 1
    served.refresh()
    served.quiet()
    assert served.poll(token(ota, ota.vins[0])).status_code == 204
    assert not served.queried


def test_an_opened_wave_is_offered_at_the_first_poll_after_a_refresh(
    ota: Ota, served: Served
) -> None:
    vin = ota.vins[0]
    # Launched an hour ago, opened now (a later wave opens days after the launch): only the
    # opening tells the refresh, not the deployments' times.
    with unit_of_work(make_session_factory(ota.engine)) as session:
        session.execute(
            update(Deployment)
            .where(Deployment.campaign_id == ota.campaign_id)
            .values(state_entered_at=utcnow() - timedelta(hours=1))
        )
    open_waves(ota)
    # Until the next refresh the index still knows the vehicle as idle: the window the docs
    # promise (about one OTACM_VEHICLE_INDEX_REFRESH).
    served.quiet()
    assert served.poll(token(ota, vin)).status_code == 204
    assert not served.queried
    served.refresh()
    answer = served.poll(token(ota, vin))
    assert answer.status_code == 200, answer.text
    (offer,) = answer.json()["offers"]
    assert offer["campaign"]["id"] == ota.campaign_id


def test_a_revoked_credential_is_refused_after_one_refresh_by_every_process(
    ota: Ota, served: Served
) -> None:
    vin = ota.vins[1]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        assert credentials.revoke(session, SYSTEM, vin, utcnow()) == 1
    # Two server processes on one database: each refreshes its own index.
    other = ota.app_client
    for client, index in (
        (served.client, served.index),
        (other, other.app.state.vehicle_identifier.index),  # type: ignore[attr-defined]
    ):
        assert client.portal is not None
        client.portal.call(index.refresh)
        answer = client.get(UPDATES, headers={"Authorization": f"Bearer {token(ota, vin)}"})
        assert answer.status_code == 401
        assert answer.json()["error"] == "vehicle_unauthorized"
    with unit_of_work(make_session_factory(ota.engine)) as session:
        kinds = list(
            session.scalars(
                select(VehicleSecurityEvent.kind).where(
                    VehicleSecurityEvent.vehicle_id == vehicle_id(ota, vin)
                )
            )
        )
    assert kinds == ["revoked_credential", "revoked_credential"]


def test_a_new_credential_works_at_once_and_from_memory_after_a_refresh(
    ota: Ota, served: Served
) -> None:
    vin = ota.vins[2]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        fresh = credentials.provision_vin(session, SYSTEM, vin, utcnow()).token
    served.quiet()
    assert served.poll(fresh).status_code == 204
    assert served.lookups == 1, "not in the index yet: the database knows it"
    served.refresh()
    served.quiet()
    assert served.poll(fresh).status_code == 204
    assert not served.queried
    assert served.poll(token(ota, vin)).status_code == 401, "the one it replaced is revoked"


def test_a_retry_that_makes_a_failure_pending_again_is_seen(ota: Ota, served: Served) -> None:
    vin = ota.vins[3]
    open_waves(ota)
    served.refresh()
    answer = served.poll(token(ota, vin))
    assert answer.status_code == 200, answer.text
    (offer,) = answer.json()["offers"]
    failed = served.client.post(
        f"/vehicle/v1/deployments/{offer['deployment_id']}/events",
        headers={"Authorization": f"Bearer {token(ota, vin)}"},
        json={"events": [event_of("accepted"), event_of("download_started"),
                         event_of("failed", code="download_failed")]},
    )  # fmt: skip
    assert failed.status_code == 200 and failed.json()["state"] == "failed", failed.text
    # The rebuild drops the vehicle's flag: its one deployment is finished.
    served.refresh(full=True)
    served.quiet()
    assert served.poll(token(ota, vin)).status_code == 204
    assert not served.queried
    # The engine retries once the backoff (5 min by default) is over: pending again.
    factory = make_write_session_factory(ota.engine)
    tick(factory, utcnow())  # plans the retry
    report = tick(factory, utcnow() + timedelta(minutes=10))
    assert report.retried == 1 and report.paused == []
    with unit_of_work(make_session_factory(ota.engine)) as session:
        deployment = session.get(Deployment, offer["deployment_id"])
        assert deployment is not None and deployment.state == "pending"
    served.refresh()
    again = served.poll(token(ota, vin))
    assert again.status_code == 200, again.text
    (retried,) = again.json()["offers"]
    assert retried["deployment_id"] == offer["deployment_id"] and retried["attempt"] == 2


def test_a_vehicle_that_joins_an_open_wave_is_seen(ota: Ota, served: Served) -> None:
    """A deployment written pending into a wave already open, as a dynamic campaign's join
    writes its newcomers: no wave opens, only its state_entered_at tells the refresh."""
    vin = ota.vins[4]
    open_waves(ota)
    with unit_of_work(make_session_factory(ota.engine)) as session:
        launched = session.scalar(
            select(Deployment).where(
                Deployment.vehicle_id == vehicle_id(ota, vin),
                Deployment.campaign_id == ota.campaign_id,
            )
        )
        assert launched is not None
        wave = launched.wave
        session.delete(launched)  # as if it had not been eligible at launch
    served.refresh(full=True)
    served.quiet()
    assert served.poll(token(ota, vin)).status_code == 204
    assert not served.queried
    now = utcnow()
    with unit_of_work(make_session_factory(ota.engine)) as session:
        session.add(
            Deployment(
                campaign_id=ota.campaign_id, vehicle_id=vehicle_id(ota, vin), wave=wave,
                state="pending", attempts=0, state_entered_at=now, created_at=now,
                updated_at=now,
            )
        )  # fmt: skip
    served.refresh()
    answer = served.poll(token(ota, vin))
    assert answer.status_code == 200, answer.text


def test_too_many_changes_for_one_look_are_reloaded_in_full_and_never_skipped(
    ota: Ota, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idle, "DELTA_CAP", 1)
    revoked, kept = ota.vins[:2], ota.vins[2]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        for vin in revoked:
            credentials.revoke(session, SYSTEM, vin, utcnow())
    # Two changes, more than the cap, and a full reload is not due yet: memory stops answering
    # rather than answer from what it knows to be behind.
    served.refresh()
    served.quiet()
    assert [served.poll(token(ota, vin)).status_code for vin in revoked] == [401, 401]
    assert served.poll(token(ota, kept)).status_code == 204
    assert served.lookups == 3
    # Once due, the reload brings everything in.
    monkeypatch.setattr(idle, "RELOAD_GAP", 0.0)
    served.refresh()
    served.quiet()
    assert served.poll(token(ota, kept)).status_code == 204
    assert not served.queried
    assert [served.poll(token(ota, vin)).status_code for vin in revoked] == [401, 401]
