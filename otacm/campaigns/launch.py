"""Launching an approved campaign: every eligible vehicle gets a deployment, in its wave.

The eligible vehicles come from the targeting preview's query (the same rules, computed in the
database); they are ranked canary first, then in the campaign's spread order
(`policy.spread_order`, the same ranking `policy.assign_waves` defines), and written with one
INSERT … SELECT. The count guard compares how many rows went in with the count the launcher
expected from the preview; beyond the margin the transaction rolls back and nothing is launched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Subquery,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.orm import Session

from otacm.campaigns import ledger, service
from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.policy import (
    RolloutPolicy,
    WavePlan,
    exact_share,
    spread_order,
)
from otacm.campaigns.schemas import CampaignState, Urgency
from otacm.campaigns.states import DeploymentState
from otacm.db import is_postgresql, utcnow
from otacm.errors import Conflict
from otacm.fleet.models import Vehicle
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
    rollout = RolloutPolicy.model_validate(campaign.rollout)
    eligible = _considered(session, campaign)
    canary_vins = list(rollout.waves.canary_vins)
    is_canary = eligible.c.vin.in_(canary_vins) if canary_vins else literal(False)
    ranked = (
        select(
            eligible.c.vehicle_id,
            (
                func.row_number().over(
                    order_by=(
                        case((is_canary, 0), else_=1),
                        spread_order(campaign.id).expression(eligible.c.vehicle_id),
                        eligible.c.vehicle_id,
                    )
                )
                - 1
            ).label("rank"),
            case((is_canary, 1), else_=0).label("canary"),
        )
        .where(eligible.c.reason == ELIGIBLE)
        .subquery("ranked")
    )
    # One pass: the wave bounds depend on the total, which the window gives every row.
    counted = select(
        ranked.c.vehicle_id,
        ranked.c.rank,
        func.count().over().label("total"),
        func.sum(ranked.c.canary).over().label("canaries"),
    ).subquery("counted")
    postgres = is_postgresql(session.get_bind().dialect)
    first_wave = 0 if rollout.waves.canary_vins else 1
    ends = _bound_expressions(rollout.waves, counted.c.total, counted.c.canaries, postgres)
    wave = case(
        *((counted.c.rank < end, number) for number, end in enumerate(ends, start=first_wave)),
        else_=first_wave + len(ends) - 1,
    )
    session.execute(_insert_pending(campaign.id, select(counted.c.vehicle_id, wave), now))
    # Counted from what was written (SQLite reports no row count for an INSERT that starts
    # with a WITH clause), so the waves, tallies and guard see exactly the rows that went in.
    written = _per_wave(session, campaign.id)
    total = sum(written.values())
    # Checked after writing, in the same transaction: a refusal rolls all of it back.
    _guard(campaign_id, total, expected_vehicles, margin)
    sizes = {number: written.get(number, 0) for number in range(first_wave, first_wave + len(ends))}
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


def _considered(session: Session, campaign: Campaign, *extra: ColumnElement[bool]) -> Subquery:
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
    return preview.vehicle_query(session, plan, condition).subquery("considered")


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


def _bound_expressions(plan: WavePlan, total: Any, canaries: Any, postgres: bool) -> list[Any]:
    """`policy.wave_bounds` as SQL expressions of the total and the canary count."""
    highest = func.greatest if postgres else func.max  # SQLite's max(a, b) is scalar
    reached: Any = canaries if plan.canary_vins else literal(0)
    ends: list[Any] = [canaries] if plan.canary_vins else []
    for step in plan.steps:
        if step.count is not None:
            wanted: Any = case((total < step.count, total), else_=step.count)
        else:
            share = exact_share(step.percent or 0) / 100
            # Rounded up, in integers: (total * n + d - 1) / d.
            wanted = (total * share.numerator + share.denominator - 1) // share.denominator
        reached = highest(reached, wanted)
        ends.append(reached)
    return ends


def _guard(campaign_id: int, actual: int, expected: int, margin: float) -> None:
    if abs(actual - expected) > margin * max(expected, 1):
        raise LaunchCountMismatch(
            f"campaign {campaign_id} would reach {actual:,} vehicles, not the {expected:,} "
            f"expected (margin {margin:.0%}); preview it again and launch with that count",
            field="expected_vehicles",
            actual=actual,
            expected=expected,
        )
