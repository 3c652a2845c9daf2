"""HTTP endpoints of webhook endpoints (`webhooks.manage`, admins only): manage them, rotate a
secret, read deliveries. A secret is in the answers of create and rotate only."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Body as BodyParam

from otacm.deps import SessionDep, SettingsDep, WriteSessionDep
from otacm.notifications import service
from otacm.notifications.outbox import Status
from otacm.notifications.schemas import (
    DeliveryPage,
    RotateSecret,
    SecretRotated,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission

router = APIRouter(prefix="/api/v1", tags=["webhooks"])
Manager = Annotated[Principal, Depends(require(Permission.WEBHOOKS_MANAGE))]


@router.post("/webhooks", response_model=WebhookCreated, status_code=201)
def create_webhook(
    body: WebhookCreate, session: WriteSessionDep, principal: Manager, settings: SettingsDep
) -> WebhookCreated:
    """A new endpoint. The answer holds its secret, which is never shown again."""
    endpoint, secret = service.create(session, principal.actor, body, settings=settings)
    return WebhookCreated(**service.out(session, endpoint).model_dump(), secret=secret)


@router.get("/webhooks", response_model=list[WebhookOut])
def list_webhooks(session: SessionDep, _: Manager) -> list[WebhookOut]:
    return service.list_out(session)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: int, session: SessionDep, _: Manager) -> WebhookOut:
    return service.out(session, service.get(session, webhook_id))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookOut)
def update_webhook(
    webhook_id: int, body: WebhookUpdate, session: WriteSessionDep, principal: Manager
) -> WebhookOut:
    """Change the URL, description, message types or whether it is active."""
    endpoint = service.update(session, principal.actor, webhook_id, body)
    return service.out(session, endpoint)


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: int, session: WriteSessionDep, principal: Manager) -> Response:
    """Remove the endpoint, its secrets and its deliveries (pending ones are not sent)."""
    service.delete(session, principal.actor, webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/rotate-secret", response_model=SecretRotated)
def rotate_webhook_secret(
    webhook_id: int,
    session: WriteSessionDep,
    principal: Manager,
    settings: SettingsDep,
    body: Annotated[RotateSecret | None, BodyParam()] = None,
) -> SecretRotated:
    """A new secret, shown once; the current one keeps signing for the grace period."""
    grace = timedelta(seconds=(body or RotateSecret()).grace_period_seconds)
    _, secret, expires = service.rotate_secret(
        session, principal.actor, webhook_id, grace=grace, settings=settings
    )
    return SecretRotated(id=webhook_id, secret=secret, previous_secret_expires_at=expires)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(
    webhook_id: int,
    session: SessionDep,
    _: Manager,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> DeliveryPage:
    """The endpoint's messages, newest first, with attempts and the last answer."""
    return service.deliveries(session, webhook_id, status=status, limit=limit, cursor=cursor)
