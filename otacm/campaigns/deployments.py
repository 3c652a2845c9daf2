"""Moving one deployment through its state machine (`states.py`), as events arrive.

The vehicle API and the engine both move deployments only through `apply_event` (one at a time)
or `ledger.move_many` (in bulk): an event the table ignores (late, repeated) changes nothing; an
illegal one raises `IllegalTransition`. Every applied move is written to the ledger (history and
tallies) in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from otacm.campaigns import ledger
from otacm.campaigns.ledger import Source
from otacm.campaigns.models import Deployment
from otacm.campaigns.states import (
    DeploymentEvent,
    DeploymentState,
    IllegalTransition,
    Transition,
    apply,
)

log = logging.getLogger("otacm.deployments")


def apply_event(
    session: Session,
    deployment: Deployment,
    event: DeploymentEvent,
    now: datetime,
    *,
    source: Source = Source.VEHICLE,
    code: str | None = None,
    detail: str | None = None,
) -> Transition:
    """Apply `event` to `deployment` (locked by the caller) and record the move."""
    try:
        transition = apply(DeploymentState(deployment.state), event)
    except IllegalTransition:
        log.warning(
            "deployment %s (campaign %s): %s refused in state %s",
            deployment.id, deployment.campaign_id, event.value, deployment.state,
        )  # fmt: skip
        raise
    if transition.applied:
        before = (deployment.state, deployment.failure_code)
        deployment.state = transition.after.value
        deployment.state_entered_at = now
        # A retry time belongs to the failure it was planned for: any move makes it moot (the
        # engine plans again if the new state is a failure worth retrying).
        deployment.next_attempt_at = None
        if transition.starts_attempt:
            deployment.attempts += 1
            deployment.failure_code = deployment.failure_detail = None
        if event is DeploymentEvent.FAILED:
            deployment.failure_code = code or "unknown"
            deployment.failure_detail = detail
        elif event is DeploymentEvent.TIMEOUT:
            deployment.failure_code = "timed_out"
        elif event is DeploymentEvent.ROLLED_BACK:
            deployment.failure_code = code or "rolled_back"
            deployment.failure_detail = detail
        ledger.record(
            session, deployment, event=event, before=before, now=now, source=source, detail=detail
        )
    deployment.updated_at = now
    session.flush()
    return transition
