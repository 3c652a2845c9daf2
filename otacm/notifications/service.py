"""Webhook endpoints as operators manage them: create, change, delete, rotate the secret, and
read their deliveries. Services only flush; the caller commits.

A new secret is returned once, to be shown once; only its wrapped form is stored. Audit entries
name the endpoint's origin (scheme, host, port) rather than its URL, whose path or query may
carry a receiver's token, and never a secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.db import is_postgresql, utcnow
from otacm.errors import NotFound, ValidationFailed
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.notifications import _sealing
from otacm.notifications.models import OutboxMessage, WebhookEndpoint, WebhookSecret
from otacm.notifications.outbox import MESSAGE_TYPES, Status
from otacm.notifications.repository import active_secrets, active_secrets_of
from otacm.notifications.schemas import (
    DeliveryOut,
    DeliveryPage,
    SecretInfo,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
)
from otacm.notifications.webhooks import generate_secret, origin, validate_webhook_url
from otacm.security import audit
from otacm.security.audit import Actor


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class UnknownEventType(ValidationFailed):
    code = "unknown_event_type"


# Why the pending messages of a deactivated endpoint were given up (docs/webhooks.md).
DEACTIVATED = "not sent: the webhook endpoint was deactivated"


def _event_types(values: Iterable[str]) -> list[str]:
    chosen = sorted(set(values))
    for value in chosen:
        if value not in MESSAGE_TYPES:
            raise UnknownEventType(
                f"event_types: {value[:80]!r} is not a message type otacm sends; "
                f"one of {', '.join(MESSAGE_TYPES)} (or none for every type)",
                field="event_types",
            )
    return chosen


def _summary(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "url": origin(endpoint.url),
        "description": endpoint.description,
        "event_types": list(endpoint.event_types),
        "active": endpoint.active,
    }


def get(session: Session, webhook_id: int, *, for_update: bool = False) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id)
    if for_update and is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    endpoint = session.scalar(query)
    if endpoint is None:
        raise WebhookNotFound(f"there is no webhook {webhook_id}", webhook_id=webhook_id)
    return endpoint


def list_all(session: Session) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)))


def create(
    session: Session,
    actor: Actor,
    data: WebhookCreate,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (43 URL-safe characters), which is not kept readable.

    Raises:
        InvalidWebhookUrl, UnknownEventType: naming the field.
        KeysNotInitialised: no server key to encrypt the secret with (`otacm keys init`).
    """
    now = now or utcnow()
    url = validate_webhook_url(data.url, field="url")
    event_types = _event_types(data.event_types)
    key = _sealing.server_key(settings, create=True)  # before anything is written
    endpoint = WebhookEndpoint(
        url=url,
        description=data.description,
        event_types=event_types,
        active=data.active,
        created_at=now,
        created_by=actor.name,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    secret = generate_secret()
    session.add(
        WebhookSecret(
            endpoint_id=endpoint.id,
            wrapped_secret=_sealing.seal(secret, key, endpoint.id),
            created_at=now,
        )
    )
    audit.record(
        session, actor, "webhook.create", object_type="webhook", object_id=endpoint.id,
        after=_summary(endpoint),
    )  # fmt: skip
    session.flush()
    return endpoint, secret.decode("ascii")


def update(
    session: Session,
    actor: Actor,
    webhook_id: int,
    data: WebhookUpdate,
    *,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """Change what `data` gives. Deactivating gives up the endpoint's pending messages too
    (status failed), one being attempted at this moment included: its outcome is not recorded.

    Raises:
        WebhookNotFound; InvalidWebhookUrl, UnknownEventType, ValidationFailed: naming the field.
    """
    endpoint = get(session, webhook_id, for_update=True)
    before = _summary(endpoint)
    given = data.model_fields_set
    for name in ("url", "description", "active", "event_types"):
        if name in given and getattr(data, name) is None:
            raise ValidationFailed(f"{name}: may not be null", field=name)
    changed = []
    if data.url is not None:
        url = validate_webhook_url(data.url, field="url")
        if url != endpoint.url:
            endpoint.url = url
            changed.append("url")
    if data.event_types is not None:
        event_types = _event_types(data.event_types)
        if event_types != list(endpoint.event_types):
            endpoint.event_types = event_types
            changed.append("event_types")
    if data.description is not None and data.description != endpoint.description:
        endpoint.description = data.description
        changed.append("description")
    given_up: int | None = None
    if data.active is not None and data.active != endpoint.active:
        endpoint.active = data.active
        changed.append("active")
        if not endpoint.active:
            given_up = _give_up_pending(session, endpoint.id)
    if changed:
        endpoint.updated_at = now or utcnow()
        after = {**_summary(endpoint), "changed": changed}
        if given_up is not None:
            after["pending_messages_given_up"] = given_up
        audit.record(
            session, actor, "webhook.update", object_type="webhook", object_id=endpoint.id,
            before=before, after=after,
        )  # fmt: skip
    session.flush()
    return endpoint


def _give_up_pending(session: Session, webhook_id: int) -> int:
    """Fail the endpoint's pending messages in one statement; how many there were. A lease is
    cleared too, so that the outcome of an attempt under way cannot put its message back."""
    result = session.execute(
        sql_update(OutboxMessage)
        .where(
            OutboxMessage.endpoint_id == webhook_id, OutboxMessage.status == Status.PENDING.value
        )
        .values(
            status=Status.FAILED.value,
            next_attempt_at=None,
            locked_until=None,
            claim_token=None,
            last_error=DEACTIVATED,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete(session: Session, actor: Actor, webhook_id: int) -> None:
    """Remove the endpoint with its secrets and its deliveries, pending ones included."""
    endpoint = get(session, webhook_id, for_update=True)
    pending = session.scalar(
        select(func.count()).where(
            OutboxMessage.endpoint_id == webhook_id, OutboxMessage.status == Status.PENDING.value
        )
    )
    audit.record(
        session, actor, "webhook.delete", object_type="webhook", object_id=webhook_id,
        before=_summary(endpoint), after={"pending_messages_dropped": pending},
    )  # fmt: skip
    # Children first, explicitly: the foreign keys cascade too, but not every SQLite
    # connection need have them switched on.
    for model in (OutboxMessage, WebhookSecret):
        session.execute(sql_delete(model).where(model.endpoint_id == webhook_id))
    session.delete(endpoint)
    session.flush()


def rotate_secret(
    session: Session,
    actor: Actor,
    webhook_id: int,
    *,
    grace: timedelta,
    settings: Settings,
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str, datetime | None]:
    """A new secret for the endpoint; the current one keeps signing beside it for `grace`
    (none when zero). At most two secrets sign at a time: one still retiring from an earlier
    rotation stops now. Returns the endpoint, the new secret and when the old one stops.

    Raises:
        WebhookNotFound; KeysNotInitialised: no server key (`otacm keys init`).
    """
    now = now or utcnow()
    endpoint = get(session, webhook_id, for_update=True)
    key = _sealing.server_key(settings, create=True)
    current = active_secrets(session, webhook_id, now)
    keep = current[0] if current and grace > timedelta(0) else None
    retiring_until = None
    if keep is not None:
        retiring_until = now + grace
        if keep.expires_at is not None:
            retiring_until = min(retiring_until, keep.expires_at)
        keep.expires_at = retiring_until
    every = select(WebhookSecret).where(WebhookSecret.endpoint_id == webhook_id)
    for row in session.scalars(every):
        if row is not keep:
            session.delete(row)
    secret = generate_secret()
    session.add(
        WebhookSecret(
            endpoint_id=webhook_id,
            wrapped_secret=_sealing.seal(secret, key, webhook_id),
            created_at=now,
        )
    )
    endpoint.updated_at = now
    audit.record(
        session, actor, "webhook.rotate_secret", object_type="webhook", object_id=webhook_id,
        after={
            "url": origin(endpoint.url),
            "grace_period_seconds": int(grace.total_seconds()),
            "previous_secret_expires_at": retiring_until.isoformat() if retiring_until else None,
        },
    )  # fmt: skip
    session.flush()
    return endpoint, secret.decode("ascii"), retiring_until


def out(session: Session, endpoint: WebhookEndpoint, *, now: datetime | None = None) -> WebhookOut:
    return _out(endpoint, active_secrets(session, endpoint.id, now or utcnow()))


def list_out(session: Session, *, now: datetime | None = None) -> list[WebhookOut]:
    """Every endpoint as the API shows it; their secrets' dates come from one query."""
    endpoints = list_all(session)
    secrets = active_secrets_of(session, [e.id for e in endpoints], now or utcnow())
    return [_out(endpoint, secrets.get(endpoint.id, [])) for endpoint in endpoints]


def _out(endpoint: WebhookEndpoint, secrets: list[WebhookSecret]) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=list(endpoint.event_types),
        active=endpoint.active,
        created_at=endpoint.created_at,
        created_by=endpoint.created_by,
        updated_at=endpoint.updated_at,
        secrets=[SecretInfo(created_at=s.created_at, expires_at=s.expires_at) for s in secrets],
    )


def deliveries(
    session: Session,
    webhook_id: int,
    *,
    status: Status | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> DeliveryPage:
    """The endpoint's messages, newest first."""
    get(session, webhook_id)
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.endpoint_id == webhook_id)
        .order_by(OutboxMessage.id.desc())
    )
    if status is not None:
        query = query.where(OutboxMessage.status == status.value)
    if cursor:
        query = query.where(OutboxMessage.id < decode_cursor(cursor))
    rows = list(session.scalars(query.limit(limit + 1)))
    return DeliveryPage(
        items=[DeliveryOut.model_validate(row) for row in rows[:limit]],
        next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None,
    )


def delivery_counts(session: Session) -> dict[int, dict[str, int]]:
    """Per endpoint, how many of its messages are in each status."""
    counts: dict[int, dict[str, int]] = {}
    rows = session.execute(
        select(WebhookEndpoint.id, OutboxMessage.status, func.count())
        .join(OutboxMessage, OutboxMessage.endpoint_id == WebhookEndpoint.id)
        .group_by(WebhookEndpoint.id, OutboxMessage.status)
    )
    for endpoint_id, status, count in rows:
        counts.setdefault(endpoint_id, {})[status] = count
    return counts
