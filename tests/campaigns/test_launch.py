"""Launching, at the service level, on SQLite and PostgreSQL: the deployments written are the
pure split (`policy.assign_waves`) whichever way eligibility is computed, the waves and tallies
count exactly the rows written, and a refused launch writes nothing.

On PostgreSQL a launch over at least half the fleet reads each update's ECUs in one grouped
pass (`preview.vehicle_query(bulk=True)`); the tests force either way and check that the
grouped pass gives every vehicle the same row as the per-vehicle lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select, text

from otacm.campaigns import launch, ledger, service
from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.policy import _P, WavePlan, assign_waves
from otacm.campaigns.schemas import CampaignCreate
from otacm.db import make_session_factory, unit_of_work, utcnow
from otacm.fleet.models import Ecu, Vehicle
from otacm.security.audit import Actor
from otacm.targeting import preview
from otacm.targeting import service as targeting
from otacm.targeting.eligibility import Reason, RegionRule
from otacm.targeting.schemas import PreviewRequest, RegionRestriction
from otacm.updates.models import SoftwareUpdate
from tests.builders import vin
from tests.targeting.test_preview import (
    add_ecu,
    add_update,
    add_vehicle,
    expected_reasons,
    update_st,
    vehicle_st,
)

ALICE = Actor("alice", "campaign_manager")
BOB = Actor("bob", "campaign_manager")
NOTICE = {
    "en": {
        "purpose": "Fixes the interior light timeout.",
        "what_changes": "The light switches off 30 s after locking.",
        "expected_duration_minutes": 12,
        "instructions": "Park the vehicle and switch the ignition off.",
    }
}
# 60 vehicles numbered 0..59 that take update 1, a few that do not (3 in NA, outside the
# campaign's regions; 2 without the ECU), and 4 whose ids are P above those of vehicles 0..3:
# the spread key is the same for ids P apart, so those pairs are ranked by id.
FLEET = 60
NOT_ELIGIBLE = {vin(n) for n in (800, 801, 802, 700, 701)}
TWINS = 4


@pytest.fixture
def fleet(engine: Engine) -> dict[str, int]:
    """VIN -> vehicle id of every vehicle."""
    ids: dict[str, int] = {}
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 1)
        for n in range(FLEET):
            vehicle = add_vehicle(session, n)
            add_ecu(session, vehicle, "BCM", software_version="4.0.0")
            ids[vehicle.vin] = vehicle.id
        for n in range(TWINS):
            twin = add_vehicle(session, 900 + n)
            twin.id = ids[vin(n)] + _P
            session.flush()
            add_ecu(session, twin, "BCM", software_version="4.0.0")
            ids[twin.vin] = twin.id
        for n in range(3):
            vehicle = add_vehicle(session, 800 + n, region="NA", country="US")
            add_ecu(session, vehicle, "BCM", software_version="4.0.0")
            ids[vehicle.vin] = vehicle.id
        for n in range(2):
            vehicle = add_vehicle(session, 700 + n)
            ids[vehicle.vin] = vehicle.id
    return ids


def eligible_ids(fleet: dict[str, int]) -> list[int]:
    return [i for v, i in fleet.items() if v not in NOT_ELIGIBLE]


def approved(engine: Engine, rollout: dict[str, Any]) -> int:
    with unit_of_work(make_session_factory(engine)) as session:
        draft = CampaignCreate.model_validate(
            {
                "name": f"launch {utcnow().timestamp()}",
                "category": "bug_fix",
                "urgency": "immediate",
                "update_ids": [1],
                "regions": {"allowed_regions": ["EU"]},
                "user_notice": NOTICE,
                "rollout": {"waves": rollout},
            }
        )
        campaign = service.create(session, ALICE, draft)
        service.submit(session, ALICE, campaign.id)
        service.decide(session, BOB, campaign.id, approve=True, comment="", four_eyes=True)
        return campaign.id


@pytest.fixture(params=[True, False], ids=["bulk", "per-vehicle"])
def bulk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Force the way eligibility is computed (on PostgreSQL; SQLite always looks up each
    vehicle): a fleet of no size makes any launch "at least half of it", a huge one none."""
    size = 0 if request.param else 10**12
    monkeypatch.setattr(launch, "_fleet_size", lambda session: size)
    return bool(request.param)


@pytest.fixture(params=["buckets", "one bucket"])
def buckets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waves' ends are found by bucket of spread keys; in a small fleet nearly every
    vehicle has a bucket of its own, so the test also puts them all in one."""
    if request.param == "one bucket":
        monkeypatch.setattr(launch, "_BUCKET", 2**62)


PLANS = {
    "four steps": {"steps": [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}]},
    "one wave": {"steps": [{"percent": 100}]},
    "counts": {"steps": [{"count": 7}, {"count": 30}, {"percent": 100}]},
    # Two canaries; a first step smaller than the canary wave stays empty.
    "canary": {
        "canary_vins": [vin(5), vin(9)],
        "steps": [{"count": 1}, {"percent": 33.3}, {"percent": 100}],
    },
    # A canary VIN that is not eligible (outside the regions) is left out.
    "canary, one not eligible": {
        "canary_vins": [vin(2), vin(800)],
        "steps": [{"percent": 7.1}, {"percent": 100}],
    },
    # No canary VIN eligible: wave 0 is empty.
    "canary, none eligible": {
        "canary_vins": [vin(801)],
        "steps": [{"percent": 50}, {"percent": 100}],
    },
    # The twins (ids P apart, the same spread key) as canaries and in the cut-offs.
    "twin canary": {
        "canary_vins": [vin(0), vin(900)],
        "steps": [{"percent": 50}, {"percent": 100}],
    },
}


@pytest.mark.parametrize("name", list(PLANS))
def test_launch_writes_the_pure_split_and_counts_what_it_wrote(
    engine: Engine, fleet: dict[str, int], bulk: bool, buckets: None, name: str
) -> None:
    plan = WavePlan.model_validate(PLANS[name])
    cid = approved(engine, PLANS[name])
    keys = eligible_ids(fleet)
    with unit_of_work(make_session_factory(engine)) as session:
        launch.launch(session, ALICE, cid, expected_vehicles=len(keys), margin=0.0)
    canary = {fleet[v] for v in plan.canary_vins}  # not eligible: left out by assign_waves
    offset = 0 if plan.canary_vins else 1
    expected = {
        k: w + offset
        for k, w in zip(keys, assign_waves(keys, plan, campaign_id=cid, canary=canary), strict=True)
    }
    with unit_of_work(make_session_factory(engine)) as session:
        written = dict(
            session.execute(
                select(Deployment.vehicle_id, Deployment.wave).where(Deployment.campaign_id == cid)
            ).all()
        )
        assert written == expected
        states = session.scalars(
            select(Deployment.state).where(Deployment.campaign_id == cid).distinct()
        ).all()
        assert states == ["pending"]
        per_wave = Counter(written.values())
        waves = {
            w.number: w.size
            for w in session.scalars(select(CampaignWave).where(CampaignWave.campaign_id == cid))
        }
        # Every wave of the plan exists, empty ones too, and holds what was written.
        assert sorted(waves) == list(range(offset, offset + plan.wave_count))
        assert waves == {n: per_wave.get(n, 0) for n in waves}
        assert ledger.counts(session, cid) == {
            (n, "pending", None): size for n, size in waves.items() if size
        }
        assert session.scalar(select(Campaign.state).where(Campaign.id == cid)) == "running"


def test_a_refused_launch_writes_nothing_and_can_be_launched_again(
    engine: Engine, fleet: dict[str, int], bulk: bool
) -> None:
    cid = approved(engine, PLANS["four steps"])
    count = len(eligible_ids(fleet))
    with (
        pytest.raises(launch.LaunchCountMismatch) as refused,
        unit_of_work(make_session_factory(engine)) as session,
    ):
        launch.launch(session, ALICE, cid, expected_vehicles=count * 2, margin=0.05)
    assert refused.value.extra["actual"] == count
    assert refused.value.extra["expected"] == count * 2
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(func.count()).select_from(Deployment)) == 0
        assert session.scalar(select(func.count()).select_from(CampaignWave)) == 0
        assert session.scalar(select(Campaign.state).where(Campaign.id == cid)) == "approved"
        launch.launch(session, ALICE, cid, expected_vehicles=count, margin=0.05)
        assert session.scalar(select(func.count()).select_from(Deployment)) == count


def test_a_launch_puts_the_planner_settings_back(
    engine: Engine, fleet: dict[str, int], bulk: bool
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("planner settings are PostgreSQL's")
    names = ["jit", "work_mem", "enable_hashagg", "enable_hashjoin"]
    cid = approved(engine, PLANS["four steps"])
    with unit_of_work(make_session_factory(engine)) as session:

        def current() -> list[str]:
            return [session.scalar(text(f"SHOW {name}")) for name in names]

        before = current()
        launch.launch(session, ALICE, cid, expected_vehicles=len(eligible_ids(fleet)), margin=0)
        assert current() == before


# The grouped ECU pass against the per-vehicle lookup and the pure rules --------------------


def vehicle_rows(session: Any, request: PreviewRequest, *, bulk: bool) -> list[tuple[Any, ...]]:
    _, plan, condition = targeting.plan_for(session, request)
    rows = preview.vehicle_query(session, plan, condition, bulk=bulk).subquery()
    return [tuple(r) for r in session.execute(select(rows).order_by(rows.c.vehicle_id))]


@pytest.fixture
def factory(engine: Engine) -> Callable[[], Iterator[Any]]:
    return lambda: unit_of_work(make_session_factory(engine))  # type: ignore[return-value]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    vehicles=st.lists(vehicle_st, min_size=1, max_size=12),
    bcm=update_st,
    gateway=st.none() | update_st,
    needs_gateway=st.none() | st.sampled_from(["3.0.0", "4.1"]),
    allowed_regions=st.lists(st.sampled_from(["EU", "NA", "CN"]), max_size=2, unique=True),
)
def test_the_grouped_ecu_pass_gives_every_vehicle_the_same_row(
    factory: Callable[[], Any],
    vehicles: list[dict[str, Any]],
    bcm: dict[str, Any],
    gateway: dict[str, Any] | None,
    needs_gateway: str | None,
    allowed_regions: list[str],
) -> None:
    with factory() as session:
        session.execute(delete(Ecu))
        session.execute(delete(Vehicle))
        session.execute(delete(SoftwareUpdate))
        for n, spec in enumerate(vehicles):
            vehicle = add_vehicle(session, n, **{k: v for k, v in spec.items() if k != "ecus"})
            for ecu in spec["ecus"]:
                removed = utcnow() if ecu["removed"] else None
                fields = {k: v for k, v in ecu.items() if k != "removed"}
                add_ecu(session, vehicle, **fields, removed_at=removed)
        dependencies = (
            [{"ecu_type": "GATEWAY", "min_version": needs_gateway}] if needs_gateway else []
        )
        add_update(session, 1, ecu_type="BCM", dependencies=dependencies, **bcm)
        ids = [1]
        if gateway is not None:
            add_update(session, 2, ecu_type="GATEWAY", **gateway)
            ids.append(2)
    request = PreviewRequest(
        update_ids=ids,
        regions=RegionRestriction.model_validate({"allowed_regions": allowed_regions}),
    )
    with factory() as session:
        grouped = vehicle_rows(session, request, bulk=True)
        assert grouped == vehicle_rows(session, request, bulk=False)
        reasons = {row[1]: preview.REASON_OF_CODE[row[7]] for row in grouped}
        rule = RegionRule(allowed_regions=frozenset(allowed_regions))
        assert reasons == expected_reasons(session, request, rule)


def test_the_grouped_ecu_pass_takes_the_furthest_of_several_ecus(engine: Engine) -> None:
    """A vehicle with two ECUs of the type (one unfit, one fit), one whose only ECU was
    removed, one without: the reasons the per-vehicle lookup gives."""
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 1)
        two = add_vehicle(session, 0)
        add_ecu(session, two, "BCM", hardware_part_number="HW-X")
        add_ecu(session, two, "BCM", software_version="4.0.0")
        removed = add_vehicle(session, 1)
        add_ecu(session, removed, "BCM", software_version="4.0.0", removed_at=utcnow())
        add_vehicle(session, 2)
        unfit = add_vehicle(session, 3)
        add_ecu(session, unfit, "BCM", protocol="LIN")
    request = PreviewRequest(update_ids=[1])
    with unit_of_work(make_session_factory(engine)) as session:
        grouped = vehicle_rows(session, request, bulk=True)
        assert grouped == vehicle_rows(session, request, bulk=False)
        assert [preview.REASON_OF_CODE[row[7]] for row in grouped] == [
            Reason.ELIGIBLE,
            Reason.NO_MATCHING_ECU,
            Reason.NO_MATCHING_ECU,
            Reason.PROTOCOL_MISMATCH,
        ]
