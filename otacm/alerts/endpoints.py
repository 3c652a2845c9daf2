"""HTTP endpoints of alerts: list them, acknowledge one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from otacm.alerts import service
from otacm.alerts.models import Alert
from otacm.deps import SessionDep, WriteSessionDep
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission

router = APIRouter(prefix="/api/v1", tags=["alerts"])


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    severity: str
    campaign_id: int | None
    message: str
    details: dict[str, Any]
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


@router.get("/alerts", response_model=AlertPage)
def list_alerts(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.ALERTS_READ))],
    acknowledged: bool | None = None,
    campaign_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> AlertPage:
    """Alerts, newest first; `acknowledged=false` for the open ones."""
    query = select(Alert).order_by(Alert.id.desc())
    if acknowledged is not None:
        query = query.where(
            Alert.acknowledged_at.is_not(None) if acknowledged else Alert.acknowledged_at.is_(None)
        )
    if campaign_id is not None:
        query = query.where(Alert.campaign_id == campaign_id)
    if cursor:
        query = query.where(Alert.id < decode_cursor(cursor))
    rows = list(session.scalars(query.limit(limit + 1)))
    return AlertPage(
        items=[AlertOut.model_validate(a) for a in rows[:limit]],
        next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    )


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut)
def acknowledge_alert(
    alert_id: int,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.ALERTS_ACKNOWLEDGE))],
) -> AlertOut:
    return AlertOut.model_validate(service.acknowledge(session, principal.actor, alert_id))
