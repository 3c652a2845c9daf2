"""Raising and acknowledging alerts. Services only flush; the caller commits.

Raising an alert also queues it in the notification outbox (webhooks subscribed to
`alert.<kind>`, and email when configured) in the same transaction, so every committed alert is
delivered and a rolled-back one never is.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.alerts.models import Alert
from otacm.config import Settings, get_settings
from otacm.db import is_postgresql, utcnow
from otacm.errors import Conflict, NotFound
from otacm.notifications import outbox
from otacm.security import audit
from otacm.security.audit import Actor


class AlertKind(StrEnum):
    FAILURE_THRESHOLD = "failure_threshold"
    TIMEOUT_SPIKE = "timeout_spike"
    CAMPAIGN_FINISHED = "campaign_finished"
    END_TIME_REACHED = "end_time_reached"


SEVERITY = {
    AlertKind.FAILURE_THRESHOLD: "critical",
    AlertKind.TIMEOUT_SPIKE: "warning",
    AlertKind.CAMPAIGN_FINISHED: "info",
    AlertKind.END_TIME_REACHED: "warning",
}


def raise_alert(
    session: Session,
    kind: AlertKind,
    message: str,
    *,
    campaign_id: int | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> Alert:
    """Store an alert and queue its notifications. `settings` says whether alert email is
    configured; the process's settings (`OTACM_*`) when not given."""
    alert = Alert(
        kind=kind.value,
        severity=SEVERITY[kind],
        campaign_id=campaign_id,
        message=message,
        details=details or {},
        created_at=now or utcnow(),
    )
    session.add(alert)
    session.flush()
    outbox.enqueue(
        session,
        f"alert.{alert.kind}",
        {
            "alert_id": alert.id,
            "kind": alert.kind,
            "severity": alert.severity,
            "campaign_id": alert.campaign_id,
            "message": alert.message,
            # A notification must never fail the step that raised the alert.
            "details": outbox.json_safe(alert.details),
        },
        now=alert.created_at,
        email=outbox.email_configured(settings or get_settings()),
    )
    return alert


def acknowledge(session: Session, actor: Actor, alert_id: int) -> Alert:
    query = select(Alert).where(Alert.id == alert_id)
    if is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    alert = session.scalar(query)
    if alert is None:
        raise NotFound(f"there is no alert {alert_id}", alert_id=alert_id)
    if alert.acknowledged_at is not None:
        raise Conflict(
            f"alert {alert_id} was acknowledged by {alert.acknowledged_by} already",
            alert_id=alert_id,
        )
    alert.acknowledged_at = utcnow()
    alert.acknowledged_by = actor.name
    audit.record(
        session, actor, "alert.acknowledge", object_type="alert", object_id=alert.id,
        after={"kind": alert.kind, "campaign_id": alert.campaign_id},
    )  # fmt: skip
    session.flush()
    return alert
