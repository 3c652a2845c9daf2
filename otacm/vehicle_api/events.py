"""Deployment events from a vehicle: idempotent by the vehicle's event id, never backwards.

Each event goes through the deployment state machine (`campaigns.states`) one at a time, in the
order sent. The outcome of each is kept with its event id (`vehicle_event_receipts`), so a batch
sent again after a lost answer is acknowledged and applied once. An event of an earlier attempt
(the deployment was retried since) is acknowledged and dropped.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns.deployments import apply_event
from otacm.campaigns.ledger import Source
from otacm.campaigns.models import Campaign, Deployment
from otacm.campaigns.states import DeploymentEvent, DeploymentState, IllegalTransition
from otacm.db import is_postgresql
from otacm.errors import NotFound
from otacm.vehicle_api import notices
from otacm.vehicle_api.models import VehicleEventReceipt

VehicleEventName = Literal[
    "accepted", "declined", "postponed", "download_started", "download_progress",
    "download_finished", "install_started", "install_finished", "failed", "rolled_back",
]  # fmt: skip
EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
FailureCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.:-]{1,64}$")]


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class Outcome(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    STALE_ATTEMPT = "stale_attempt"
    REFUSED = "refused"


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: EventId
    event: VehicleEventName
    attempt: int = Field(ge=1, description="The offer's attempt")
    at: datetime | None = Field(default=None, description="When it happened, by the vehicle")
    code: FailureCode | None = Field(default=None, description="For failed and rolled_back")
    detail: str | None = Field(default=None, max_length=2000)


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=100)


class EventResult(BaseModel):
    event_id: str
    outcome: Outcome
    state: DeploymentState


class EventsOut(BaseModel):
    state: DeploymentState
    poll_after_s: int
    results: list[EventResult]


def _deployment(session: Session, vehicle_id: int, deployment_id: int) -> Deployment:
    query = select(Deployment).where(
        Deployment.id == deployment_id, Deployment.vehicle_id == vehicle_id
    )
    if is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    deployment = session.scalar(query)
    if deployment is None:
        # Another vehicle's deployment is not found either: nothing about it is disclosed.
        raise DeploymentNotFound(f"no deployment {deployment_id} for this vehicle")
    return deployment


def receive(
    session: Session, vehicle_id: int, vin: str, deployment_id: int, events: EventsIn, now: datetime
) -> tuple[DeploymentState, list[EventResult]]:
    """Apply the vehicle's events in order; the caller commits.

    Raises:
        DeploymentNotFound: not a deployment of this vehicle.
    """
    deployment = _deployment(session, vehicle_id, deployment_id)
    ids = [e.event_id for e in events.events]
    seen = set(
        session.scalars(
            select(VehicleEventReceipt.event_id).where(
                VehicleEventReceipt.deployment_id == deployment.id,
                VehicleEventReceipt.event_id.in_(ids),
            )
        )
    )
    state_before = deployment.state
    results: list[EventResult] = []
    for event in events.events:
        if event.event_id in seen:
            outcome = Outcome.DUPLICATE
        else:
            seen.add(event.event_id)
            outcome = _apply(session, deployment, event, now)
            session.add(
                VehicleEventReceipt(
                    deployment_id=deployment.id,
                    event_id=event.event_id,
                    event=event.event,
                    outcome=outcome.value,
                    occurred_at=event.at,
                    received_at=now,
                )
            )
        results.append(
            EventResult(
                event_id=event.event_id, outcome=outcome, state=DeploymentState(deployment.state)
            )
        )
    if deployment.state != state_before and deployment.state in (
        DeploymentState.FAILED.value, DeploymentState.ROLLED_BACK.value,
    ):  # fmt: skip
        campaign = session.get(Campaign, deployment.campaign_id)
        assert campaign is not None
        notices.send(
            session, notices.FAILED, deployment, campaign, vin, now,
            extra={"result": deployment.state, "failure_code": deployment.failure_code},
        )  # fmt: skip
    session.flush()
    return DeploymentState(deployment.state), results


def _apply(session: Session, deployment: Deployment, event: EventIn, now: datetime) -> Outcome:
    if event.attempt != deployment.attempts + 1:
        return Outcome.STALE_ATTEMPT
    try:
        transition = apply_event(
            session, deployment, DeploymentEvent(event.event), now,
            source=Source.VEHICLE, code=event.code, detail=event.detail,
        )  # fmt: skip
    except IllegalTransition:
        return Outcome.REFUSED
    return Outcome.APPLIED if transition.applied else Outcome.IGNORED
