"""Operating a campaign from the console: launch, pause, resume, next wave, cancel,
retry-failed and rollback, each after a confirmation page that states how many vehicles the
operation affects. The operations are the services the API calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from otacm.campaigns import children, launch, operations, service
from otacm.campaigns.engine import worth_a_retry
from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.policy import RolloutPolicy
from otacm.campaigns.schemas import CampaignState, Operation, RetryRequest
from otacm.campaigns.states import RETRYABLE_FAILURES, DeploymentState
from otacm.config import Settings
from otacm.console import progress
from otacm.console.campaigns import exact_count, out
from otacm.console.forms import FORM, FormDep, FormErrors, service_errors, text
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    render,
    see_other,
)
from otacm.errors import NotFound, OtacmError, ValidationFailed
from otacm.security.auth import Principal
from otacm.security.permissions import Permission

router = console_router()

_S = DeploymentState


@dataclass(frozen=True)
class Effect:
    """What an operation does, in words, and to how many vehicles."""

    title: str
    vehicles: int
    text: str
    button: str
    danger: bool = False


def _retryable(session: Session, campaign: Campaign) -> dict[str, int]:
    """Failed for good, per failure code: what retry-failed would take (its own conditions)."""
    query = select(Deployment.failure_code, func.count()).where(
        Deployment.campaign_id == campaign.id,
        Deployment.state.in_([s.value for s in RETRYABLE_FAILURES]),
    )
    if campaign.state in (CampaignState.RUNNING.value, CampaignState.PAUSED.value):
        policy = RolloutPolicy.model_validate(campaign.rollout).retries
        query = query.where(Deployment.next_attempt_at.is_(None), ~worth_a_retry(policy))
    rows = session.execute(query.group_by(Deployment.failure_code)).all()
    return {str(code or "unknown"): int(n) for code, n in rows}


def effect(session: Session, campaign: Campaign, operation: str) -> Effect:
    states = progress.figures(session, campaign).states

    def count(*wanted: DeploymentState) -> int:
        return sum(states.get(s.value, 0) for s in wanted)

    waiting = count(_S.PENDING)
    in_flight = count(_S.OFFERED, _S.POSTPONED, _S.ACCEPTED, _S.DOWNLOADING, _S.DOWNLOADED)
    in_flight += count(_S.INSTALLING, _S.INSTALLED)
    if operation == "launch":
        preview, problem = exact_count(session, out(session, campaign))
        if preview is None:
            raise ValidationFailed(f"the vehicles cannot be counted: {problem}")
        return Effect(
            "Launch",
            preview.vehicles_eligible,
            f"creates a deployment for each of the {preview.vehicles_eligible:,} eligible "
            "vehicles, in their waves, and starts the rollout (or schedules it for its start "
            "time). If the count differs by more than the launch margin when it runs, nothing "
            "is launched.",
            "Launch",
        )
    if operation == "pause":
        return Effect(
            "Pause", waiting,
            f"stops opening waves and offering: {waiting:,} vehicles not yet offered wait; "
            f"{in_flight:,} under way go on and report.",
            "Pause", danger=True,
        )  # fmt: skip
    if operation == "resume":
        return Effect(
            "Resume", waiting,
            f"goes on: {waiting:,} vehicles waiting are offered again; failures seen so far no "
            "longer count against the failure threshold.",
            "Resume",
        )  # fmt: skip
    if operation == "next-wave":
        wave = session.scalar(
            select(CampaignWave)
            .where(CampaignWave.campaign_id == campaign.id, CampaignWave.opened_at.is_(None))
            .order_by(CampaignWave.number)
            .limit(1)
        )
        if wave is None:
            raise service.CampaignStateConflict(f"campaign {campaign.id} has opened its last wave")
        return Effect(
            f"Open wave {wave.number} now", wave.size,
            f"closes the open wave whatever its verdict and opens wave {wave.number}: "
            f"{wave.size:,} more vehicles are offered the update.",
            f"Open wave {wave.number}", danger=True,
        )  # fmt: skip
    if operation == "cancel":
        cancellable = count(_S.PENDING, _S.OFFERED, _S.POSTPONED)
        return Effect(
            "Cancel", cancellable,
            f"ends the campaign for good: {cancellable:,} deployments not yet taken up are "
            "cancelled; vehicles that already accepted finish and report.",
            "Cancel the campaign", danger=True,
        )  # fmt: skip
    if operation == "retry-failed":
        failed = sum(_retryable(session, campaign).values())
        return Effect(
            "Retry the failed vehicles", failed,
            f"drafts a child campaign for the {failed:,} vehicles whose deployment failed for "
            "good, with the same updates; it is approved and launched like any campaign.",
            "Draft the retry campaign",
        )  # fmt: skip
    if operation == "rollback":
        succeeded = count(_S.SUCCEEDED)
        return Effect(
            "Roll back", succeeded,
            f"drafts a child campaign taking the {succeeded:,} vehicles that succeeded back "
            "to each update's rollback version; it is approved and launched like any campaign.",
            "Draft the rollback campaign", danger=True,
        )  # fmt: skip
    raise NotFound(f"there is no campaign operation {operation!r}")


OPERATIONS = ("launch", "pause", "resume", "next-wave", "cancel", "retry-failed", "rollback")


def _confirm_page(
    request: Request,
    session: Session,
    campaign_id: int,
    operation: str,
    errors: FormErrors,
    status: int = 200,
    comment: str = "",
    counted: bool = True,
) -> HTMLResponse:
    if operation not in OPERATIONS:
        raise NotFound(f"there is no campaign operation {operation!r}")
    campaign = service.get(session, campaign_id)
    # A launch's count is a targeting preview (seconds on a large fleet): unless `counted`, the
    # page shows itself and fetches its count and form after (or links to them without script).
    found: Effect | None = None
    count_error: str | None = None
    if counted or operation != "launch":
        try:
            found = effect(session, campaign, operation)
        except ValidationFailed as exc:
            if not request.headers.get("HX-Request"):
                raise
            count_error = exc.detail  # htmx swaps only successful answers
    codes = _retryable(session, campaign) if operation == "retry-failed" else {}
    return render(
        request,
        "campaign_confirm.html",
        status_code=status,
        campaign=campaign,
        operation=operation,
        effect=found,
        count_error=count_error,
        failure_codes=codes,
        failure_code_options=[(code, f"{code} ({n:,} vehicles)") for code, n in codes.items()],
        errors=errors,
        comment=comment,
    )


@router.get("/campaigns/{campaign_id}/confirm/{operation}", response_class=HTMLResponse)
def confirm(
    campaign_id: int,
    operation: str,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_WRITE))],
) -> HTMLResponse:
    counted = request.query_params.get("counted") == "1"
    return _confirm_page(request, session, campaign_id, operation, {}, counted=counted)


@router.post("/campaigns/{campaign_id}/operate/{operation}", response_class=HTMLResponse)
def operate(
    campaign_id: int,
    operation: str,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.CAMPAIGNS_WRITE))],
) -> Response:
    comment = text(form, "comment")
    actor = principal.actor
    settings: Settings = request.app.state.settings
    try:
        Operation(comment=comment)
        if operation == "launch":
            expected = text(form, "expected_vehicles")
            if not expected.isdigit():
                raise ValidationFailed("the expected count is missing", field="expected_vehicles")
            launch.launch(
                session, actor, campaign_id, expected_vehicles=int(expected),
                margin=settings.campaign_launch_margin,
            )  # fmt: skip
            return see_other(f"/campaigns/{campaign_id}", "launched")
        if operation == "retry-failed":
            body = RetryRequest(comment=comment, failure_code=text(form, "failure_code") or None)
            child = children.retry_failed(
                session, actor, campaign_id, failure_code=body.failure_code, comment=comment
            )
            return see_other(f"/campaigns/{child.id}", "child")
        if operation == "rollback":
            child = children.rollback(session, actor, campaign_id, comment)
            return see_other(f"/campaigns/{child.id}", "child")
        done = {
            "pause": "paused",
            "resume": "resumed",
            "next-wave": "next_wave",
            "cancel": "cancelled",
        }
        if operation not in done:
            raise NotFound(f"there is no campaign operation {operation!r}")
        getattr(operations, operation.replace("-", "_"))(session, actor, campaign_id, comment)
        return see_other(f"/campaigns/{campaign_id}", done[operation])
    except OtacmError as exc:
        session.rollback()
        if exc.status_code == 404:
            raise
        return _confirm_page(
            request, session, campaign_id, operation,
            service_errors(exc, ("comment", "failure_code")), exc.status_code, comment,
        )  # fmt: skip
    except ValueError as exc:  # pydantic: a comment or failure code out of bounds
        session.rollback()
        return _confirm_page(
            request, session, campaign_id, operation, {FORM: str(exc)}, 422, comment
        )
