"""HTTP endpoints of campaigns: definition and the four-eyes approval."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from otacm.campaigns import children, launch, operations, report, service
from otacm.campaigns.models import Campaign, Deployment, DeploymentEventRecord
from otacm.campaigns.schemas import (
    CampaignCreate,
    CampaignFields,
    CampaignOut,
    CampaignPage,
    CampaignState,
    Decision,
    DeploymentDetail,
    DeploymentEventOut,
    DeploymentOut,
    DeploymentPage,
    LaunchRequest,
    Operation,
    Rejection,
    RetryRequest,
)
from otacm.campaigns.states import DeploymentState
from otacm.config import Settings
from otacm.db import utcnow
from otacm.deps import SessionDep, SettingsDep, WriteSessionDep, get_engine
from otacm.fleet.models import Vehicle
from otacm.fleet.records import Region
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission

router = APIRouter(prefix="/api/v1", tags=["campaigns"])


@router.post("/campaigns", response_model=CampaignOut, status_code=201)
def create_campaign(
    data: CampaignCreate,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
) -> CampaignOut:
    """Define a campaign as a draft: released updates, target selection, regions, schedule,
    priority, consent, the user notice and the rollout policy."""
    return service.detail(session, service.create(session, principal.actor, data))


@router.get("/campaigns", response_model=CampaignPage)
def list_campaigns(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_READ))],
    state: Annotated[list[CampaignState], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> CampaignPage:
    """Campaigns, newest first."""
    query = select(Campaign).order_by(Campaign.id.desc())
    if state:
        query = query.where(Campaign.state.in_([s.value for s in state]))
    if cursor:
        query = query.where(Campaign.id < decode_cursor(cursor))
    rows = list(session.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    updates = service.update_ids_of(session, [c.id for c in page])
    return CampaignPage(
        items=[service.out(c, updates[c.id]) for c in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
    )


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
def get_campaign(
    campaign_id: int,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_READ))],
) -> CampaignOut:
    return service.detail(session, service.get(session, campaign_id))


@router.patch("/campaigns/{campaign_id}", response_model=CampaignOut)
def edit_campaign(
    campaign_id: int,
    changes: CampaignFields,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
) -> CampaignOut:
    """Change the fields sent; a rejected campaign becomes a draft again."""
    return service.detail(session, service.edit(session, principal.actor, campaign_id, changes))


@router.post("/campaigns/{campaign_id}/submit", response_model=CampaignOut)
def submit_campaign(
    campaign_id: int,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
) -> CampaignOut:
    """Ask another campaign manager to approve it."""
    return service.detail(session, service.submit(session, principal.actor, campaign_id))


def _decided(
    session: Session,
    settings: Settings,
    principal: Principal,
    campaign_id: int,
    approve: bool,
    comment: str,
) -> CampaignOut:
    campaign = service.decide(
        session,
        principal.actor,
        campaign_id,
        approve=approve,
        comment=comment,
        four_eyes=settings.campaign_four_eyes,
    )
    return service.detail(session, campaign)


@router.post("/campaigns/{campaign_id}/approve", response_model=CampaignOut)
def approve_campaign(
    campaign_id: int,
    body: Decision,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_APPROVE))],
) -> CampaignOut:
    """Approve a submitted campaign (not one's own, under the four-eyes rule)."""
    return _decided(session, settings, principal, campaign_id, True, body.comment)


@router.post("/campaigns/{campaign_id}/reject", response_model=CampaignOut)
def reject_campaign(
    campaign_id: int,
    body: Rejection,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_APPROVE))],
) -> CampaignOut:
    """Send a submitted campaign back, saying why."""
    return _decided(session, settings, principal, campaign_id, False, body.comment)


@router.post("/campaigns/{campaign_id}/launch", response_model=CampaignOut)
def launch_campaign(
    campaign_id: int,
    body: LaunchRequest,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
) -> CampaignOut:
    """Create a deployment for every eligible vehicle, in its wave, and start the campaign (or
    schedule it). Refused when the eligible count differs from `expected_vehicles` by more
    than the configured margin."""
    campaign = launch.launch(
        session,
        principal.actor,
        campaign_id,
        expected_vehicles=body.expected_vehicles,
        margin=settings.campaign_launch_margin,
    )
    return service.detail(session, campaign)


@router.get("/campaigns/{campaign_id}/deployments", response_model=DeploymentPage)
def list_deployments(
    campaign_id: int,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_READ))],
    state: Annotated[list[DeploymentState], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    wave: int | None = None,
    failure_code: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[list[str], Query()] = [],  # noqa: B006
    region: Annotated[list[Region], Query()] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> DeploymentPage:
    """The campaign's deployments with their vehicle, filtered, in id order."""
    service.get(session, campaign_id)
    query = (
        select(Deployment, Vehicle.vin, Vehicle.model, Vehicle.region)
        .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
        .where(Deployment.campaign_id == campaign_id)
        .order_by(Deployment.id)
    )
    if state:
        query = query.where(Deployment.state.in_([s.value for s in state]))
    if wave is not None:
        query = query.where(Deployment.wave == wave)
    if failure_code:
        query = query.where(Deployment.failure_code == failure_code)
    if model:
        query = query.where(Vehicle.model.in_(model))
    if region:
        query = query.where(Vehicle.region.in_([r.value for r in region]))
    if cursor:
        query = query.where(Deployment.id > decode_cursor(cursor))
    rows = session.execute(query.limit(limit + 1)).all()
    items = [_deployment_out(d, vin, m, r) for d, vin, m, r in rows[:limit]]
    return DeploymentPage(
        items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None
    )


def _deployment_out(d: Deployment, vin: str, model: str, region: str) -> DeploymentOut:
    return DeploymentOut(
        id=d.id,
        vin=vin,
        model=model,
        region=region,
        wave=d.wave,
        state=d.state,
        attempts=d.attempts,
        state_entered_at=d.state_entered_at,
        next_attempt_at=d.next_attempt_at,
        failure_code=d.failure_code,
        failure_detail=d.failure_detail,
    )


@router.get("/campaigns/{campaign_id}/deployments/{deployment_id}", response_model=DeploymentDetail)
def get_deployment(
    campaign_id: int,
    deployment_id: int,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_READ))],
) -> DeploymentDetail:
    """One deployment with the versions on its ECUs and its history of events."""
    row = session.execute(
        select(Deployment, Vehicle.vin, Vehicle.model, Vehicle.region)
        .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
        .where(Deployment.id == deployment_id, Deployment.campaign_id == campaign_id)
    ).first()
    if row is None:
        service.get(session, campaign_id)
        raise service.DeploymentNotFound(
            f"campaign {campaign_id} has no deployment {deployment_id}",
            deployment_id=deployment_id,
        )
    deployment = row[0]
    events = session.scalars(
        select(DeploymentEventRecord)
        .where(DeploymentEventRecord.deployment_id == deployment_id)
        .order_by(DeploymentEventRecord.id)
    )
    return DeploymentDetail(
        **_deployment_out(*row).model_dump(),
        campaign_id=campaign_id,
        versions=deployment.versions or {},
        events=[DeploymentEventOut.model_validate(e, from_attributes=True) for e in events],
    )


@router.get(
    "/campaigns/{campaign_id}/report",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
def campaign_report(
    campaign_id: int,
    session: SessionDep,
    engine: Annotated[Engine, Depends(get_engine)],
    _: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_READ))],
    format: Literal["csv", "jsonl"] = "csv",
) -> StreamingResponse:
    """Per vehicle and ECU: the versions before and after, timestamps, attempts and result."""
    campaign = service.get(session, campaign_id)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    name = f"campaign-{campaign.id}-report-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.{format}"
    return StreamingResponse(
        report.export(engine, campaign.id, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post("/campaigns/{campaign_id}/retry-failed", response_model=CampaignOut, status_code=201)
def retry_failed_campaign(
    campaign_id: int,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
    body: RetryRequest | None = None,
) -> CampaignOut:
    """A draft child campaign for the vehicles whose deployment failed for good (optionally
    only one failure code), carrying the same updates; it is approved and launched as usual."""
    body = body or RetryRequest()
    child = children.retry_failed(
        session, principal.actor, campaign_id, failure_code=body.failure_code, comment=body.comment
    )
    return service.detail(session, child)


@router.post("/campaigns/{campaign_id}/rollback", response_model=CampaignOut, status_code=201)
def rollback_campaign(
    campaign_id: int,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
    body: Operation | None = None,
) -> CampaignOut:
    """A draft child campaign taking the vehicles that succeeded back to each update's
    rollback version (released again with a higher release counter)."""
    comment = body.comment if body else ""
    return service.detail(
        session, children.rollback(session, principal.actor, campaign_id, comment)
    )


def _operate(name: str, summary: str) -> None:
    def handler(
        campaign_id: int,
        session: WriteSessionDep,
        principal: Annotated[Principal, Depends(require(Permission.CAMPAIGNS_WRITE))],
        body: Operation | None = None,
    ) -> CampaignOut:
        operate = getattr(operations, name.replace("-", "_"))
        result = operate(session, principal.actor, campaign_id, body.comment if body else "")
        campaign = result[0] if isinstance(result, tuple) else result
        return service.detail(session, campaign)

    handler.__name__ = f"{name.replace('-', '_')}_campaign"
    router.post(f"/campaigns/{{campaign_id}}/{name}", response_model=CampaignOut, summary=summary)(
        handler
    )


_operate("pause", "Stop opening waves; deployments under way go on")
_operate("resume", "Go on; failures so far no longer count against the threshold")
_operate("next-wave", "Close the open wave and open the next one now")
_operate("cancel", "End it: offers not yet taken up are cancelled, accepted ones finish")
