"""Offers, manifests, the deployment ledger, the report, child campaigns and dynamic joins,
driven by a fake clock on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from otacm.campaigns import ledger, offers
from otacm.campaigns.deployments import apply_event
from otacm.campaigns.engine import JOIN_EVERY
from otacm.campaigns.models import CampaignWave, Deployment
from otacm.campaigns.states import RANK, DeploymentEvent, DeploymentState, IllegalTransition
from otacm.db import make_session_factory, unit_of_work
from otacm.fleet.models import Ecu, Vehicle
from tests.campaigns.test_campaigns_api import (
    FAIL,
    ROLLOUT,
    SUCCEED,
    T0,
    drive,
    error,
    launched,
    tick,
)
from tests.targeting.test_preview import add_ecu, add_update, add_vehicle, vin


def _vehicle(session: Any, number: int) -> Vehicle:
    found = session.scalar(select(Vehicle).where(Vehicle.vin == vin(number)))
    assert found is not None
    return found


def offer(engine: Engine, number: int, now: Any = T0) -> list[tuple[int, str]]:
    """Vehicle `number` polls: its offers as (campaign id, state), highest priority first."""
    with unit_of_work(make_session_factory(engine)) as session:
        made = offers.offers_for(session, _vehicle(session, number), now)
        return [(o.campaign.id, o.deployment.state) for o in made]


def states_of(engine: Engine, campaign_id: int) -> dict[str, str]:
    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.execute(
            select(Vehicle.vin, Deployment.state)
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(Deployment.campaign_id == campaign_id)
        ).all()
    return {v: s for v, s in rows}


def assert_tallies_match(engine: Engine, campaign_id: int) -> None:
    """The ledger's counts are exactly what a scan of the deployments finds."""
    with unit_of_work(make_session_factory(engine)) as session:
        scanned = {
            (w, s, c): n
            for w, s, c, n in session.execute(
                select(Deployment.wave, Deployment.state, Deployment.failure_code, func.count())
                .where(Deployment.campaign_id == campaign_id)
                .group_by(Deployment.wave, Deployment.state, Deployment.failure_code)
            )
        }
        assert ledger.counts(session, campaign_id) == scanned


@pytest.fixture
def gateways(engine: Engine, fleet: list[str]) -> None:
    """Every vehicle also has a gateway, with a released update for it (update 3)."""
    with unit_of_work(make_session_factory(engine)) as session:
        for vehicle in session.scalars(select(Vehicle)):
            add_ecu(session, vehicle, "GATEWAY", software_version="3.0.0")
        add_update(session, 3, ecu_type="GATEWAY", version="3.1.0")


ONE_WAVE = {"waves": {"steps": [{"percent": 100}]}}


def _deployment(session: Any, campaign_id: int, number: int) -> Deployment:
    found = session.scalar(
        select(Deployment)
        .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
        .where(Deployment.campaign_id == campaign_id, Vehicle.vin == vin(number))
    )
    assert found is not None
    return found


def move(engine: Engine, campaign_id: int, number: int, *events: str, code: str = "") -> str:
    with unit_of_work(make_session_factory(engine)) as session:
        deployment = _deployment(session, campaign_id, number)
        for event in events:
            apply_event(session, deployment, DeploymentEvent(event), T0, code=code or None)
        return deployment.state


def test_offers_go_by_priority(
    gateways: None, as_role: Callable[..., TestClient], engine: Engine
) -> None:
    _, low = launched(as_role, name="Gateway fix", priority=100, update_ids=[3], rollout=ONE_WAVE)
    _, high = launched(as_role, name="BCM fix", priority=900, rollout=ONE_WAVE)
    assert offer(engine, 0) == []  # launched, but no wave is open before the engine's tick
    tick(engine, T0)
    # Different ECUs, so both at once: the higher priority first.
    assert offer(engine, 0) == [(high, "offered"), (low, "offered")]
    assert offer(engine, 0) == [(high, "offered"), (low, "offered")]  # polling again: the same


def test_one_deployment_per_ecu_is_in_flight(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    _, first = launched(
        as_role, expected=1, name="BCM fix one", priority=100,
        selection={"vins": [vin(0)]}, rollout=ONE_WAVE,
    )  # fmt: skip
    # Vehicle 0 is busy in `first`, so a launch leaves it out of `second`...
    _, second = launched(as_role, expected=36, name="BCM fix all", priority=900, rollout=ONE_WAVE)
    tick(engine, T0)
    assert offer(engine, 0) == [(first, "offered")]
    # ...but should a deployment for the same ECU arrive (a dynamic join racing a launch), it
    # waits while the ECU is held, whatever its priority.
    with unit_of_work(make_session_factory(engine)) as session:
        vehicle = _vehicle(session, 0)
        session.add(
            Deployment(
                campaign_id=second, vehicle_id=vehicle.id, wave=1, state="pending", attempts=0,
                state_entered_at=T0, created_at=T0, updated_at=T0,
            )
        )  # fmt: skip
        ledger.record_launch(session, second, {1: 1})
    assert offer(engine, 0) == [(first, "offered")]
    move(engine, first, 0, "failed", code="flash_error")
    assert offer(engine, 0) == [(second, "offered")]
    assert_tallies_match(engine, second)


def test_offers_are_made_inside_maintenance_windows_only(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    window = {"days": ["sun"], "start": "12:00", "duration": "PT2H", "timezone": "UTC"}
    _, cid = launched(as_role, rollout={**ONE_WAVE, "maintenance_windows": [window]})
    tick(engine, T0)  # Sunday 10:00 UTC: the window opens at 12:00
    assert offer(engine, 0, T0) == []
    assert offer(engine, 0, T0 + timedelta(hours=2, minutes=30)) == [(cid, "offered")]
    assert offer(engine, 1, T0 + timedelta(hours=4)) == []  # closed again at 14:00


def test_a_postponed_offer_is_made_again_later(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    _, cid = launched(as_role, rollout=ONE_WAVE)
    tick(engine, T0)
    offer(engine, 0)
    assert move(engine, cid, 0, "postponed") == "postponed"
    assert offer(engine, 0, T0 + timedelta(minutes=10)) == [(cid, "postponed")]
    assert offer(engine, 0, T0 + offers.REOFFER_AFTER) == [(cid, "offered")]


def test_the_manifest_confirms_and_the_report_records_versions_before_and_after(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ONE_WAVE)
    tick(engine, T0)
    for number in (0, 1):
        offer(engine, number)
        move(engine, cid, number, "accepted", "download_finished", "install_finished")
    move(engine, cid, 1, "failed", code="flash_error")
    with unit_of_work(make_session_factory(engine)) as session:
        serial = session.scalar(select(Ecu.serial).where(Ecu.vehicle_id == _vehicle(session, 0).id))
        assert serial is not None
        # A manifest still on the old version confirms nothing.
        assert (
            offers.confirm_manifest(session, _vehicle(session, 0).id, {serial: "4.0.0"}, T0) == []
        )
        confirmed = offers.confirm_manifest(
            session, _vehicle(session, 0).id, {serial: "4.01.0"}, T0 + timedelta(minutes=20)
        )
        assert [d.state for d in confirmed] == ["succeeded"]
    detail = alice.get(f"/api/v1/campaigns/{cid}/deployments/{confirmed[0].id}").json()
    assert detail["versions"] == {serial: {"ecu_type": "BCM", "before": "4.0.0", "after": "4.01.0"}}
    assert [(e["event"], e["to_state"], e["source"]) for e in detail["events"]] == [
        ("offer", "offered", "engine"),
        ("accepted", "accepted", "vehicle"),
        ("download_finished", "downloaded", "vehicle"),
        ("install_finished", "installed", "vehicle"),
        ("manifest_confirmed", "succeeded", "vehicle"),
    ]
    assert alice.get(f"/api/v1/campaigns/{cid}/deployments/999999").status_code == 404

    response = alice.get(f"/api/v1/campaigns/{cid}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = {r["vin"]: r for r in csv.DictReader(io.StringIO(response.text))}
    assert len(rows) == 37
    done, failed, untouched = rows[vin(0)], rows[vin(1)], rows[vin(2)]
    assert (done["version_before"], done["version_after"], done["result"]) == (
        "4.0.0", "4.01.0", "installed"
    )  # fmt: skip
    assert done["target_version"] == "4.1.0" and done["offered_at"].startswith("2031-05-04T10")
    assert (failed["state"], failed["failure_code"], failed["version_after"]) == (
        "failed", "flash_error", "4.0.0"
    )  # fmt: skip
    assert failed["result"] == "not_installed" and failed["finished_at"]
    assert (untouched["state"], untouched["offered_at"], untouched["result"]) == (
        "pending", "", "in_progress"
    )  # fmt: skip
    lines = alice.get(f"/api/v1/campaigns/{cid}/report", params={"format": "jsonl"}).text
    records = [json.loads(line) for line in lines.splitlines()]
    assert len(records) == 37 and {r["vin"]: r for r in records}[vin(0)]["attempts"] == 0
    assert alice.get(f"/api/v1/campaigns/{cid}/report", params={"format": "xml"}).status_code == 422

    body = alice.get(f"/api/v1/campaigns/{cid}").json()
    assert body["states"]["succeeded"] == 1 and body["failure_codes"] == {"flash_error": 1}
    assert body["progress"]["finished"] == 2 and body["progress"]["success_rate"] == 0.5
    assert_tallies_match(engine, cid)


def test_a_deployment_that_no_longer_applies_is_cancelled_not_offered(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ONE_WAVE)
    tick(engine, T0)
    with unit_of_work(make_session_factory(engine)) as session:
        for ecu in session.scalars(select(Ecu).where(Ecu.vehicle_id == _vehicle(session, 3).id)):
            ecu.software_version = "4.1.0"  # updated in the workshop meanwhile
    assert offer(engine, 3) == []
    assert states_of(engine, cid)[vin(3)] == "cancelled"
    with unit_of_work(make_session_factory(engine)) as session:
        deployment_id = _deployment(session, cid, 3).id
    events = alice.get(f"/api/v1/campaigns/{cid}/deployments/{deployment_id}").json()["events"]
    assert "already_up_to_date" in events[-1]["detail"]


def test_retry_failed_drafts_a_child_campaign_for_the_failed_vehicles(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ONE_WAVE)
    bob = as_role("campaign_manager", "bob2")
    tick(engine, T0)
    drive(engine, cid, 1, FAIL, count=3)  # flash_error: not retried automatically
    error(
        alice.post(f"/api/v1/campaigns/{cid}/retry-failed", json={"failure_code": "no_power"}),
        409, "no_vehicles", "failure_code",
    )  # fmt: skip
    response = alice.post(f"/api/v1/campaigns/{cid}/retry-failed", json={})
    assert response.status_code == 201, response.text
    child = response.json()
    failed = sorted(v for v, s in states_of(engine, cid).items() if s == "failed")
    assert (child["kind"], child["parent_id"], child["state"]) == ("retry", cid, "draft")
    assert child["selection"]["vins"] == failed and child["update_ids"] == [1]
    assert child["name"] == "BCM light fix EU (retry 1)"
    # It goes through the four eyes like any campaign, then reaches exactly those vehicles.
    alice.post(f"/api/v1/campaigns/{child['id']}/submit")
    assert bob.post(f"/api/v1/campaigns/{child['id']}/approve", json={}).status_code == 200
    launch = alice.post(f"/api/v1/campaigns/{child['id']}/launch", json={"expected_vehicles": 3})
    assert launch.status_code == 200, launch.text
    assert sorted(states_of(engine, child["id"])) == failed


def test_rollback_needs_the_old_version_released_again(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ONE_WAVE)
    tick(engine, T0)
    drive(engine, cid, 1, SUCCEED, count=2)
    error(alice.post(f"/api/v1/campaigns/{cid}/rollback", json={}), 409,
          "rollback_target_missing", "rollback_version")  # fmt: skip
    from otacm.updates.models import SoftwareUpdate

    with unit_of_work(make_session_factory(engine)) as session:
        update = session.get(SoftwareUpdate, 1)
        assert update is not None
        update.rollback_version = "4.0.0"
        add_update(session, 4, version="4.0.0", release_counter=0)  # an older release
    response = alice.post(f"/api/v1/campaigns/{cid}/rollback", json={})
    error(response, 409, "rollback_target_missing", "rollback_version")
    assert "release 4.0.0 again" in response.json()["detail"]
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 5, version="4.0.0", release_counter=7, applicable_versions=["4.1.0"])
    response = alice.post(f"/api/v1/campaigns/{cid}/rollback", json={})
    assert response.status_code == 201, response.text
    child = response.json()
    succeeded = sorted(v for v, s in states_of(engine, cid).items() if s == "succeeded")
    assert (child["kind"], child["parent_id"], child["update_ids"]) == ("rollback", cid, [5])
    assert child["selection"]["vins"] == succeeded


def test_a_dynamic_campaign_takes_in_vehicles_that_become_eligible(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout={**ONE_WAVE, "dynamic": True})
    assert tick(engine, T0).joined == 0
    with unit_of_work(make_session_factory(engine)) as session:
        add_ecu(session, add_vehicle(session, 50), "BCM", software_version="4.0.0")
    assert tick(engine, T0 + timedelta(minutes=1)).joined == 0  # not time to look yet
    assert tick(engine, T0 + JOIN_EVERY).joined == 1
    assert states_of(engine, cid)[vin(50)] == "pending"
    assert tick(engine, T0 + 2 * JOIN_EVERY).joined == 0  # once only
    drive(engine, cid, 1, SUCCEED, count=38)
    report = tick(engine, T0 + 3 * JOIN_EVERY)
    # Every vehicle done, but a dynamic campaign runs until its end time or a cancel.
    assert report.completed == []
    body = alice.get(f"/api/v1/campaigns/{cid}").json()
    assert body["state"] == "running" and body["deployments"] == 38
    assert body["waves"][0]["size"] == 38
    assert_tallies_match(engine, cid)


def test_the_ledger_folds_its_deltas_without_changing_a_count(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(ledger, "COMPACT_AFTER", 5)
    _, cid = launched(as_role, rollout=ROLLOUT)
    tick(engine, T0)
    drive(engine, cid, 1, ["offer", "accepted"], count=4)
    with unit_of_work(make_session_factory(engine)) as session:
        before = ledger.counts(session, cid)
    tick(engine, T0 + timedelta(minutes=1))
    from otacm.campaigns.models import DeploymentTally

    with unit_of_work(make_session_factory(engine)) as session:
        assert ledger.counts(session, cid) == before
        rows = session.scalar(select(func.count()).where(DeploymentTally.campaign_id == cid))
        assert rows == len(before)
    assert_tallies_match(engine, cid)


EVENTS = st.sampled_from(sorted(DeploymentEvent))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    moves=st.lists(st.tuples(st.integers(0, 5), EVENTS), max_size=30),
    engine_ticks=st.lists(st.integers(0, 6), max_size=3),
)
def test_random_events_never_move_a_deployment_backwards_and_counts_add_up(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine,
    moves: list[tuple[int, DeploymentEvent]], engine_ticks: list[int],
) -> None:  # fmt: skip
    with unit_of_work(make_session_factory(engine)) as session:
        cid = session.scalar(select(CampaignWave.campaign_id).limit(1))
    if cid is None:  # the first example launches; later ones go on with what it left
        _, cid = launched(
            as_role, rollout={
                **ONE_WAVE,
                "timeouts": {"in_progress": "PT1H", "offered": "PT1H"},
                "retries": {"backoff_base": "PT1M", "retry_on": ["flash_error", "timed_out"]},
            },
        )  # fmt: skip
        tick(engine, T0)
    with unit_of_work(make_session_factory(engine)) as session:
        for number, event in moves:
            deployment = _deployment(session, cid, number)
            with contextlib.suppress(IllegalTransition):
                apply_event(session, deployment, event, T0, code="flash_error")
    for hours in engine_ticks:
        tick(engine, T0 + timedelta(hours=hours))
    assert_tallies_match(engine, cid)
    from otacm.campaigns.models import DeploymentEventRecord

    with unit_of_work(make_session_factory(engine)) as session:
        history: dict[int, list[DeploymentEventRecord]] = {}
        for record in session.scalars(
            select(DeploymentEventRecord).order_by(DeploymentEventRecord.id)
        ):
            history.setdefault(record.deployment_id, []).append(record)
        for deployment in session.scalars(select(Deployment).where(Deployment.campaign_id == cid)):
            chain = history.get(deployment.id, [])
            # The history is one unbroken chain from pending to the state it is in now.
            states = ["pending"] + [r.to_state for r in chain]
            assert [r.from_state for r in chain] == states[:-1]
            assert states[-1] == deployment.state
            for record in chain:
                before, after = DeploymentState(record.from_state), DeploymentState(record.to_state)
                if before in RANK and after in RANK:
                    # Forward only; the way back to pending is an explicit retry.
                    assert RANK[after] >= RANK[before] or record.event == "retry"


def test_a_tick_passes_over_campaigns_with_nothing_to_do(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    assert tick(engine, T0).opened == [(cid, 1)]
    assert tick(engine, T0).passed_over == 1  # nothing moved, nothing due
    drive(engine, cid, 1, ["offer"], count=1)
    assert tick(engine, T0).passed_over == 0  # a deployment moved: looked at
    assert tick(engine, T0 + timedelta(seconds=5)).passed_over == 1
    assert tick(engine, T0 + timedelta(minutes=2)).passed_over == 0  # looked at now and then
    alice.post(f"/api/v1/campaigns/{cid}/pause", json={})
    assert tick(engine, T0 + timedelta(minutes=4)).passed_over == 1  # paused, no end time
    alice.post(f"/api/v1/campaigns/{cid}/resume", json={})
    assert tick(engine, T0 + timedelta(minutes=4)).passed_over == 0


def test_a_planned_retry_is_dropped_when_the_vehicle_reports_a_final_failure(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    rollout = {
        **ONE_WAVE,
        "timeouts": {"in_progress": "PT1H"},
        "retries": {"retry_on": ["timed_out"], "backoff_base": "PT10M"},
    }
    _, cid = launched(as_role, rollout=rollout)
    tick(engine, T0)
    offer(engine, 0)
    move(engine, cid, 0, "accepted")
    assert tick(engine, T0 + timedelta(hours=2)).timed_out == 1  # a retry is planned
    with unit_of_work(make_session_factory(engine)) as session:
        assert _deployment(session, cid, 0).next_attempt_at is not None
        # The vehicle was alive after all: its flash failed, which the policy does not retry.
        apply_event(
            session, _deployment(session, cid, 0), DeploymentEvent.FAILED, T0, code="flash_error"
        )
    assert tick(engine, T0 + timedelta(hours=5)).retried == 0
    assert states_of(engine, cid)[vin(0)] == "failed"


def test_offers_check_withdrawal_and_regions_again(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ONE_WAVE)
    tick(engine, T0)
    with unit_of_work(make_session_factory(engine)) as session:
        _vehicle(session, 1).region = "NA"  # moved out of the campaign's allowed regions
    assert offer(engine, 1) == []
    assert states_of(engine, cid)[vin(1)] == "cancelled"
    from otacm.updates.models import SoftwareUpdate

    with unit_of_work(make_session_factory(engine)) as session:
        update = session.get(SoftwareUpdate, 1)
        assert update is not None
        update.state = "withdrawn"
    assert offer(engine, 2) == []
    with unit_of_work(make_session_factory(engine)) as session:
        deployment_id = _deployment(session, cid, 2).id
    events = alice.get(f"/api/v1/campaigns/{cid}/deployments/{deployment_id}").json()["events"]
    assert events[-1]["detail"] == "no longer applicable at offer time: update 1 is withdrawn"


def test_retry_failed_leaves_out_what_the_parent_still_retries(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    rollout = {**ONE_WAVE, "retries": {"retry_on": ["network_error"], "max_attempts": 3}}
    alice, cid = launched(as_role, rollout=rollout)
    tick(engine, T0)
    for number, code in [(0, "network_error"), (1, "flash_error")]:
        offer(engine, number)
        move(engine, cid, number, "accepted", "failed", code=code)
    # Before the engine has planned vehicle 0's retry: it is still the parent's to retry.
    response = alice.post(f"/api/v1/campaigns/{cid}/retry-failed", json={"comment": "workshop"})
    assert response.status_code == 201, response.text
    assert response.json()["selection"]["vins"] == [vin(1)]
    # Its planned retry keeps the vehicle busy for other campaigns of the same ECU type.
    tick(engine, T0 + timedelta(seconds=1))
    from otacm.targeting.preview import busy_ecu_types

    with unit_of_work(make_session_factory(engine)) as session:
        assert busy_ecu_types(session, _vehicle(session, 0).id) == {"BCM"}
        assert busy_ecu_types(session, _vehicle(session, 1).id) == frozenset()
    from otacm.security.models import AuditEntry

    with unit_of_work(make_session_factory(engine)) as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "campaign.retry"))
        assert entry is not None and entry.detail == "workshop"


def test_the_engine_wakes_for_what_falls_due_between_its_minutely_looks(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    """Each tick below comes 10 s after something falls due but under a minute after the
    previous look: only the campaign's wake time makes the engine look again."""
    rollout = {
        "waves": {
            "steps": [{"percent": 10}, {"percent": 100}],
            "soak_time": "PT1H",
            "success_threshold_percent": 50,
        },
        "timeouts": {"in_progress": "PT2H"},
        "retries": {"retry_on": ["network_error"], "backoff_base": "PT10M"},
    }
    _, cid = launched(as_role, rollout=rollout)
    tick(engine, T0)
    drive(engine, cid, 1, SUCCEED, count=3)
    drive(engine, cid, 1, ["offer", "accepted"], count=4)  # the fourth hangs in flight
    # Soak: the threshold is met at T0 + 1 min, so wave 2 may open at T0 + 1 h 1 min.
    tick(engine, T0 + timedelta(minutes=1))
    tick(engine, T0 + timedelta(hours=1, minutes=1) - timedelta(seconds=30))
    assert tick(engine, T0 + timedelta(hours=1, minutes=1, seconds=10)).opened == [(cid, 2)]
    # Timeout: the hanging deployment entered `accepted` at T0, so it times out at T0 + 2 h.
    tick(engine, T0 + timedelta(hours=2) - timedelta(seconds=30))
    assert tick(engine, T0 + timedelta(hours=2, seconds=10)).timed_out == 1
    # Retry: a network error at T0 + 3 h is retried 10 minutes later.
    later = T0 + timedelta(hours=3)
    with unit_of_work(make_session_factory(engine)) as session:
        deployment = session.scalar(
            select(Deployment)
            .where(Deployment.campaign_id == cid, Deployment.wave == 2)
            .order_by(Deployment.id)
            .limit(1)
        )
        assert deployment is not None
        for event in ("offer", "accepted", "failed"):
            apply_event(session, deployment, DeploymentEvent(event), later, code="network_error")
    tick(engine, later)  # plans the retry for later + 10 min
    tick(engine, later + timedelta(minutes=10) - timedelta(seconds=30))
    assert tick(engine, later + timedelta(minutes=10, seconds=10)).retried == 1


def test_a_dynamic_campaign_wakes_for_its_next_look_at_newcomers(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    _, cid = launched(as_role, rollout={**ONE_WAVE, "dynamic": True})
    tick(engine, T0)
    with unit_of_work(make_session_factory(engine)) as session:
        add_ecu(session, add_vehicle(session, 50), "BCM", software_version="4.0.0")
    tick(engine, T0 + JOIN_EVERY - timedelta(seconds=30))
    assert tick(engine, T0 + JOIN_EVERY + timedelta(seconds=10)).joined == 1
