"""Alerts the rollout engine raised: list them (open, acknowledged, per campaign) and
acknowledge one."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from otacm.alerts import service
from otacm.alerts.models import Alert
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
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security.auth import Principal
from otacm.security.permissions import Permission

router = console_router()

PAGE_SIZE = 50
SHOWN = {"open": False, "acknowledged": True, "all": None}


@router.get("/alerts", response_class=HTMLResponse)
def alerts(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.ALERTS_READ))],
    show: str = "open",
    campaign_id: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    errors: dict[str, str] = {}
    if show not in SHOWN:
        errors["show"] = "choose open, acknowledged or all"
    if campaign_id and not campaign_id.isdigit():
        errors["campaign_id"] = "a campaign is given by its number"
    rows: list[Alert] = []
    next_cursor = None
    if not errors:
        query = select(Alert).order_by(Alert.id.desc())
        acknowledged = SHOWN[show]
        if acknowledged is not None:
            column = Alert.acknowledged_at
            query = query.where(column.is_not(None) if acknowledged else column.is_(None))
        if campaign_id:
            query = query.where(Alert.campaign_id == int(campaign_id))
        if cursor:
            query = query.where(Alert.id < decode_cursor(cursor))
        rows = list(session.scalars(query.limit(PAGE_SIZE + 1)))
        if len(rows) > PAGE_SIZE:
            next_cursor = encode_cursor(rows[PAGE_SIZE - 1].id)
    return render(
        request,
        "alerts.html",
        status_code=422 if errors else 200,
        alerts=rows[:PAGE_SIZE],
        show=show,
        campaign_id=campaign_id,
        errors=errors,
        pager=pager(request, next_cursor),
    )


@router.post("/alerts/{alert_id}/acknowledge")
def acknowledge(
    alert_id: int,
    session: ConsoleWriteSession,
    principal: Annotated[Principal, Depends(can_do(Permission.ALERTS_ACKNOWLEDGE))],
) -> Response:
    service.acknowledge(session, principal.actor, alert_id)
    return see_other("/alerts", "acknowledged")
