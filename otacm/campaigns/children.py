"""Child campaigns of a launched campaign: `retry-failed` and `rollback`.

Both create a new campaign as a draft (`kind` retry or rollback, `parent_id` the campaign) with
a fixed VIN list and the parent's category, priority, regions, consent rule, notice and
rollout policy. It is then reviewed, submitted, approved and launched like any campaign: a
second attempt reaches vehicles only with the same four-eyes approval as the first.

- `retry_failed`: the vehicles whose deployment failed, timed out or rolled back (optionally
  only those with one failure code) and is not waiting for an automatic retry; the same
  updates.
- `rollback`: the vehicles whose deployment succeeded, taken back to each update's
  `rollback_version`. Vehicles refuse software with a lower release counter than they run
  (Uptane's rollback protection), so the way back is a released update of that version
  *released again* with a higher counter than the update it replaces; without one the
  rollback is refused, naming the update and the version to release.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from otacm.campaigns import service
from otacm.campaigns.engine import worth_a_retry
from otacm.campaigns.models import Campaign, Deployment
from otacm.campaigns.policy import RolloutPolicy
from otacm.campaigns.schemas import CampaignCreate, CampaignState, Urgency
from otacm.campaigns.states import RETRYABLE_FAILURES, DeploymentState
from otacm.errors import Conflict
from otacm.fleet.models import Vehicle
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.targeting.selection import TargetSelection
from otacm.updates import versions
from otacm.updates.models import SoftwareUpdate
from otacm.updates.schemas import UpdateState

# The parent's states a deployment can still be retried automatically in.
_LIVE = {CampaignState.RUNNING.value, CampaignState.PAUSED.value}


class NothingToDo(Conflict):
    code = "no_vehicles"


class RollbackTargetMissing(Conflict):
    code = "rollback_target_missing"


def _launched(session: Session, campaign_id: int) -> Campaign:
    parent = service.get(session, campaign_id, lock=True)
    if parent.launched_at is None:
        raise service.CampaignStateConflict(
            f"campaign {campaign_id} is {parent.state}; only a launched campaign has "
            "deployments to retry or roll back",
            state=parent.state,
        )
    return parent


def _child_name(session: Session, parent: Campaign, kind: str) -> str:
    siblings = session.scalar(
        select(func.count()).where(Campaign.parent_id == parent.id, Campaign.kind == kind)
    )
    suffix = f" ({kind} {int(siblings or 0) + 1})"
    return parent.name[: 200 - len(suffix)] + suffix


def _create_child(
    session: Session,
    actor: Actor,
    parent: Campaign,
    *,
    kind: str,
    update_ids: list[int],
    vins: list[str],
    detail: dict[str, object],
    comment: str,
) -> Campaign:
    data = CampaignCreate.model_validate(
        {
            "name": _child_name(session, parent, kind),
            "category": parent.category,
            "urgency": Urgency.IMMEDIATE.value,
            "priority": parent.priority,
            "update_ids": update_ids,
            "selection": TargetSelection(vins=vins).model_dump(mode="json"),
            "regions": parent.regions,
            "consent_required": parent.consent_required,
            "user_notice": parent.user_notice,
            "rollout": parent.rollout,
        }
    )
    child = service.create(session, actor, data)
    child.kind = kind
    child.parent_id = parent.id
    child.expected_vehicles = len(vins)
    audit.record(
        session, actor, f"campaign.{kind}", object_type="campaign", object_id=parent.id,
        after={"child_id": child.id, "vehicles": len(vins), **detail}, detail=comment or None,
    )  # fmt: skip
    session.flush()
    return child


def _vins(session: Session, parent: Campaign, *conditions: ColumnElement[bool]) -> list[str]:
    return list(
        session.scalars(
            select(Vehicle.vin)
            .join(Deployment, Deployment.vehicle_id == Vehicle.id)
            .where(Deployment.campaign_id == parent.id, *conditions)
            .order_by(Vehicle.vin)
        )
    )


def retry_failed(
    session: Session,
    actor: Actor,
    campaign_id: int,
    *,
    failure_code: str | None = None,
    comment: str = "",
) -> Campaign:
    """A draft child campaign for the vehicles whose deployment failed for good."""
    parent = _launched(session, campaign_id)
    conditions: list[ColumnElement[bool]] = [
        Deployment.state.in_([s.value for s in RETRYABLE_FAILURES])
    ]
    if parent.state in _LIVE:  # the parent's engine still retries these itself
        policy = RolloutPolicy.model_validate(parent.rollout).retries
        conditions.append(Deployment.next_attempt_at.is_(None))
        conditions.append(~worth_a_retry(policy))
    if failure_code:
        conditions.append(func.lower(Deployment.failure_code) == failure_code.strip().lower())
    vins = _vins(session, parent, *conditions)
    if not vins:
        which = f" with failure code {failure_code!r}" if failure_code else ""
        extra = {"field": "failure_code"} if failure_code else {}
        raise NothingToDo(
            f"campaign {campaign_id} has no failed deployments{which} to retry", **extra
        )
    update_ids = service.update_ids_of(session, [parent.id])[parent.id]
    return _create_child(
        session, actor, parent, kind="retry", update_ids=update_ids, vins=vins,
        detail={"failure_code": failure_code}, comment=comment,
    )  # fmt: skip


def rollback_target(session: Session, update: SoftwareUpdate) -> SoftwareUpdate:
    """The released update that takes an ECU from `update` back to its rollback version."""
    if not update.rollback_version:
        raise RollbackTargetMissing(
            f"update {update.id} ({update.name}) names no rollback_version",
            field="rollback_version",
            update_id=update.id,
        )
    wanted = versions.reading_key(update.rollback_version)
    candidates = session.scalars(
        select(SoftwareUpdate)
        .where(
            SoftwareUpdate.ecu_type == update.ecu_type,
            SoftwareUpdate.state == UpdateState.RELEASED.value,
            SoftwareUpdate.release_counter > (update.release_counter or 0),
        )
        .order_by(SoftwareUpdate.release_counter.desc())
    )
    for candidate in candidates:
        if versions.reading_key(candidate.version) == wanted:
            return candidate
    raise RollbackTargetMissing(
        f"update {update.id} ({update.name}) rolls back to {update.ecu_type} "
        f"{update.rollback_version}, but no released update of that version has a release "
        f"counter above {update.release_counter}: release {update.rollback_version} again so "
        "that vehicles accept it, then roll back",
        field="rollback_version",
        update_id=update.id,
        rollback_version=update.rollback_version,
    )


def rollback(session: Session, actor: Actor, campaign_id: int, comment: str = "") -> Campaign:
    """A draft child campaign taking the vehicles that succeeded back to the rollback
    versions of the parent's updates."""
    parent = _launched(session, campaign_id)
    vins = _vins(session, parent, Deployment.state == DeploymentState.SUCCEEDED.value)
    if not vins:
        raise NothingToDo(f"campaign {campaign_id} has no succeeded deployments to roll back")
    update_ids = service.update_ids_of(session, [parent.id])[parent.id]
    updates = session.scalars(select(SoftwareUpdate).where(SoftwareUpdate.id.in_(update_ids)))
    targets = {u.id: rollback_target(session, u).id for u in updates}
    return _create_child(
        session, actor, parent, kind="rollback", update_ids=[targets[u] for u in update_ids],
        vins=vins, detail={"rollback_updates": targets}, comment=comment,
    )  # fmt: skip
