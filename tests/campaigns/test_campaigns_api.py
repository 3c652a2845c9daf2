"""Defining campaigns and the four-eyes approval, through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work

NOTICE = {
    "en": {
        "purpose": "Fixes the interior light timeout.",
        "what_changes": "The light switches off 30 s after locking.",
        "expected_duration_minutes": 12,
        "functions_unavailable": ["driving", "charging"],
        "instructions": "Park the vehicle and switch the ignition off.",
    }
}


def campaign(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "BCM light fix EU",
        "category": "bug_fix",
        "urgency": "immediate",
        "priority": 600,
        "update_ids": [1],
        "selection": {"query": "region==EU"},
        "regions": {"allowed_regions": ["EU"]},
        "user_notice": NOTICE,
        "rollout": {"waves": {"steps": [{"percent": 10}, {"percent": 100}]}},
    }
    body.update(overrides)
    return body


def error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    if field is not None:
        assert response.json().get("field") == field, response.text


def test_a_campaign_is_defined_submitted_and_approved_by_another_manager(
    released: None, as_role: Callable[..., TestClient]
) -> None:
    alice = as_role("campaign_manager", "alice")
    bob = as_role("campaign_manager", "bob")
    created = alice.post("/api/v1/campaigns", json=campaign())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "draft"
    assert body["update_ids"] == [1]
    assert body["rollout"]["waves"]["steps"][0]["percent"] == 10
    cid = body["id"]
    assert alice.post(f"/api/v1/campaigns/{cid}/submit").json()["state"] == "pending_approval"
    error(alice.post(f"/api/v1/campaigns/{cid}/approve", json={}), 403, "four_eyes_required")
    approved = bob.post(f"/api/v1/campaigns/{cid}/approve", json={"comment": "checked"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    assert approved.json()["decided_by"] == "bob"
    error(
        alice.patch(f"/api/v1/campaigns/{cid}", json={"priority": 1}),
        409,
        "campaign_state_conflict",
    )
    audit = bob.get("/api/v1/audit", params={"object_type": "campaign"}).json()["items"]
    assert {e["action"] for e in audit} >= {
        "campaign.create",
        "campaign.submit",
        "campaign.approve",
    }


def test_a_rejected_campaign_is_edited_back_to_draft_and_resubmitted(
    released: None, as_role: Callable[..., TestClient]
) -> None:
    alice = as_role("campaign_manager", "alice")
    bob = as_role("campaign_manager", "bob")
    cid = alice.post("/api/v1/campaigns", json=campaign()).json()["id"]
    alice.post(f"/api/v1/campaigns/{cid}/submit")
    error(
        bob.post(f"/api/v1/campaigns/{cid}/reject", json={"comment": ""}), 422, "validation_failed"
    )
    rejected = bob.post(f"/api/v1/campaigns/{cid}/reject", json={"comment": "wrong region"})
    assert rejected.json()["state"] == "rejected"
    assert rejected.json()["decision_comment"] == "wrong region"
    edited = alice.patch(f"/api/v1/campaigns/{cid}", json={"regions": {"allowed_regions": ["NA"]}})
    assert edited.status_code == 200, edited.text
    assert edited.json()["state"] == "draft"
    assert alice.post(f"/api/v1/campaigns/{cid}/submit").json()["state"] == "pending_approval"


def test_without_four_eyes_one_operator_approves_their_own(
    released: None, as_role: Callable[..., TestClient]
) -> None:
    solo = as_role("campaign_manager", "solo", campaign_four_eyes=False)
    cid = solo.post("/api/v1/campaigns", json=campaign()).json()["id"]
    solo.post(f"/api/v1/campaigns/{cid}/submit")
    assert solo.post(f"/api/v1/campaigns/{cid}/approve", json={}).json()["state"] == "approved"


@pytest.mark.parametrize(
    ("changes", "status", "code", "field"),
    [
        ({"urgency": "scheduled"}, 422, "validation_failed", "starts_at"),
        ({"consent_required": False}, 422, "validation_failed", "consent_required"),
        ({"update_ids": [2]}, 409, "update_not_targetable", "update_ids"),
        ({"update_ids": [99]}, 404, "not_found", "update_ids"),
        ({"priority": 0}, 422, "validation_failed", "priority"),
        ({"user_notice": {}}, 422, "validation_failed", "user_notice"),
        ({"selection": {"query": "model=Nordra"}}, 422, "invalid_query", "query"),
        ({"ends_at": "2020-01-01T00:00:00+00:00"}, 422, "validation_failed", "ends_at"),
        ({"rollout": {"waves": {"steps": [{"percent": 50}, {"percent": 10}]}}}, 422, None, None),
    ],
)
def test_bad_campaigns_are_refused_naming_the_field(
    released: None,
    as_role: Callable[..., TestClient],
    changes: dict[str, Any],
    status: int,
    code: str | None,
    field: str | None,
) -> None:
    alice = as_role("campaign_manager", "alice")
    response = alice.post("/api/v1/campaigns", json=campaign(**changes))
    assert response.status_code == status, response.text
    if code is not None:
        error(response, status, code, field)
    assert alice.get("/api/v1/campaigns").json()["items"] == []


def test_an_immediate_recall_may_skip_consent_and_names_are_unique_among_active(
    released: None, as_role: Callable[..., TestClient]
) -> None:
    alice = as_role("campaign_manager", "alice")
    recall = alice.post(
        "/api/v1/campaigns", json=campaign(category="recall", consent_required=False)
    )
    assert recall.status_code == 201, recall.text
    error(alice.post("/api/v1/campaigns", json=campaign()), 409, "conflict", "name")


def test_roles(released: None, as_role: Callable[..., TestClient]) -> None:
    viewer = as_role("viewer")
    engineer = as_role("engineer")
    manager = as_role("campaign_manager", "carol")
    error(viewer.post("/api/v1/campaigns", json=campaign()), 403, "forbidden")
    cid = manager.post("/api/v1/campaigns", json=campaign()).json()["id"]
    manager.post(f"/api/v1/campaigns/{cid}/submit")
    error(engineer.post(f"/api/v1/campaigns/{cid}/approve", json={}), 403, "forbidden")
    assert viewer.get(f"/api/v1/campaigns/{cid}").json()["state"] == "pending_approval"
    assert [
        c["id"]
        for c in viewer.get("/api/v1/campaigns", params={"state": "pending_approval"}).json()[
            "items"
        ]
    ] == [cid]


# Launch ---------------------------------------------------------------------------------------


def approved(as_role: Callable[..., TestClient], **changes: Any) -> tuple[TestClient, int]:
    alice = as_role("campaign_manager", "alice")
    bob = as_role("campaign_manager", "bob")
    created = alice.post("/api/v1/campaigns", json=campaign(**changes))
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    alice.post(f"/api/v1/campaigns/{cid}/submit")
    assert bob.post(f"/api/v1/campaigns/{cid}/approve", json={}).json()["state"] == "approved"
    return alice, cid


def deployments(engine: Engine, campaign_id: int) -> dict[str, int]:
    from sqlalchemy import select

    from otacm.campaigns.models import Deployment
    from otacm.fleet.models import Vehicle

    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.execute(
            select(Vehicle.vin, Deployment.wave)
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(Deployment.campaign_id == campaign_id)
        ).all()
    return {vin: wave for vin, wave in rows}


def test_launch_creates_a_deployment_per_eligible_vehicle_in_waves(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    from otacm.campaigns.policy import WavePlan, assign_waves

    alice, cid = approved(as_role)
    refused = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 370})
    error(refused, 409, "launch_count_mismatch", "expected_vehicles")
    assert deployments(engine, cid) == {}
    launched = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 37})
    assert launched.status_code == 200, launched.text
    body = launched.json()
    assert body["state"] == "running"
    assert body["deployments"] == 37  # the three NA vehicles are outside the regions
    assert [(w["number"], w["size"]) for w in body["waves"]] == [(1, 4), (2, 33)]
    waves = deployments(engine, cid)
    assert set(waves) == set(fleet[:37])
    # The same split the pure rule gives (by vehicle id).
    with unit_of_work(make_session_factory(engine)) as session:
        from sqlalchemy import select

        from otacm.fleet.models import Vehicle

        ids = dict(session.execute(select(Vehicle.vin, Vehicle.id)).all())
    plan = WavePlan.model_validate({"steps": [{"percent": 10}, {"percent": 100}]})
    keys = [ids[v] for v in fleet[:37]]
    expected = dict(zip(keys, assign_waves(keys, plan, campaign_id=cid), strict=True))
    assert {ids[v]: w for v, w in waves.items()} == {k: w + 1 for k, w in expected.items()}
    error(
        alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 37}),
        409,
        "campaign_state_conflict",
    )


def test_canary_vehicles_form_wave_zero_and_a_future_start_schedules(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = approved(
        as_role,
        urgency="scheduled",
        starts_at="2099-01-01T08:00:00+00:00",
        rollout={
            "waves": {
                "canary_vins": fleet[:2],
                "steps": [{"percent": 50}, {"percent": 100}],
            }
        },
    )
    launched = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 36})
    assert launched.status_code == 200, launched.text
    assert launched.json()["state"] == "scheduled"
    assert [(w["number"], w["size"]) for w in launched.json()["waves"]] == [
        (0, 2), (1, 17), (2, 18),
    ]  # fmt: skip
    waves = deployments(engine, cid)
    assert {v for v, w in waves.items() if w == 0} == set(fleet[:2])


def test_only_an_approved_campaign_launches(
    fleet: list[str], as_role: Callable[..., TestClient]
) -> None:
    alice = as_role("campaign_manager", "alice")
    cid = alice.post("/api/v1/campaigns", json=campaign()).json()["id"]
    error(
        alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 37}),
        409,
        "campaign_state_conflict",
    )


@pytest.mark.parametrize(
    "steps",
    [
        [{"count": 3}, {"percent": 33.3}, {"percent": 100}],
        [{"percent": 7.1}, {"percent": 50}, {"percent": 100}],
        [{"count": 100}, {"percent": 100}],
    ],
)
def test_launch_waves_equal_the_pure_split(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine, steps: list[Any]
) -> None:
    from sqlalchemy import select

    from otacm.campaigns.policy import WavePlan, assign_waves
    from otacm.fleet.models import Vehicle

    alice, cid = approved(as_role, rollout={"waves": {"steps": steps}})
    launched = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": 37})
    assert launched.status_code == 200, launched.text
    with unit_of_work(make_session_factory(engine)) as session:
        ids = dict(session.execute(select(Vehicle.vin, Vehicle.id)).all())
    keys = [ids[v] for v in fleet[:37]]
    plan = WavePlan.model_validate({"steps": steps})
    expected = assign_waves(keys, plan, campaign_id=cid)
    got = deployments(engine, cid)
    assert [got[v] for v in fleet[:37]] == [w + 1 for w in expected]
    sizes = [w["size"] for w in launched.json()["waves"]]
    assert sum(sizes) == 37


# The engine, driven by a fake clock -------------------------------------------------------

T0 = datetime(2031, 5, 4, 10, 0, tzinfo=UTC)
SUCCEED = ["offer", "accepted", "manifest_confirmed"]
FAIL = ["offer", "accepted", "failed"]


def drive(engine: Engine, campaign_id: int, wave: int, events: list[str], *, count: int) -> None:
    """Move the first `count` deployments of `wave` through `events` (at T0)."""
    from sqlalchemy import select

    from otacm.campaigns.deployments import apply_event
    from otacm.campaigns.models import Deployment
    from otacm.campaigns.states import DeploymentEvent

    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.scalars(
            select(Deployment)
            .where(Deployment.campaign_id == campaign_id, Deployment.wave == wave)
            .order_by(Deployment.id)
            .limit(count)
        ).all()
        for deployment in rows:
            for event in events:
                apply_event(session, deployment, DeploymentEvent(event), T0, code="flash_error")


def tick(engine: Engine, now: datetime) -> Any:
    from otacm.campaigns.engine import tick as engine_tick
    from otacm.db import make_write_session_factory

    return engine_tick(make_write_session_factory(engine), now)


def launched(
    as_role: Callable[..., TestClient], expected: int = 37, **changes: Any
) -> tuple[TestClient, int]:
    alice, cid = approved(as_role, **changes)
    response = alice.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": expected})
    assert response.status_code == 200, response.text
    return alice, cid


ROLLOUT = {
    "waves": {
        "steps": [{"percent": 10}, {"percent": 100}],
        "soak_time": "PT1H",
        "failure_threshold_percent": 10,
        "failure_min_finished": 2,
    }
}


def test_waves_open_soak_advance_and_complete(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    assert tick(engine, T0).opened == [(cid, 1)]
    assert tick(engine, T0).opened == []  # nothing finished: wait
    drive(engine, cid, 1, SUCCEED, count=4)
    assert tick(engine, T0 + timedelta(minutes=1)).opened == []  # soaking
    assert tick(engine, T0 + timedelta(hours=2)).opened == [(cid, 2)]
    drive(engine, cid, 2, SUCCEED, count=33)
    report = tick(engine, T0 + timedelta(hours=3))
    assert report.completed == [cid]
    body = alice.get(f"/api/v1/campaigns/{cid}").json()
    assert body["state"] == "completed"
    assert all(w["completed_at"] for w in body["waves"])


def test_failures_above_the_threshold_pause_the_campaign(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    tick(engine, T0)
    drive(engine, cid, 1, FAIL, count=2)
    assert tick(engine, T0 + timedelta(minutes=5)).paused == [cid]
    assert alice.get(f"/api/v1/campaigns/{cid}").json()["state"] == "paused"
    assert tick(engine, T0 + timedelta(hours=5)).opened == []  # a paused campaign stays put


def test_deployments_stuck_in_flight_time_out(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    _, cid = launched(as_role, rollout={**ROLLOUT, "timeouts": {"in_progress": "PT2H"}})
    tick(engine, T0)
    drive(engine, cid, 1, ["offer", "accepted"], count=3)
    assert tick(engine, T0 + timedelta(hours=1)).timed_out == 0
    assert tick(engine, T0 + timedelta(hours=3)).timed_out == 3


def test_a_scheduled_campaign_starts_at_its_time_and_the_end_time_expires_offers(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(
        as_role,
        expected=37,
        urgency="scheduled",
        starts_at="2031-05-04T12:00:00+00:00",
        ends_at="2031-05-05T12:00:00+00:00",
        rollout=ROLLOUT,
    )
    assert tick(engine, T0).started == []
    started = tick(engine, T0 + timedelta(hours=2))  # starts it, and opens its first wave
    assert (started.started, started.opened) == ([cid], [(cid, 1)])
    report = tick(engine, T0 + timedelta(days=2))
    assert report.expired == 37
    assert report.completed == [cid]
    assert alice.get(f"/api/v1/campaigns/{cid}").json()["state"] == "completed"


def test_two_engines_do_each_step_once(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    import threading

    campaigns = []
    for n in range(3):
        # A vehicle takes part in one live campaign at a time: each gets its own twelve.
        alice, cid = launched(
            as_role,
            expected=12,
            name=f"parallel {n}",
            selection={"vins": fleet[12 * n : 12 * (n + 1)]},
            rollout=ROLLOUT,
        )
        campaigns.append(cid)
    barrier = threading.Barrier(2)
    reports: list[Any] = []

    def run() -> None:
        barrier.wait()
        reports.append(tick(engine, T0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    opened = [o for r in reports for o in r.opened]
    assert sorted(opened) == sorted((cid, 1) for cid in campaigns)
    audit = alice.get(
        "/api/v1/audit", params={"action": "campaign.wave.open", "limit": 100}
    ).json()["items"]
    assert sorted(int(e["object_id"]) for e in audit) == sorted(campaigns)


# Operations -------------------------------------------------------------------------------


def test_pause_resume_next_wave_and_progress(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    tick(engine, T0)
    drive(engine, cid, 1, FAIL, count=2)
    assert tick(engine, T0 + timedelta(minutes=5)).paused == [cid]
    body = alice.get(f"/api/v1/campaigns/{cid}").json()
    assert body["states"] == {"failed": 2, "pending": 35}
    assert body["failure_codes"] == {"flash_error": 2}
    assert body["waves"][0]["states"] == {"failed": 2, "pending": 2}
    error(alice.post(f"/api/v1/campaigns/{cid}/pause", json={}), 409, "campaign_state_conflict")
    resumed = alice.post(f"/api/v1/campaigns/{cid}/resume", json={"comment": "known issue"})
    assert resumed.json()["state"] == "running"
    # The two failures were accepted on resuming: no pause again for them.
    assert tick(engine, T0 + timedelta(minutes=6)).paused == []
    opened = alice.post(f"/api/v1/campaigns/{cid}/next-wave", json={})
    assert opened.status_code == 200, opened.text
    assert [w["opened_at"] is not None for w in opened.json()["waves"]] == [True, True]
    error(alice.post(f"/api/v1/campaigns/{cid}/next-wave", json={}), 409, "campaign_state_conflict")
    assert alice.post(f"/api/v1/campaigns/{cid}/pause", json={}).json()["state"] == "paused"


def test_cancel_cancels_what_was_not_taken_up(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    tick(engine, T0)
    drive(engine, cid, 1, ["offer", "accepted", "download_started"], count=1)
    drive(engine, cid, 2, ["offer"], count=3)
    cancelled = alice.post(f"/api/v1/campaigns/{cid}/cancel", json={"comment": "wrong build"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["states"] == {"downloading": 1, "cancelled": 36}
    assert tick(engine, T0 + timedelta(hours=1)).opened == []
    viewer = as_role("viewer")
    error(viewer.post(f"/api/v1/campaigns/{cid}/cancel", json={}), 403, "forbidden")


def test_retryable_failures_get_their_attempts_with_backoff_before_they_count(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    retries = {"max_attempts": 3, "retry_on": ["flash_error"], "backoff_base": "PT5M"}
    alice, cid = launched(as_role, rollout={**ROLLOUT, "retries": retries})
    tick(engine, T0)
    minute = timedelta(minutes=1)
    clock = T0
    for attempt in (1, 2):
        drive(engine, cid, 1, FAIL, count=2)
        # Failed at T0 (drive's clock); the retry is due after 5 min, then after 10.
        report = tick(engine, clock + minute)
        assert (report.paused, report.retried) == ([], 0)
        due = T0 + timedelta(minutes=5 * 2 ** (attempt - 1))
        assert tick(engine, due - minute).retried == 0
        assert tick(engine, due).retried == 2
        clock = due
        states = alice.get(f"/api/v1/campaigns/{cid}").json()["waves"][0]["states"]
        assert states == {"pending": 4}
    drive(engine, cid, 1, FAIL, count=2)  # the third and last attempt fails too
    assert tick(engine, clock + minute).paused == [cid]


# Alerts -----------------------------------------------------------------------------------


def test_the_engine_raises_alerts_that_operators_acknowledge(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    no_retries = {"max_attempts": 1}  # a timeout is final, and counts as a failure
    alice, cid = launched(
        as_role,
        rollout={**ROLLOUT, "timeouts": {"in_progress": "PT2H"}, "retries": no_retries},
    )
    tick(engine, T0)
    drive(engine, cid, 1, ["offer", "accepted"], count=4)
    drive(engine, cid, 2, ["offer", "accepted"], count=2)
    tick(engine, T0 + timedelta(hours=3))  # six time out at once: a spike, and a pause
    viewer = as_role("viewer")
    open_alerts = viewer.get("/api/v1/alerts", params={"acknowledged": False}).json()["items"]
    assert [(a["kind"], a["campaign_id"]) for a in open_alerts] == [
        ("failure_threshold", cid),
        ("timeout_spike", cid),
    ]
    assert open_alerts[1]["details"] == {"timed_out": 6}
    first = open_alerts[0]["id"]
    error(viewer.post(f"/api/v1/alerts/{first}/acknowledge"), 403, "forbidden")
    acked = alice.post(f"/api/v1/alerts/{first}/acknowledge")
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_by"] == "alice"
    error(alice.post(f"/api/v1/alerts/{first}/acknowledge"), 409, "conflict")
    still_open = alice.get("/api/v1/alerts", params={"acknowledged": False}).json()["items"]
    assert [a["kind"] for a in still_open] == ["timeout_spike"]
    alice.post(f"/api/v1/campaigns/{cid}/cancel", json={})
    assert alice.get("/api/v1/alerts", params={"campaign_id": cid}).json()["items"]


def test_a_finished_campaign_is_announced(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout={"waves": {"steps": [{"percent": 100}]}})
    tick(engine, T0)
    drive(engine, cid, 1, SUCCEED, count=37)
    assert tick(engine, T0 + timedelta(minutes=1)).completed == [cid]
    [finished] = alice.get("/api/v1/alerts").json()["items"]
    assert finished["kind"] == "campaign_finished"
    assert finished["severity"] == "info"


def test_deployments_are_listed_with_filters_and_pages(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, rollout=ROLLOUT)
    tick(engine, T0)
    drive(engine, cid, 1, FAIL, count=2)
    url = f"/api/v1/campaigns/{cid}/deployments"
    failed = alice.get(url, params={"state": "failed"}).json()["items"]
    assert [(d["state"], d["failure_code"], d["wave"]) for d in failed] == [
        ("failed", "flash_error", 1),
    ] * 2
    assert {d["vin"] for d in failed} <= set(fleet)
    assert len(alice.get(url, params={"wave": 2, "limit": 1000}).json()["items"]) == 33
    assert alice.get(url, params={"region": "NA"}).json()["items"] == []
    assert len(alice.get(url, params={"failure_code": "flash_error"}).json()["items"]) == 2
    seen: list[int] = []
    cursor = None
    while True:
        page = alice.get(url, params={"limit": 10, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        seen += [d["id"] for d in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 37
    error(alice.get(url, params={"state": "bogus"}), 422, "validation_failed", "state")
    assert alice.get("/api/v1/campaigns/999/deployments").status_code == 404


def test_campaign_commands(
    fleet: list[str], settings: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from otacm.cli import app
    from otacm.config import get_settings

    db = ["--database-url", settings.database_url]
    runner = CliRunner()
    document = tmp_path / "campaign.json"
    document.write_text(json.dumps(campaign()))
    created = runner.invoke(app, ["campaigns", "create", str(document), *db])
    assert created.exit_code == 0, created.output
    cid = created.stdout.strip().splitlines()[-1]
    assert runner.invoke(app, ["campaigns", "submit", cid, *db]).exit_code == 0
    own = runner.invoke(app, ["campaigns", "approve", cid, *db])
    assert own.exit_code == 1  # the same operator created it: four eyes
    assert "another campaign manager" in own.output
    monkeypatch.setenv("OTACM_CAMPAIGN_FOUR_EYES", "false")
    get_settings.cache_clear()
    try:
        assert runner.invoke(app, ["campaigns", "approve", cid, *db]).exit_code == 0
        refused = runner.invoke(app, ["campaigns", "launch", cid, "--expected-vehicles", "5", *db])
        assert refused.exit_code == 1
        assert "would reach 37 vehicles" in " ".join(refused.output.split())
        launched = runner.invoke(
            app, ["campaigns", "launch", cid, "--expected-vehicles", "37", *db]
        )
        assert launched.exit_code == 0, launched.output
        assert "is running" in launched.output
        assert runner.invoke(app, ["campaigns", "pause", cid, *db]).exit_code == 0
        cancelled = runner.invoke(app, ["campaigns", "cancel", cid, "--comment", "test", *db])
        assert "is cancelled" in cancelled.output
        listed = runner.invoke(app, ["campaigns", "list", *db])
        assert "cancelled" in listed.stdout
        shown = runner.invoke(app, ["campaigns", "show", cid, *db])
        assert json.loads(shown.stdout)["state"] == "cancelled"
        report = tmp_path / "report.jsonl"
        written = runner.invoke(
            app, ["campaigns", "report", cid, "-o", str(report), "--format", "jsonl", *db]
        )
        assert written.exit_code == 0, written.output
        rows = [json.loads(line) for line in report.read_text().splitlines()]
        assert len(rows) == 37 and {r["state"] for r in rows} == {"cancelled"}
        nothing = runner.invoke(app, ["campaigns", "retry-failed", cid, *db])
        assert nothing.exit_code == 1 and "no failed deployments" in nothing.output
    finally:
        get_settings.cache_clear()


def test_a_paused_campaign_still_ends_at_its_end_time(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, cid = launched(as_role, ends_at="2031-05-05T10:00:00+00:00", rollout=ROLLOUT)
    tick(engine, T0)
    alice.post(f"/api/v1/campaigns/{cid}/pause", json={})
    assert tick(engine, T0 + timedelta(hours=1)).opened == []
    report = tick(engine, T0 + timedelta(days=2))
    assert (report.completed, report.expired) == ([cid], 37)


def test_vehicles_in_a_live_campaign_are_not_launched_again(
    fleet: list[str], as_role: Callable[..., TestClient], engine: Engine
) -> None:
    alice, first = launched(as_role, 10, name="first", selection={"vins": fleet[:10]})
    bob = as_role("campaign_manager", "bob")
    second = alice.post("/api/v1/campaigns", json=campaign(name="second")).json()["id"]
    alice.post(f"/api/v1/campaigns/{second}/submit")
    bob.post(f"/api/v1/campaigns/{second}/approve", json={})
    launched_second = alice.post(
        f"/api/v1/campaigns/{second}/launch", json={"expected_vehicles": 27}
    )
    assert launched_second.status_code == 200, launched_second.text
    assert set(deployments(engine, second)) == set(fleet[10:37])
    assert alice.post(f"/api/v1/campaigns/{first}/cancel", json={}).status_code == 200
