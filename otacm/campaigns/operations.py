"""Operating a launched campaign: pause, resume, open the next wave now, cancel.

Each is a move of the campaign's state (`ALLOWED` below); cancelling also moves deployments,
through the state machine's `cancel` event applied in bulk: those not yet taken up are
cancelled, those the vehicle already accepted finish and report.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns import ledger, service
from otacm.campaigns.ledger import Source
from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.schemas import CampaignState
from otacm.campaigns.states import DeploymentEvent, DeploymentState, moved_by
from otacm.db import utcnow
from otacm.security import audit
from otacm.security.audit import Actor

_S = CampaignState
ALLOWED: dict[str, frozenset[CampaignState]] = {
    "pause": frozenset({_S.RUNNING}),
    "resume": frozenset({_S.PAUSED}),
    "next_wave": frozenset({_S.RUNNING, _S.PAUSED}),
    "cancel": frozenset({_S.APPROVED, _S.SCHEDULED, _S.RUNNING, _S.PAUSED}),
}
# What `cancel` moves (see states.TRANSITIONS): not yet taken up by the vehicle.
CANCELLABLE = moved_by(DeploymentEvent.CANCEL)


def _campaign(session: Session, campaign_id: int, operation: str) -> Campaign:
    campaign = service.get(session, campaign_id, lock=True)
    if CampaignState(campaign.state) not in ALLOWED[operation]:
        allowed = ", ".join(sorted(ALLOWED[operation]))
        raise service.CampaignStateConflict(
            f"cannot {operation.replace('_', ' ')} campaign {campaign_id}: it is "
            f"{campaign.state} (needs {allowed})",
            state=campaign.state,
        )
    return campaign


def _open_wave(session: Session, campaign: Campaign) -> CampaignWave | None:
    return session.scalar(
        select(CampaignWave)
        .where(
            CampaignWave.campaign_id == campaign.id,
            CampaignWave.opened_at.is_not(None),
            CampaignWave.completed_at.is_(None),
        )
        .order_by(CampaignWave.number)
        .limit(1)
    )


def _record(session: Session, actor: Actor, campaign: Campaign, action: str, comment: str) -> None:
    audit.record(
        session, actor, action, object_type="campaign", object_id=campaign.id,
        after={"state": campaign.state}, detail=comment or None,
    )  # fmt: skip


def pause(session: Session, actor: Actor, campaign_id: int, comment: str = "") -> Campaign:
    """Stop opening waves; deployments under way go on (vehicles mid-install finish)."""
    campaign = _campaign(session, campaign_id, "pause")
    campaign.state = CampaignState.PAUSED.value
    campaign.updated_at = utcnow()
    _record(session, actor, campaign, "campaign.pause", comment)
    session.flush()
    return campaign


def resume(session: Session, actor: Actor, campaign_id: int, comment: str = "") -> Campaign:
    """Go on. The open wave's counts now are noted: failures up to here were seen by whoever
    resumed, so only new ones count against the failure threshold."""
    campaign = _campaign(session, campaign_id, "resume")
    wave = _open_wave(session, campaign)
    if wave is not None:
        wave.resumed_with = ledger.wave_counts(session, campaign.id, wave.number)
    campaign.state = CampaignState.RUNNING.value
    campaign.updated_at = utcnow()
    campaign.wake_at = None  # the engine looks at it in its next tick
    _record(session, actor, campaign, "campaign.resume", comment)
    session.flush()
    return campaign


def next_wave(session: Session, actor: Actor, campaign_id: int, comment: str = "") -> Campaign:
    """Close the open wave and open the next one now, whatever its verdict."""
    campaign = _campaign(session, campaign_id, "next_wave")
    now = utcnow()
    waves = list(
        session.scalars(
            select(CampaignWave)
            .where(CampaignWave.campaign_id == campaign.id)
            .order_by(CampaignWave.number)
        )
    )
    following = next((w for w in waves if w.opened_at is None), None)
    if following is None:
        raise service.CampaignStateConflict(
            f"campaign {campaign_id} has opened its last wave already", state=campaign.state
        )
    for wave in waves:
        if wave.opened_at is not None and wave.completed_at is None:
            wave.completed_at = now
    following.opened_at = now
    campaign.updated_at = now
    campaign.wake_at = None
    _record(session, actor, campaign, "campaign.wave.open", comment or f"wave {following.number}")
    session.flush()
    return campaign


def cancel(
    session: Session, actor: Actor, campaign_id: int, comment: str = "", now: datetime | None = None
) -> tuple[Campaign, int]:
    """End the campaign: deployments not yet taken up are cancelled (how many is returned);
    vehicles that accepted finish and report."""
    campaign = _campaign(session, campaign_id, "cancel")
    now = now or utcnow()
    cancelled = ledger.move_many(
        session,
        campaign.id,
        [Deployment.state.in_([s.value for s in CANCELLABLE])],
        DeploymentEvent.CANCEL,
        {"state": DeploymentState.CANCELLED.value, "state_entered_at": now, "updated_at": now},
        now,
        Source.OPERATOR,
    )
    campaign.state = CampaignState.CANCELLED.value
    campaign.finished_at = campaign.updated_at = now
    _record(session, actor, campaign, "campaign.cancel", comment)
    session.flush()
    return campaign, cancelled
