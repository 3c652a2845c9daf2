"""Campaigns: the list, a campaign's page (definition, the four-eyes decision, live progress
that updates without a reload), its deployments with filters, one deployment's history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from otacm.campaigns import service
from otacm.campaigns.models import Campaign, CampaignWave, Deployment, DeploymentEventRecord
from otacm.campaigns.schemas import CampaignOut, CampaignState, Decision, Rejection
from otacm.campaigns.states import DeploymentState
from otacm.config import Settings
from otacm.console import charts, progress
from otacm.console.forms import FORM, FormDep, FormErrors, text
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    pager,
    render,
    see_other,
)
from otacm.errors import OtacmError
from otacm.fleet.models import Vehicle
from otacm.fleet.records import Region
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security.auth import Principal
from otacm.security.permissions import Permission, allows
from otacm.targeting import service as targeting
from otacm.targeting.schemas import PreviewOut, PreviewRequest
from otacm.targeting.selection import TargetSelection, describe
from otacm.updates.models import SoftwareUpdate

router = console_router()

PAGE_SIZE = 25
DEPLOYMENTS_PAGE = 50
LIVE = frozenset({CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED})
# Before a decision or a launch, the page counts the vehicles exactly (a preview).
COUNTED = frozenset({CampaignState.PENDING_APPROVAL, CampaignState.APPROVED})


def out(session: Session, campaign: Campaign) -> CampaignOut:
    return service.detail(session, campaign, figures=False)


def exact_count(session: Session, campaign: CampaignOut) -> tuple[PreviewOut | None, str | None]:
    """How many vehicles the campaign would reach if launched now (the launch's own rules)."""
    try:
        body = PreviewRequest(
            update_ids=campaign.update_ids,
            selection=campaign.selection,
            regions=campaign.regions,
            sample_size=0,
        )
        return targeting.run_preview(session, body), None
    except OtacmError as exc:
        return None, exc.detail


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
    state: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    errors: FormErrors = {}
    query = select(Campaign).order_by(Campaign.id.desc())
    if state:
        if state not in {s.value for s in CampaignState}:
            errors["state"] = f"{state!r} is not a campaign state"
        query = query.where(Campaign.state == state)
    if cursor:
        query = query.where(Campaign.id < decode_cursor(cursor))
    rows = [] if errors else list(session.scalars(query.limit(PAGE_SIZE + 1)))
    page = rows[:PAGE_SIZE]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > PAGE_SIZE else None
    waiting = session.scalar(
        select(func.count()).where(Campaign.state == CampaignState.PENDING_APPROVAL.value)
    )
    return render(
        request,
        "campaigns.html",
        status_code=422 if errors else 200,
        campaigns=[(c, progress.figures(session, c)) for c in page],
        state=state,
        states=list(CampaignState),
        errors=errors,
        waiting=waiting or 0,
        pager=pager(request, next_cursor),
    )


def live_context(request: Request, session: Session, campaign: Campaign) -> dict[str, Any]:
    """The figures of the live section (also its htmx fragment)."""
    figures = progress.figures(session, campaign, waves=True)
    launched = sum(w.size for w in figures.waves)
    samples = progress.over_time(request.app.state, campaign, figures.groups, launched)
    return {
        "figures": figures,
        "states_chart": charts.states_over_time(samples),
        "polling": CampaignState(campaign.state) in LIVE,
    }


def _page(
    request: Request,
    session: Session,
    campaign_id: int,
    *,
    errors: FormErrors | None = None,
    comment: str = "",
    status: int = 200,
) -> HTMLResponse:
    campaign = service.get(session, campaign_id)
    body = out(session, campaign)
    updates = list(
        session.scalars(select(SoftwareUpdate).where(SoftwareUpdate.id.in_(body.update_ids)))
    )
    principal: Principal = request.state.principal
    settings: Settings = request.app.state.settings
    four_eyes_blocks = settings.campaign_four_eyes and principal.name in (
        campaign.created_by,
        campaign.submitted_by,
    )
    children = list(
        session.scalars(select(Campaign).where(Campaign.parent_id == campaign.id).limit(50))
    )
    context: dict[str, Any] = {}
    if campaign.launched_at is not None:
        context = live_context(request, session, campaign)
    return render(
        request,
        "campaign.html",
        status_code=status,
        campaign=body,
        stored=campaign,
        updates=sorted(updates, key=lambda u: body.update_ids.index(u.id)),
        selection_text=describe(TargetSelection.model_validate(campaign.selection)),
        may_decide=allows(principal.role, Permission.CAMPAIGNS_APPROVE) and not four_eyes_blocks,
        four_eyes_blocks=four_eyes_blocks,
        counted=CampaignState(campaign.state) in COUNTED,
        children=children,
        errors=errors or {},
        comment=comment,
        **context,
    )


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign_page(
    campaign_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
) -> HTMLResponse:
    return _page(request, session, campaign_id)


@router.get("/campaigns/{campaign_id}/count", response_class=HTMLResponse)
def count(
    campaign_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
) -> HTMLResponse:
    """The exact number of vehicles a launch would reach now: a targeting preview, which on a
    large fleet takes longer than a page should, so the campaign page fetches it after
    showing itself (or links here without JavaScript)."""
    campaign = service.get(session, campaign_id)
    preview, problem = exact_count(session, out(session, campaign))
    return render(
        request, "_campaign_count.html", campaign=campaign, count=preview, count_error=problem
    )


@router.get("/campaigns/{campaign_id}/live", response_class=HTMLResponse)
def live(
    campaign_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
) -> HTMLResponse:
    """The live section alone: what the campaign page fetches every few seconds."""
    campaign = service.get(session, campaign_id)
    return render(
        request,
        "_campaign_live.html",
        campaign=campaign,
        **live_context(request, session, campaign),
    )


@router.post("/campaigns/{campaign_id}/submit", response_class=HTMLResponse)
def submit(
    campaign_id: int,
    request: Request,
    session: ConsoleWriteSession,
    principal: Annotated[Principal, Depends(can_do(Permission.CAMPAIGNS_WRITE))],
) -> Response:
    try:
        service.submit(session, principal.actor, campaign_id)
    except OtacmError as exc:
        session.rollback()
        return _page(
            request, session, campaign_id, errors={FORM: exc.detail}, status=exc.status_code
        )
    return see_other(f"/campaigns/{campaign_id}", "submitted")


@router.post("/campaigns/{campaign_id}/decision", response_class=HTMLResponse)
def decide(
    campaign_id: int,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.CAMPAIGNS_APPROVE))],
) -> Response:
    """Approve or reject a submitted campaign (the four-eyes rule is the service's)."""
    approve = text(form, "decision") == "approve"
    comment = text(form, "comment")
    settings: Settings = request.app.state.settings
    try:
        checked = Decision(comment=comment) if approve else Rejection(comment=comment)
        service.decide(
            session,
            principal.actor,
            campaign_id,
            approve=approve,
            comment=checked.comment,
            four_eyes=settings.campaign_four_eyes,
        )
    except OtacmError as exc:
        session.rollback()
        return _page(
            request, session, campaign_id, errors={FORM: exc.detail}, comment=comment,
            status=exc.status_code,
        )  # fmt: skip
    except ValidationError:  # a rejection needs its reason
        return _page(
            request,
            session,
            campaign_id,
            errors={"comment": "say why it is rejected (at least 3 characters)"},
            comment=comment,
            status=422,
        )
    return see_other(f"/campaigns/{campaign_id}", "approved" if approve else "rejected")


def _deployment_filters(request: Request) -> tuple[dict[str, str], FormErrors]:
    params = request.query_params
    values = {
        n: params.get(n, "").strip() for n in ("state", "wave", "failure_code", "model", "region")
    }
    errors: FormErrors = {}
    if values["state"] and values["state"] not in {s.value for s in DeploymentState}:
        errors["state"] = f"{values['state']!r} is not a deployment state"
    if values["wave"] and not values["wave"].isdigit():
        errors["wave"] = "a wave is a number"
    if values["region"] and values["region"] not in {r.value for r in Region}:
        errors["region"] = f"{values['region']!r} is not a region"
    return values, errors


@router.get("/campaigns/{campaign_id}/deployments", response_class=HTMLResponse)
def deployments(
    campaign_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    """The campaign's deployments with their vehicle, filtered, a page at a time (the index
    on campaign and state, or campaign and wave, serves every filter)."""
    campaign = service.get(session, campaign_id)
    values, errors = _deployment_filters(request)
    rows: list[Any] = []
    next_cursor = None
    if not errors:
        query = (
            select(Deployment, Vehicle.vin, Vehicle.model, Vehicle.region)
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(Deployment.campaign_id == campaign_id)
            .order_by(Deployment.id)
        )
        if values["state"]:
            query = query.where(Deployment.state == values["state"])
        if values["wave"]:
            query = query.where(Deployment.wave == int(values["wave"]))
        if values["failure_code"]:
            query = query.where(Deployment.failure_code == values["failure_code"])
        if values["model"]:
            query = query.where(Vehicle.model == values["model"])
        if values["region"]:
            query = query.where(Vehicle.region == values["region"])
        if cursor:
            query = query.where(Deployment.id > decode_cursor(cursor))
        rows = list(session.execute(query.limit(DEPLOYMENTS_PAGE + 1)).all())
        if len(rows) > DEPLOYMENTS_PAGE:
            next_cursor = encode_cursor(rows[DEPLOYMENTS_PAGE - 1][0].id)
    figures = progress.figures(session, campaign)
    return render(
        request,
        "deployments.html",
        status_code=422 if errors else 200,
        campaign=campaign,
        rows=rows[:DEPLOYMENTS_PAGE],
        search=values,
        errors=errors,
        states=[s.value for s in DeploymentState],
        regions=list(Region),
        failure_codes=list(figures.failure_codes),
        waves=list(
            session.scalars(
                select(CampaignWave.number).where(CampaignWave.campaign_id == campaign_id)
            )
        ),
        pager=pager(request, next_cursor),
    )


@router.get("/campaigns/{campaign_id}/deployments/{deployment_id}", response_class=HTMLResponse)
def deployment(
    campaign_id: int,
    deployment_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_READ))],
) -> HTMLResponse:
    row = session.execute(
        select(Deployment, Vehicle.vin, Vehicle.model, Vehicle.region)
        .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
        .where(Deployment.id == deployment_id, Deployment.campaign_id == campaign_id)
    ).first()
    campaign = service.get(session, campaign_id)
    if row is None:
        raise service.DeploymentNotFound(
            f"campaign {campaign_id} has no deployment {deployment_id}"
        )
    events = list(
        session.scalars(
            select(DeploymentEventRecord)
            .where(DeploymentEventRecord.deployment_id == deployment_id)
            .order_by(DeploymentEventRecord.id)
        )
    )
    return render(
        request,
        "deployment.html",
        campaign=campaign,
        deployment=row[0],
        vin=row[1],
        model=row[2],
        region=row[3],
        events=events,
    )
