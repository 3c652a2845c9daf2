"""The rollout engine: one tick starts due campaigns and moves every running one forward.

Per running campaign, in its own transaction: the end time (unfinished offers expire, the
campaign completes), timeouts (deployments stuck in flight become `timed_out`), retries (a
retryable failure is given its next attempt's time, and when it comes goes back to `pending`),
a dynamic campaign's newcomers (every `JOIN_EVERY`, into the last wave, which then stays open
until the end time or a cancel), then the open wave's verdict (`policy.wave_verdict`): open the
next wave, pause on failures, complete. Every move of a deployment goes through the ledger.

Several engines (every `otacm serve`, any `otacm worker`) may tick against one PostgreSQL: a
campaign is claimed with `SELECT … FOR UPDATE SKIP LOCKED`, so each step is done by exactly one
of them, and every step is written so that doing it again changes nothing. On SQLite the write
transaction serialises them. A tick reads only running campaigns, their tallies (`ledger.py`)
and indexed lookups of deployments due for a timeout or a retry, so its cost does not grow with
idle vehicles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from otacm.alerts.service import AlertKind, raise_alert
from otacm.campaigns import launch, ledger
from otacm.campaigns.launch import ENGINE
from otacm.campaigns.ledger import Source
from otacm.campaigns.models import Campaign, CampaignWave, Deployment, DeploymentTally
from otacm.campaigns.policy import (
    Action,
    RetryPolicy,
    RolloutPolicy,
    WaveCounts,
    next_retry_at,
    wave_verdict,
)
from otacm.campaigns.schemas import CampaignState
from otacm.campaigns.states import (
    COMMITTED,
    RETRYABLE_FAILURES,
    DeploymentEvent,
    DeploymentState,
    moved_by,
)
from otacm.config import Settings
from otacm.db import is_postgresql, unit_of_work, utcnow
from otacm.periodic import every
from otacm.security import audit

log = logging.getLogger("otacm.engine")
# Campaigns a tick looks at.
TICKED = (CampaignState.RUNNING.value, CampaignState.PAUSED.value)
# Deployments of one campaign timing out in one tick that make an alert.
TIMEOUT_SPIKE = 5
# A running campaign is stepped at least this often, whatever its bookmarks say: the safety
# net for a move the tally bookmark missed (on PostgreSQL ids can commit out of order).
LOOK_AGAIN = timedelta(minutes=1)
# How often a dynamic campaign looks for newly eligible vehicles (a targeting query per look).
JOIN_EVERY = timedelta(minutes=10)
# Offers not yet taken up when a campaign's end time comes: they expire.
EXPIRABLE = moved_by(DeploymentEvent.EXPIRE)


@dataclass
class TickReport:
    started: list[int] = field(default_factory=list)
    opened: list[tuple[int, int]] = field(default_factory=list)
    paused: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    timed_out: int = 0
    retried: int = 0
    expired: int = 0
    joined: int = 0
    # Running or paused campaigns with nothing to do, not stepped.
    passed_over: int = 0
    # Campaigns whose step raised (logged; the others went on).
    failed: list[int] = field(default_factory=list)


def _lock_rows(session: Session, query: Select[Any]) -> Select[Any]:
    if is_postgresql(session.get_bind().dialect):
        return query.with_for_update()
    return query


def _claim(session: Session, query: Select[Any]) -> Select[Any]:
    if is_postgresql(session.get_bind().dialect):
        return query.with_for_update(skip_locked=True)
    return query


def tick(
    factory: sessionmaker[Session],
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
) -> TickReport:
    """One round of the engine; `factory` should make write sessions (BEGIN IMMEDIATE).
    `settings` decide where alerts go (the process's `OTACM_*` when not given)."""
    now = now or utcnow()
    report = TickReport()
    with unit_of_work(factory) as session:
        due = select(Campaign).where(
            Campaign.state == CampaignState.SCHEDULED.value, Campaign.starts_at <= now
        )
        for campaign in session.scalars(_claim(session, due)):
            campaign.state = CampaignState.RUNNING.value
            campaign.updated_at = now
            report.started.append(campaign.id)
            audit.record(
                session, ENGINE, "campaign.start", object_type="campaign",
                object_id=campaign.id, after={"state": campaign.state},
            )  # fmt: skip
        # Paused campaigns too: their end time still ends them.
        newest = (
            select(func.max(DeploymentTally.id))
            .where(DeploymentTally.campaign_id == Campaign.id)
            .scalar_subquery()
        )
        looked_at = session.execute(
            select(
                Campaign.id,
                Campaign.state,
                Campaign.ends_at,
                Campaign.wake_at,
                Campaign.tallies_seen,
                newest.label("newest"),
            ).where(Campaign.state.in_(TICKED))
        ).all()
    running = [row.id for row in looked_at if _due(row, now)]
    report.passed_over = len(looked_at) - len(running)
    for campaign_id in running:
        try:
            _step_claimed(factory, campaign_id, now, report, settings)
        except Exception:  # one campaign's failure must not stall the others
            log.exception("the rollout engine could not step campaign %s", campaign_id)
            report.failed.append(campaign_id)
    return report


def _step_claimed(
    factory: sessionmaker[Session],
    campaign_id: int,
    now: datetime,
    report: TickReport,
    settings: Settings | None,
) -> None:
    with unit_of_work(factory) as session:
        claimed = session.scalar(
            _claim(
                session,
                select(Campaign).where(Campaign.id == campaign_id, Campaign.state.in_(TICKED)),
            )
        )
        if claimed is None:  # another engine has it, or it changed meanwhile
            return
        seen = session.scalar(
            select(func.max(DeploymentTally.id)).where(DeploymentTally.campaign_id == campaign_id)
        )
        _step(session, claimed, now, report, settings)
        claimed.tallies_seen = seen
        claimed.wake_at = _next_wake(session, claimed, now)


def _due(row: Any, now: datetime) -> bool:
    """Whether a campaign has anything to do: its end time came, or (running) a deployment
    moved since the engine last looked, something falls due, or it has not been looked at."""
    if row.ends_at is not None and row.ends_at <= now:
        return True
    if row.state != CampaignState.RUNNING.value:
        return False
    if row.wake_at is None or row.wake_at <= now:
        return True
    return row.newest is not None and (row.tallies_seen is None or row.newest > row.tallies_seen)


def _next_wake(session: Session, campaign: Campaign, now: datetime) -> datetime | None:
    """The earliest time the campaign has something to do without any deployment moving: a
    timeout, a scheduled retry, the end of the open wave's soak time, the end time, the next
    dynamic join; at the latest `LOOK_AGAIN` from now."""
    if campaign.state not in TICKED:
        return None
    rollout = RolloutPolicy.model_validate(campaign.rollout)
    times = [now + LOOK_AGAIN]
    if campaign.ends_at is not None:
        times.append(campaign.ends_at)
    for states, limit in _clocks(rollout):
        for state in states:
            # One index probe each (campaign, state, state_entered_at).
            oldest = session.scalar(
                select(func.min(Deployment.state_entered_at)).where(
                    Deployment.campaign_id == campaign.id, Deployment.state == state
                )
            )
            if oldest is not None:
                times.append(oldest + limit)
    retry = session.scalar(
        select(func.min(Deployment.next_attempt_at)).where(
            Deployment.campaign_id == campaign.id,
            Deployment.state.in_([s.value for s in RETRYABLE_FAILURES]),
        )
    )
    if retry is not None:
        times.append(retry)
    soaking = session.scalar(
        select(func.min(CampaignWave.threshold_met_at)).where(
            CampaignWave.campaign_id == campaign.id,
            CampaignWave.opened_at.is_not(None),
            CampaignWave.completed_at.is_(None),
        )
    )
    if soaking is not None:
        times.append(soaking + rollout.waves.soak_time)
    if rollout.dynamic and campaign.joined_at is not None:
        times.append(campaign.joined_at + JOIN_EVERY)
    return min(times)


def _step(
    session: Session,
    campaign: Campaign,
    now: datetime,
    report: TickReport,
    settings: Settings | None,
) -> None:
    rollout = RolloutPolicy.model_validate(campaign.rollout)
    if campaign.ends_at is not None and campaign.ends_at <= now:
        count = ledger.move_many(
            session,
            campaign.id,
            [Deployment.state.in_([s.value for s in EXPIRABLE])],
            DeploymentEvent.EXPIRE,
            {"state": DeploymentState.EXPIRED.value, "state_entered_at": now, "updated_at": now},
            now,
            Source.ENGINE,
        )
        report.expired += count
        _finish(session, campaign, now, report, settings, reason="end time reached")
        if count:
            raise_alert(
                session, AlertKind.END_TIME_REACHED,
                f"campaign {campaign.id} ({campaign.name}) reached its end time with {count:,} "
                "vehicles not updated", campaign_id=campaign.id, details={"expired": count},
                now=now, settings=settings,
            )  # fmt: skip
        return
    if campaign.state != CampaignState.RUNNING.value:
        return  # paused: nothing moves until an operator resumes it
    timed_out = _time_out(session, campaign, rollout, now)
    report.timed_out += timed_out
    if timed_out >= TIMEOUT_SPIKE:
        raise_alert(
            session, AlertKind.TIMEOUT_SPIKE,
            f"{timed_out:,} deployments of campaign {campaign.id} ({campaign.name}) timed out "
            "at once", campaign_id=campaign.id, details={"timed_out": timed_out}, now=now,
            settings=settings,
        )  # fmt: skip
    report.retried += _retry(session, campaign, rollout, now)
    if rollout.dynamic and (campaign.joined_at is None or campaign.joined_at <= now - JOIN_EVERY):
        report.joined += launch.join_newcomers(session, campaign, now)
    ledger.compact(session, campaign.id)
    waves = list(
        session.scalars(
            select(CampaignWave)
            .where(CampaignWave.campaign_id == campaign.id)
            .order_by(CampaignWave.number)
        )
    )
    open_wave = next((w for w in waves if w.opened_at and not w.completed_at), None)
    if open_wave is None:
        waiting = next((w for w in waves if not w.completed_at), None)
        if waiting is None:
            if not rollout.dynamic:
                _finish(session, campaign, now, report, settings, reason="every wave completed")
            return
        waiting.opened_at = now
        report.opened.append((campaign.id, waiting.number))
        _record(session, campaign, "campaign.wave.open", wave=waiting.number)
        return
    by_state = {
        DeploymentState(state): count
        for state, count in ledger.wave_counts(session, campaign.id, open_wave.number).items()
    }
    retrying = ledger.retrying(session, campaign.id, open_wave.number)
    index = waves.index(open_wave)
    verdict = wave_verdict(
        WaveCounts.from_states(by_state, retrying=retrying),
        rollout.waves,
        wave=index,
        now=now,
        threshold_met_at=open_wave.threshold_met_at,
        resumed_with=(
            WaveCounts.from_states(
                {DeploymentState(k): v for k, v in open_wave.resumed_with.items()}
            )
            if open_wave.resumed_with
            else None
        ),
    )
    if verdict.qualified and open_wave.threshold_met_at is None:
        open_wave.threshold_met_at = now
    if verdict.action is Action.ADVANCE:
        open_wave.completed_at = now
        following = waves[index + 1]
        following.opened_at = now
        report.opened.append((campaign.id, following.number))
        _record(session, campaign, "campaign.wave.open", wave=following.number)
    elif verdict.action is Action.COMPLETE and rollout.dynamic:
        pass  # the last wave stays open for newcomers; the end time or a cancel ends it
    elif verdict.action is Action.COMPLETE:
        open_wave.completed_at = now
        _finish(session, campaign, now, report, settings, reason="every wave completed")
    elif verdict.action is Action.PAUSE:
        campaign.state = CampaignState.PAUSED.value
        campaign.updated_at = now
        report.paused.append(campaign.id)
        _record(
            session, campaign, "campaign.pause", wave=open_wave.number, reason=verdict.reason.value
        )
        raise_alert(
            session, AlertKind.FAILURE_THRESHOLD,
            f"campaign {campaign.id} ({campaign.name}) paused in wave {open_wave.number}: "
            f"{verdict.reason.value.replace('_', ' ')}", campaign_id=campaign.id,
            details={"wave": open_wave.number, "states": {k.value: v for k, v in by_state.items()}},
            now=now, settings=settings,
        )  # fmt: skip


def _retry(session: Session, campaign: Campaign, rollout: RolloutPolicy, now: datetime) -> int:
    """Failures worth another attempt get one: first a time (`policy.next_retry_at`, once per
    failure), then, when it has come, back to `pending` (the state machine's `retry`)."""
    policy = rollout.retries
    failed_states = [s.value for s in RETRYABLE_FAILURES]
    unscheduled = select(Deployment).where(
        Deployment.campaign_id == campaign.id,
        Deployment.state.in_(failed_states),
        Deployment.next_attempt_at.is_(None),
        worth_a_retry(policy),
    )
    # Locked: a vehicle's late report on one of them waits, rather than losing its move.
    for deployment in session.scalars(_lock_rows(session, unscheduled)):
        deployment.next_attempt_at = next_retry_at(
            deployment.attempts + 1,
            deployment.state_entered_at,
            policy,
            deployment.failure_code or "",
            key=deployment.id,
        )
    session.flush()
    return ledger.move_many(
        session,
        campaign.id,
        [Deployment.state.in_(failed_states), Deployment.next_attempt_at <= now],
        DeploymentEvent.RETRY,
        {
            "state": DeploymentState.PENDING.value,
            "attempts": Deployment.attempts + 1,
            "next_attempt_at": None,
            "failure_code": None,
            "failure_detail": None,
            "state_entered_at": now,
            "updated_at": now,
        },
        now,
        Source.ENGINE,
    )


def _clocks(rollout: RolloutPolicy) -> list[tuple[list[str], timedelta]]:
    """The states a timeout clock runs in, with how long it runs."""
    clocks = [([s.value for s in COMMITTED], rollout.timeouts.in_progress)]
    if rollout.timeouts.offered is not None:
        clocks.append(([DeploymentState.OFFERED.value], rollout.timeouts.offered))
    return clocks


def worth_a_retry(policy: RetryPolicy) -> ColumnElement[bool]:
    """A failed deployment the retry policy gives another attempt (by attempts and code)."""
    return and_(
        Deployment.attempts + 1 < policy.max_attempts,
        func.lower(func.coalesce(Deployment.failure_code, "")).in_(list(policy.retry_on)),
    )


def _time_out(session: Session, campaign: Campaign, rollout: RolloutPolicy, now: datetime) -> int:
    """In-flight deployments past their timeout become `timed_out`, in one statement per
    clock (the state machine's `timeout` event, applied in bulk)."""
    total = 0
    for states, limit in _clocks(rollout):
        total += ledger.move_many(
            session,
            campaign.id,
            [Deployment.state.in_(states), Deployment.state_entered_at < now - limit],
            DeploymentEvent.TIMEOUT,
            {
                "state": DeploymentState.TIMED_OUT.value,
                "failure_code": "timed_out",
                "state_entered_at": now,
                "updated_at": now,
            },
            now,
            Source.ENGINE,
        )
    return total


def _finish(
    session: Session,
    campaign: Campaign,
    now: datetime,
    report: TickReport,
    settings: Settings | None,
    *,
    reason: str,
) -> None:
    campaign.state = CampaignState.COMPLETED.value
    campaign.finished_at = campaign.updated_at = now
    report.completed.append(campaign.id)
    _record(session, campaign, "campaign.complete", reason=reason)
    raise_alert(
        session, AlertKind.CAMPAIGN_FINISHED,
        f"campaign {campaign.id} ({campaign.name}) completed: {reason}",
        campaign_id=campaign.id, now=now, settings=settings,
    )  # fmt: skip


def _record(session: Session, campaign: Campaign, action: str, **after: object) -> None:
    audit.record(
        session, ENGINE, action, object_type="campaign", object_id=campaign.id,
        after={"state": campaign.state, **after},
    )  # fmt: skip


async def run_periodically(
    factory: sessionmaker[Session], interval: float, settings: Settings | None = None
) -> None:
    """The engine inside `otacm serve` (and `otacm worker`): a tick every `interval` seconds;
    a failing tick is logged and the next one runs."""
    await every(interval, partial(tick, factory, settings=settings), name="rollout engine tick")
