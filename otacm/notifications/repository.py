"""Queries on webhook endpoints' secrets, shared by the operators' side (`service.py`) and the
delivery worker (`delivery.py`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from otacm.notifications.models import WebhookSecret


def _signing(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now)


def active_secrets(session: Session, endpoint_id: int, now: datetime) -> list[WebhookSecret]:
    """The secrets that sign an endpoint's messages now, newest first."""
    return active_secrets_of(session, [endpoint_id], now).get(endpoint_id, [])


def active_secrets_of(
    session: Session, endpoint_ids: Collection[int], now: datetime
) -> dict[int, list[WebhookSecret]]:
    """`active_secrets` of several endpoints in one query; an endpoint without any is absent."""
    if not endpoint_ids:
        return {}
    rows = session.scalars(
        select(WebhookSecret)
        .where(WebhookSecret.endpoint_id.in_(endpoint_ids), _signing(now))
        .order_by(WebhookSecret.endpoint_id, WebhookSecret.id.desc())
    )
    found: dict[int, list[WebhookSecret]] = {}
    for row in rows:
        found.setdefault(row.endpoint_id, []).append(row)
    return found
