"""The dashboard: the fleet by model, fuel type and region, campaigns under way with their
progress, open alerts, and fleet compliance per ECU type."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from otacm.alerts.models import Alert
from otacm.campaigns.models import Campaign
from otacm.campaigns.schemas import CampaignState
from otacm.console import charts, progress, snapshots
from otacm.console.web import ConsoleSession, can_view, console_router, render
from otacm.db import unit_of_work
from otacm.fleet.models import Vehicle
from otacm.security.auth import Principal
from otacm.security.permissions import Permission
from otacm.targeting import service as targeting

router = console_router()

# How stale the costly figures may be before a view computes them anew.
FLEET_MAX_AGE = timedelta(minutes=1)
COMPLIANCE_MAX_AGE = timedelta(minutes=10)
SHOWN_CAMPAIGNS = 12
SHOWN_ALERTS = 5
UNDER_WAY = (
    CampaignState.RUNNING,
    CampaignState.PAUSED,
    CampaignState.SCHEDULED,
    CampaignState.APPROVED,
    CampaignState.PENDING_APPROVAL,
)


def fleet_counts(factory: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """Vehicles per model, fuel type and region: each one GROUP BY over an index."""
    found: dict[str, dict[str, int]] = {}
    with unit_of_work(factory) as session:
        for name, column in (
            ("model", Vehicle.model),
            ("fuel_type", Vehicle.fuel_type),
            ("region", Vehicle.region),
        ):
            rows = session.execute(select(column, func.count()).group_by(column)).all()
            found[name] = {str(value): int(count) for value, count in rows}
    return found


def compliance_by_ecu_type(factory: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """Fitted ECUs of active vehicles per ECU type: on latest, in progress, behind, no release."""
    with unit_of_work(factory) as session:
        rows = targeting.fleet_compliance(session).rows
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        figures = totals.setdefault(row.ecu_type, dict.fromkeys(charts.COMPLIANCE_COLOURS, 0))
        for status in charts.COMPLIANCE_COLOURS:
            figures[status] += getattr(row, status)
    return dict(sorted(totals.items()))


def _fleet_charts(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {name: charts.counts_chart(values, "vehicles") for name, values in counts.items()}


def _compliance_chart(by_type: dict[str, dict[str, int]]) -> dict[str, Any]:
    types = list(by_type)
    return charts.bars(
        types,
        [
            (status.replace("_", " "), [by_type[t][status] for t in types], colour)
            for status, colour in charts.COMPLIANCE_COLOURS.items()
        ],
        stacked=True,
    )


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
) -> HTMLResponse:
    kept = snapshots.of(request.app.state)
    factory = request.app.state.session_factory
    fleet = kept.get("fleet", FLEET_MAX_AGE, lambda: fleet_counts(factory))
    compliance = kept.get("compliance", COMPLIANCE_MAX_AGE, lambda: compliance_by_ecu_type(factory))
    campaigns = list(
        session.scalars(
            select(Campaign)
            .where(Campaign.state.in_([s.value for s in UNDER_WAY]))
            .order_by(Campaign.priority.desc(), Campaign.id.desc())
            .limit(SHOWN_CAMPAIGNS)
        )
    )
    rows = [(c, progress.figures(session, c)) for c in campaigns]
    open_alerts = session.scalar(select(func.count()).where(Alert.acknowledged_at.is_(None)))
    alerts = list(
        session.scalars(
            select(Alert)
            .where(Alert.acknowledged_at.is_(None))
            .order_by(Alert.id.desc())
            .limit(SHOWN_ALERTS)
        )
    )
    return render(
        request,
        "dashboard.html",
        fleet=fleet,
        fleet_charts=_fleet_charts(fleet.value) if fleet else None,
        compliance=compliance,
        compliance_chart=_compliance_chart(compliance.value) if compliance else None,
        campaigns=rows,
        open_alerts=open_alerts or 0,
        alerts=alerts,
    )
