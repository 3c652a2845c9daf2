"""Defining campaigns and the four-eyes approval: draft → pending_approval → approved.

A campaign manager defines a draft, changes it as often as needed and submits it; another
campaign manager approves or rejects it with a comment (with `OTACM_CAMPAIGN_FOUR_EYES=false`
a single operator may approve their own, for a demo). A rejected campaign goes back to draft on
its next edit. Services only flush; the caller's unit of work commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns import ledger, progress
from otacm.campaigns.models import Campaign, CampaignUpdate, CampaignWave
from otacm.campaigns.policy import RolloutPolicy
from otacm.campaigns.schemas import (
    SAFETY_CATEGORIES,
    CampaignCategory,
    CampaignCreate,
    CampaignFields,
    CampaignOut,
    CampaignState,
    Urgency,
    UserNotice,
    WaveOut,
)
from otacm.db import is_postgresql, utcnow
from otacm.errors import Conflict, NotFound, ValidationFailed
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.security.auth import Forbidden
from otacm.targeting.schemas import RegionRestriction
from otacm.targeting.selection import TargetSelection
from otacm.targeting.service import targetable_updates

EDITABLE = frozenset({CampaignState.DRAFT, CampaignState.REJECTED})
# States of campaigns that are not over: names are unique among them.
ACTIVE = frozenset(
    {
        CampaignState.DRAFT,
        CampaignState.PENDING_APPROVAL,
        CampaignState.APPROVED,
        CampaignState.SCHEDULED,
        CampaignState.RUNNING,
        CampaignState.PAUSED,
    }
)
# Allowed moves of the approval workflow.
TRANSITIONS: dict[str, frozenset[CampaignState]] = {
    "submit": frozenset({CampaignState.DRAFT, CampaignState.REJECTED}),
    "approve": frozenset({CampaignState.PENDING_APPROVAL}),
    "reject": frozenset({CampaignState.PENDING_APPROVAL}),
}


class CampaignNotFound(NotFound):
    code = "campaign_not_found"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class CampaignStateConflict(Conflict):
    code = "campaign_state_conflict"


class FourEyesRequired(Forbidden):
    code = "four_eyes_required"


def get(session: Session, campaign_id: int, *, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.id == campaign_id)
    if lock and is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    campaign = session.scalar(query)
    if campaign is None:
        raise CampaignNotFound(f"there is no campaign {campaign_id}", campaign_id=campaign_id)
    return campaign


def update_ids_of(session: Session, campaign_ids: Sequence[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {i: [] for i in campaign_ids}
    query = (
        select(CampaignUpdate.campaign_id, CampaignUpdate.update_id)
        .where(CampaignUpdate.campaign_id.in_(campaign_ids))
        .order_by(CampaignUpdate.campaign_id, CampaignUpdate.position)
    )
    for campaign_id, update_id in session.execute(query):
        found[campaign_id].append(update_id)
    return found


def _check_name(session: Session, campaign: Campaign) -> None:
    clash = session.scalar(
        select(Campaign.id).where(
            Campaign.name == campaign.name,
            Campaign.state.in_([s.value for s in ACTIVE]),
            Campaign.id != (campaign.id or 0),
        )
    )
    if clash is not None:
        raise Conflict(
            f"campaign {clash} is already called {campaign.name!r}", field="name", campaign_id=clash
        )


def _check_rules(campaign: Campaign, now: datetime) -> None:
    if campaign.urgency == Urgency.SCHEDULED and campaign.starts_at is None:
        raise ValidationFailed("a scheduled campaign needs starts_at", field="starts_at")
    if campaign.urgency == Urgency.IMMEDIATE and campaign.starts_at is not None:
        raise ValidationFailed(
            "an immediate campaign starts when launched; leave starts_at empty", field="starts_at"
        )
    if campaign.ends_at is not None and campaign.ends_at <= now:
        raise ValidationFailed("ends_at is in the past", field="ends_at")
    if campaign.starts_at and campaign.ends_at and campaign.ends_at <= campaign.starts_at:
        raise ValidationFailed("ends_at must be after starts_at", field="ends_at")
    if not campaign.consent_required and not (
        campaign.category in SAFETY_CATEGORIES and campaign.urgency == Urgency.IMMEDIATE
    ):
        raise ValidationFailed(
            "only immediate security patches and recalls may skip the owner's consent",
            field="consent_required",
        )


def _set_updates(session: Session, campaign: Campaign, update_ids: list[int]) -> None:
    updates = targetable_updates(session, update_ids)
    for link in session.scalars(
        select(CampaignUpdate).where(CampaignUpdate.campaign_id == campaign.id)
    ):
        session.delete(link)
    session.flush()
    for position, update in enumerate(updates):
        session.add(CampaignUpdate(campaign_id=campaign.id, update_id=update.id, position=position))


def _columns(fields: CampaignFields) -> dict[str, Any]:
    sent = fields.model_dump(exclude_unset=True, mode="json")
    sent.pop("update_ids", None)
    return sent


def _snapshot(campaign: Campaign) -> dict[str, Any]:
    return {"name": campaign.name, "state": campaign.state, "priority": campaign.priority}


def create(session: Session, actor: Actor, data: CampaignCreate) -> Campaign:
    now = utcnow()
    values = {
        "priority": 500,
        "selection": TargetSelection().model_dump(mode="json"),
        "regions": RegionRestriction().model_dump(mode="json"),
        "consent_required": True,
        "rollout": RolloutPolicy().model_dump(mode="json"),
        **_columns(data),
    }
    for name in ("starts_at", "ends_at"):
        values[name] = getattr(data, name)
    campaign = Campaign(
        state=CampaignState.DRAFT.value,
        kind="normal",
        created_at=now,
        created_by=actor.name,
        updated_at=now,
        **values,
    )
    _check_rules(campaign, now)
    _check_name(session, campaign)
    session.add(campaign)
    session.flush()
    _set_updates(session, campaign, data.update_ids)
    audit.record(
        session, actor, "campaign.create", object_type="campaign", object_id=campaign.id,
        after={**_snapshot(campaign), "update_ids": data.update_ids},
    )  # fmt: skip
    session.flush()
    return campaign


def edit(session: Session, actor: Actor, campaign_id: int, changes: CampaignFields) -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    if campaign.state not in EDITABLE:
        raise CampaignStateConflict(
            f"campaign {campaign_id} is {campaign.state}; only drafts and rejected campaigns "
            "can change",
            state=campaign.state,
        )
    before = _snapshot(campaign)
    now = utcnow()
    for name, value in _columns(changes).items():
        if value is None and name in ("name", "category", "urgency", "priority", "user_notice"):
            raise ValidationFailed(f"{name} cannot be removed", field=name)
        setattr(campaign, name, getattr(changes, name) if name.endswith("_at") else value)
    campaign.state = CampaignState.DRAFT.value
    campaign.updated_at = now
    _check_rules(campaign, now)
    _check_name(session, campaign)
    if changes.update_ids is not None:
        _set_updates(session, campaign, changes.update_ids)
    audit.record(
        session, actor, "campaign.edit", object_type="campaign", object_id=campaign.id,
        before=before, after={**_snapshot(campaign), "fields": sorted(changes.model_fields_set)},
    )  # fmt: skip
    session.flush()
    return campaign


def _move(campaign: Campaign, action: str) -> None:
    if CampaignState(campaign.state) not in TRANSITIONS[action]:
        allowed = ", ".join(sorted(TRANSITIONS[action]))
        raise CampaignStateConflict(
            f"cannot {action} campaign {campaign.id}: it is {campaign.state} (needs {allowed})",
            state=campaign.state,
        )


def submit(session: Session, actor: Actor, campaign_id: int) -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    _move(campaign, "submit")
    # The updates may have been withdrawn since the draft was made.
    targetable_updates(session, update_ids_of(session, [campaign.id])[campaign.id])
    _check_rules(campaign, utcnow())
    campaign.state = CampaignState.PENDING_APPROVAL.value
    campaign.submitted_at = campaign.updated_at = utcnow()
    campaign.submitted_by = actor.name
    campaign.decided_at = campaign.decided_by = campaign.decision_comment = None
    audit.record(
        session, actor, "campaign.submit", object_type="campaign", object_id=campaign.id,
        after=_snapshot(campaign),
    )  # fmt: skip
    session.flush()
    return campaign


def decide(
    session: Session,
    actor: Actor,
    campaign_id: int,
    *,
    approve: bool,
    comment: str,
    four_eyes: bool,
) -> Campaign:
    """Approve or reject a submitted campaign. With the four-eyes rule, whoever created or
    submitted it may not decide it."""
    campaign = get(session, campaign_id, lock=True)
    _move(campaign, "approve" if approve else "reject")
    if four_eyes and actor.name in (campaign.created_by, campaign.submitted_by):
        raise FourEyesRequired(
            f"{actor.name} created or submitted campaign {campaign_id}; another campaign "
            "manager must decide it",
        )
    campaign.state = (CampaignState.APPROVED if approve else CampaignState.REJECTED).value
    campaign.decided_at = campaign.updated_at = utcnow()
    campaign.decided_by = actor.name
    campaign.decision_comment = comment or None
    audit.record(
        session, actor, "campaign.approve" if approve else "campaign.reject",
        object_type="campaign", object_id=campaign.id, after=_snapshot(campaign),
        detail=comment or None,
    )  # fmt: skip
    session.flush()
    return campaign


def detail(session: Session, campaign: Campaign, *, figures: bool = True) -> CampaignOut:
    """The campaign as the API and the console show it: with `figures`, once launched, its
    deployments per state, wave and failure code from the ledger's tallies, and its progress."""
    body = out(campaign, update_ids_of(session, [campaign.id])[campaign.id])
    if not figures or campaign.launched_at is None:
        return body
    per_wave: dict[int, dict[str, int]] = {}
    for (wave, state, code), count in ledger.counts(session, campaign.id).items():
        in_wave = per_wave.setdefault(wave, {})
        in_wave[state] = in_wave.get(state, 0) + count
        body.states[state] = body.states.get(state, 0) + count
        if code is not None:
            body.failure_codes[code] = body.failure_codes.get(code, 0) + count
    body.deployments = sum(body.states.values())
    body.progress = progress.summary(
        campaign, body.states, utcnow(), retrying=ledger.retrying(session, campaign.id)
    )
    body.waves = [
        WaveOut(
            number=w.number,
            size=w.size,
            opened_at=w.opened_at,
            completed_at=w.completed_at,
            states=per_wave.get(w.number, {}),
        )
        for w in session.scalars(
            select(CampaignWave)
            .where(CampaignWave.campaign_id == campaign.id)
            .order_by(CampaignWave.number)
        )
    ]
    return body


def out(campaign: Campaign, update_ids: list[int]) -> CampaignOut:
    return CampaignOut(
        id=campaign.id,
        name=campaign.name,
        state=CampaignState(campaign.state),
        category=CampaignCategory(campaign.category),
        urgency=Urgency(campaign.urgency),
        starts_at=campaign.starts_at,
        ends_at=campaign.ends_at,
        priority=campaign.priority,
        update_ids=update_ids,
        selection=TargetSelection.model_validate(campaign.selection),
        regions=RegionRestriction.model_validate(campaign.regions),
        consent_required=campaign.consent_required,
        user_notice={k: UserNotice.model_validate(v) for k, v in campaign.user_notice.items()},
        rollout=RolloutPolicy.model_validate(campaign.rollout),
        kind=campaign.kind,
        parent_id=campaign.parent_id,
        created_at=campaign.created_at,
        created_by=campaign.created_by,
        updated_at=campaign.updated_at,
        submitted_at=campaign.submitted_at,
        submitted_by=campaign.submitted_by,
        decided_at=campaign.decided_at,
        decided_by=campaign.decided_by,
        decision_comment=campaign.decision_comment,
        launched_at=campaign.launched_at,
        launched_by=campaign.launched_by,
    )
