"""Moving one deployment through its state machine (`states.py`), as events arrive.

The vehicle API and the engine both move deployments only through `apply_event`: an event the
table ignores (late, repeated) changes nothing; an illegal one raises `IllegalTransition`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from otacm.campaigns.models import Deployment
from otacm.campaigns.states import DeploymentEvent, DeploymentState, Transition, apply


def apply_event(
    session: Session,
    deployment: Deployment,
    event: DeploymentEvent,
    now: datetime,
    *,
    code: str | None = None,
    detail: str | None = None,
) -> Transition:
    transition = apply(DeploymentState(deployment.state), event)
    if transition.applied:
        deployment.state = transition.after.value
        deployment.state_entered_at = now
        if transition.starts_attempt:
            deployment.attempts += 1
            deployment.failure_code = deployment.failure_detail = None
        if event is DeploymentEvent.FAILED:
            deployment.failure_code = code or "unknown"
            deployment.failure_detail = detail
        elif event is DeploymentEvent.TIMEOUT:
            deployment.failure_code = "timed_out"
    deployment.updated_at = now
    session.flush()
    return transition
