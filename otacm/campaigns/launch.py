"""Launching an approved campaign: every eligible vehicle gets a deployment, in its wave.

The eligible vehicles come from the targeting preview's query (the same rules, computed in the
database) and are computed once, into a temporary table. One pass counts them: the count is
checked against the one the launcher expected from the preview (beyond the margin nothing is
written: the "12,000 trucks instead of 1,200" guard) and gives the wave bounds
(`policy.wave_bounds`). Vehicles are ranked canary first, then in the campaign's spread order
(`policy.spread_order`, the ranking `policy.assign_waves` defines); the last vehicle of each
wave is found without sorting them all, and every vehicle is then written as a pending
deployment of its wave with one INSERT … SELECT, in vehicle order.

On PostgreSQL a launch over at least half the fleet reads each update's ECUs in one grouped
pass instead of one lookup per vehicle (`preview.vehicle_query`'s `bulk`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Insert,
    Integer,
    MetaData,
    Select,
    Subquery,
    Table,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from otacm.campaigns import ledger, service
from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.policy import RolloutPolicy, WavePlan, spread_order, wave_bounds
from otacm.campaigns.schemas import CampaignState, Urgency
from otacm.campaigns.states import DeploymentState
from otacm.db import is_postgresql, utcnow
from otacm.errors import Conflict
from otacm.fleet.models import BigId, Vehicle
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.targeting import preview
from otacm.targeting import service as targeting
from otacm.targeting.eligibility import ELIGIBLE
from otacm.targeting.schemas import RegionRestriction
from otacm.targeting.selection import TargetSelection, selection_condition

# The rollout engine, as the audit log names it (it makes a dynamic campaign's joins).
ENGINE = Actor("otacm-engine", "system", "local")


class LaunchCountMismatch(Conflict):
    code = "launch_count_mismatch"


def launch(
    session: Session,
    actor: Actor,
    campaign_id: int,
    *,
    expected_vehicles: int,
    margin: float,
    now: datetime | None = None,
) -> Campaign:
    """Create the deployments of an approved campaign and start it (or schedule it)."""
    now = now or utcnow()
    campaign = service.get(session, campaign_id, lock=True)
    if campaign.state != CampaignState.APPROVED:
        raise service.CampaignStateConflict(
            f"campaign {campaign_id} is {campaign.state}; only an approved campaign launches",
            state=campaign.state,
        )
    plan = RolloutPolicy.model_validate(campaign.rollout).waves
    postgres = is_postgresql(session.get_bind().dialect)
    bulk = postgres and 2 * expected_vehicles >= _fleet_size(session)
    table = _eligible_table()
    connection = session.connection()
    table.create(connection)
    try:
        with _planner(session, LAUNCH_PLANNER if postgres else {}):
            with _planner(session, BULK_PLANNER if bulk else {}):
                _fill(session, table, campaign, plan, bulk)
            t = table.c
            # One pass counts them all, the canaries, and the others by bucket of spread keys
            # (where each wave ends is found from those).
            buckets = t.spread // _BUCKET
            counted = session.execute(
                select(t.canary, buckets, func.count()).group_by(t.canary, buckets)
            ).all()
            total = sum(count for _, _, count in counted)
            canaries = sum(count for canary, _, count in counted if canary)
            # Before anything is written: a refusal leaves nothing behind.
            _guard(campaign_id, total, expected_vehicles, margin)
            bounds = wave_bounds(total, plan, canaries)
            per_bucket = sorted((number, count) for canary, number, count in counted if not canary)
            wave = _wave_expression(session, table, plan, bounds, canaries, per_bucket)
            insert_rows = _insert_pending(campaign.id, select(t.vehicle_id, wave), now)
            written = session.execute(
                insert_rows.execution_options(preserve_rowcount=True)
            ).rowcount  # type: ignore[attr-defined]
        if written != total:  # the table's rows go in whole or the statement fails
            raise RuntimeError(f"launch wrote {written} deployments, not {total}")
    finally:
        # After a failed statement PostgreSQL refuses everything until rollback, which drops
        # the table anyway; the drop must not replace the real error.
        with suppress(DBAPIError):
            table.drop(connection)
    first_wave = 0 if plan.canary_vins else 1
    sizes = {first_wave + n: end - (bounds[n - 1] if n else 0) for n, end in enumerate(bounds)}
    for number, size in sizes.items():
        session.add(CampaignWave(campaign_id=campaign.id, number=number, size=size))
    ledger.record_launch(session, campaign.id, sizes)
    scheduled = campaign.urgency == Urgency.SCHEDULED and (campaign.starts_at or now) > now
    campaign.state = (CampaignState.SCHEDULED if scheduled else CampaignState.RUNNING).value
    campaign.launched_at = campaign.updated_at = now
    campaign.launched_by = actor.name
    audit.record(
        session, actor, "campaign.launch", object_type="campaign", object_id=campaign.id,
        after={"state": campaign.state, "deployments": total, "expected": expected_vehicles,
               "waves": list(sizes.values())},
    )  # fmt: skip
    session.flush()
    return campaign


# For every statement of a launch on PostgreSQL: JIT compiling the eligibility query costs
# more than it saves (as for the preview), and sorting a million rows (the ECUs of a type by
# vehicle: about 100 MB; the eligible vehicles by id) stays in memory. Only while launching.
LAUNCH_PLANNER = {"jit": "off", "work_mem": "256MB"}
# For the eligibility query with `bulk`: each update's ECUs sorted by vehicle and merge-joined
# to the vehicles (2.3 s for a million vehicles on the benchmark registry), where the planner's
# own choice, hashing a million groups and joining by hash, took 3.1–3.3 s (the per-vehicle
# lookups: 4.5 s).
BULK_PLANNER = {"enable_hashagg": "off", "enable_hashjoin": "off"}
# Spread keys are scattered evenly over 0..P-1 (P is about 3e9): key // 2**20 makes some 2,900
# buckets, which hold about 350 each of a million vehicles. Where each wave ends is found by
# counting the rows per bucket (with the total) and then reading only the buckets those ends
# fall in, instead of ranking them all (a million vehicles: 0.2 s in all; ranking took 0.6 s
# more than counting).
_BUCKET = 2**20


@contextmanager
def _planner(session: Session, settings: Mapping[str, str]) -> Iterator[None]:
    """PostgreSQL settings for the statements inside (SET LOCAL), then the ones before."""
    before = {name: str(session.scalar(select(func.current_setting(name)))) for name in settings}
    for name, value in settings.items():
        session.execute(select(func.set_config(name, value, True)))
    try:
        yield
    finally:
        with suppress(DBAPIError):  # a failed statement: the rollback resets them anyway
            for name, value in before.items():
                session.execute(select(func.set_config(name, value, True)))


def _fleet_size(session: Session) -> int:
    """The number of vehicles, as PostgreSQL's statistics estimate it (counted when there are
    none yet): only to choose how eligibility is computed."""
    estimate = session.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": Vehicle.__tablename__},
    )
    if estimate is None or estimate <= 0:
        return session.scalar(select(func.count()).select_from(Vehicle)) or 0
    return int(estimate)


def _eligible_table() -> Table:
    """The launch's eligible vehicles, computed once: counted for the guard and the wave
    bounds, ranked for the wave cut-offs, then written as deployments."""
    return Table(
        f"campaign_launch_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("vehicle_id", BigId, nullable=False),
        Column("canary", Integer, nullable=False),
        # `policy.spread_order`'s key: the rank among the non-canary vehicles is by (spread, id).
        Column("spread", BigInteger, nullable=False),
        prefixes=["TEMPORARY"],
    )


def _fill(session: Session, table: Table, campaign: Campaign, plan: WavePlan, bulk: bool) -> None:
    eligible = _considered(session, campaign, bulk=bulk)
    is_canary = eligible.c.vin.in_(plan.canary_vins) if plan.canary_vins else literal(False)
    rows = (
        select(
            eligible.c.vehicle_id,
            case((is_canary, 1), else_=0),
            spread_order(campaign.id).expression(eligible.c.vehicle_id),
        )
        .where(eligible.c.reason == ELIGIBLE)
        # In vehicle order (the bulk plan's own: no sort), which is the order the deployments
        # are then read and written in (a temporary table is read as it was written): the
        # indexes that lead with the vehicle, or the campaign and the vehicle, then grow front
        # to back instead of at random places (a million rows: about 2 s less).
        .order_by(eligible.c.vehicle_id)
    )
    session.execute(insert(table).from_select(["vehicle_id", "canary", "spread"], rows))


def _wave_expression(
    session: Session,
    table: Table,
    plan: WavePlan,
    bounds: list[int],
    canaries: int,
    per_bucket: list[tuple[int, int]],
) -> ColumnElement[int]:
    """Each row's wave (`policy.wave_for_rank` of its rank: canaries first, then by spread
    key and id), as a comparison with the last (spread, id) of every wave but the last: the
    cut-offs `policy.assign_waves` uses too."""
    t = table.c
    first_wave = 0 if plan.canary_vins else 1
    # Wave first_wave + n holds the vehicles ranked below bounds[n]. The canaries (ranked
    # first) are exactly wave 0, so the other waves end at positions among the non-canaries
    # (0: none of them is in the wave or before it).
    positions = {n: end - canaries for n, end in enumerate(bounds[:-1]) if end > canaries}
    cutoffs = _ranked_rows(session, table, set(positions.values()), per_bucket)
    whens: list[tuple[ColumnElement[bool], int]] = []
    if plan.canary_vins:
        whens.append((t.canary == 1, first_wave))
    for n, position in positions.items():
        spread, vehicle_id = cutoffs[position]
        last_of_wave = tuple_(literal(spread, BigInteger), literal(vehicle_id, BigInteger))
        whens.append((tuple_(t.spread, t.vehicle_id) <= last_of_wave, first_wave + n))
    last = literal(first_wave + len(bounds) - 1)
    return case(*whens, else_=last) if whens else last


def _ranked_rows(
    session: Session, table: Table, positions: set[int], per_bucket: list[tuple[int, int]]
) -> dict[int, tuple[int, int]]:
    """(spread, vehicle id) of the non-canary rows at these 1-based positions in (spread, id)
    order, without sorting them all: `per_bucket` counts the rows per bucket of spread keys
    (ascending), so only the buckets the positions fall in are read, in order."""
    if not positions:
        return {}
    t = table.c
    bucket = t.spread // _BUCKET
    inside: dict[int, dict[int, int]] = {}  # bucket -> {0-based offset in it: position}
    wanted = sorted(positions)
    seen = 0
    for number, count in per_bucket:
        while wanted and wanted[0] <= seen + count:
            position = wanted.pop(0)
            inside.setdefault(number, {})[position - seen - 1] = position
        seen += count
    rows = session.execute(
        select(bucket, t.spread, t.vehicle_id)
        .where(t.canary == 0, bucket.in_(list(inside)))
        .order_by(t.spread, t.vehicle_id)
    )
    found: dict[int, tuple[int, int]] = {}
    offsets: dict[int, int] = {}
    for number, spread, vehicle_id in rows:
        offset = offsets[number] = offsets.get(number, -1) + 1
        if offset in inside[number]:
            found[inside[number][offset]] = (spread, vehicle_id)
    return found


def _considered(
    session: Session, campaign: Campaign, *extra: ColumnElement[bool], bulk: bool = False
) -> Subquery:
    """The campaign's selected vehicles with their targeting reason (`preview.vehicle_query`)."""
    update_ids = service.update_ids_of(session, [campaign.id])[campaign.id]
    updates = targeting.targetable_updates(session, update_ids)
    selection = TargetSelection.model_validate(campaign.selection)
    regions = RegionRestriction.model_validate(campaign.regions)
    plan = preview.make_plan(
        session,
        [targeting.rule_of(u) for u in updates],
        regions=targeting.region_rule(regions),
        known_counters=targeting.known_counters(session),
    )
    condition = and_(selection_condition(selection, session.get_bind().dialect.name), *extra)
    return preview.vehicle_query(session, plan, condition, bulk=bulk).subquery("considered")


def join_newcomers(session: Session, campaign: Campaign, now: datetime) -> int:
    """A dynamic campaign takes in the vehicles that have become eligible since it launched
    (new in the registry, changed software, no longer busy elsewhere): each gets a pending
    deployment in the last wave. A vehicle that had a deployment in it never joins again.
    Returns how many joined; the caller holds the campaign (the engine's claim)."""
    try:
        eligible = _considered(
            session,
            campaign,
            ~exists(
                select(Deployment.id).where(
                    Deployment.campaign_id == campaign.id, Deployment.vehicle_id == Vehicle.id
                )
            ),
        )
    except targeting.UpdateNotTargetable:  # withdrawn meanwhile: it reaches no one new
        return 0
    last = session.scalar(
        select(CampaignWave)
        .where(CampaignWave.campaign_id == campaign.id)
        .order_by(CampaignWave.number.desc())
        .limit(1)
    )
    campaign.joined_at = now
    if last is None:
        return 0
    newcomers = select(eligible.c.vehicle_id, literal(last.number)).where(
        eligible.c.reason == ELIGIBLE
    )
    session.execute(_insert_pending(campaign.id, newcomers, now))
    joined = _per_wave(session, campaign.id, last.number).get(last.number, 0) - last.size
    if joined:
        last.size += joined
        ledger.record_launch(session, campaign.id, {last.number: joined})
        audit.record(
            session, ENGINE, "campaign.join", object_type="campaign",
            object_id=campaign.id, after={"joined": joined, "wave": last.number},
        )  # fmt: skip
    return joined


def _per_wave(session: Session, campaign_id: int, wave: int | None = None) -> dict[int, int]:
    """How many deployments the campaign has per wave (or in one wave)."""
    query = select(Deployment.wave, func.count()).where(Deployment.campaign_id == campaign_id)
    if wave is not None:
        query = query.where(Deployment.wave == wave)
    return {number: count for number, count in session.execute(query.group_by(Deployment.wave))}


def _insert_pending(campaign_id: int, vehicles_and_waves: Select[Any], now: datetime) -> Insert:
    """INSERT … SELECT of a pending deployment per (vehicle id, wave) row selected."""
    stamp = literal(now, Deployment.created_at.type)
    rows = vehicles_and_waves.subquery("placed")
    vehicle_id, wave = rows.c
    return insert(Deployment).from_select(
        ["campaign_id", "vehicle_id", "wave", "state", "attempts", "state_entered_at",
         "created_at", "updated_at"],
        select(
            literal(campaign_id), vehicle_id, wave, literal(DeploymentState.PENDING.value),
            literal(0), stamp, stamp, stamp,
        ),
    )  # fmt: skip


def _guard(campaign_id: int, actual: int, expected: int, margin: float) -> None:
    if abs(actual - expected) > margin * max(expected, 1):
        raise LaunchCountMismatch(
            f"campaign {campaign_id} would reach {actual:,} vehicles, not the {expected:,} "
            f"expected (margin {margin:.0%}); preview it again and launch with that count",
            field="expected_vehicles",
            actual=actual,
            expected=expected,
        )
