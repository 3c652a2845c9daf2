"""The notification outbox: messages written in the transaction of the event they report.

`enqueue` adds one row per channel that wants the message (each active webhook endpoint
subscribed to its type, and email when it is configured) in the caller's session, so that a
message exists exactly when its event was committed. `delivery.py` sends the rows later.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.db import is_postgresql
from otacm.notifications.models import OutboxMessage, WebhookEndpoint
from otacm.notifications.webhooks import canonical_json


class Status(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: rejected for good, out of attempts, or endpoint deactivated


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


# Every message type otacm sends (docs/webhooks.md, "Message types"): `alert.<alert kind>`.
ALERT_MESSAGE_TYPES = (
    "alert.failure_threshold",
    "alert.timeout_spike",
    "alert.campaign_finished",
    "alert.end_time_reached",
)
# What the customer is told about a deployment (docs/vehicle-api.md): for an owner app or CRM.
CUSTOMER_MESSAGE_TYPES = (
    "customer.scheduled",
    "customer.available",
    "customer.completed",
    "customer.failed",
)
# Alerts also go out by email, when it is configured; customer notices only by webhook.
MESSAGE_TYPES = ALERT_MESSAGE_TYPES + CUSTOMER_MESSAGE_TYPES


def email_configured(settings: Settings) -> bool:
    """Alert email needs a server, a sender and at least one recipient."""
    return bool(settings.smtp_host and settings.alert_email_from and settings.alert_email_to)


def json_safe(value: Any) -> Any:
    """`value` with what JSON cannot carry made plain: NaN and infinities become null, other
    non-JSON values their text. For data that must not fail the transaction it is part of."""
    text = json.dumps(value, default=str, allow_nan=True)
    return json.loads(text, parse_constant=lambda _constant: None)


def wants(endpoint: WebhookEndpoint, message_type: str) -> bool:
    return endpoint.active and (not endpoint.event_types or message_type in endpoint.event_types)


def enqueue(
    session: Session,
    message_type: str,
    data: Mapping[str, Any],
    *,
    now: datetime,
    email: bool,
) -> list[OutboxMessage]:
    """Queue `data` as a `message_type` message for every channel that wants it; flushes.

    Raises:
        ValueError: an unknown message type, or data that is not plain JSON (a caller's bug).
    """
    if message_type not in MESSAGE_TYPES:
        raise ValueError(f"{message_type!r} is not one of the message types otacm sends")
    canonical_json(data)  # refuses NaN, sets, datetimes: what a receiver could not parse
    query = (
        select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True)).order_by(WebhookEndpoint.id)
    )
    if is_postgresql(session.get_bind().dialect):
        # An endpoint being deactivated or removed (`service`, FOR UPDATE) is waited for and
        # then read as it is after: no message is queued for it behind the change's back.
        query = query.with_for_update(read=True)
    endpoints = session.scalars(query)
    channels: list[tuple[Channel, int | None]] = [
        (Channel.WEBHOOK, endpoint.id) for endpoint in endpoints if wants(endpoint, message_type)
    ]
    if email:
        channels.append((Channel.EMAIL, None))
    rows = [
        OutboxMessage(
            message_id=str(uuid.uuid4()),
            channel=channel.value,
            endpoint_id=endpoint_id,
            message_type=message_type,
            data=dict(data),
            created_at=now,
            status=Status.PENDING.value,
            attempts=0,
            next_attempt_at=now,
        )
        for channel, endpoint_id in channels
    ]
    session.add_all(rows)
    session.flush()
    return rows
