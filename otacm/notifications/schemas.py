"""API shapes of webhook endpoints and their deliveries. A secret appears only in the answers of
create and rotate (`WebhookCreated`, `SecretRotated`), never in what is listed or read."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

# How long a rotated-out secret keeps signing by default, and at most.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)
MAX_ROTATION_GRACE = timedelta(days=30)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str  # checked by `webhooks.validate_webhook_url` (at most 2048 characters, …)
    description: str = Field(default="", max_length=500)
    # Message types to receive (e.g. "alert.failure_threshold"); empty: every type.
    event_types: list[str] = Field(default_factory=list, max_length=50)
    active: bool = True


class WebhookUpdate(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None  # checked as WebhookCreate.url
    description: str | None = Field(default=None, max_length=500)
    event_types: list[str] | None = Field(default=None, max_length=50)
    active: bool | None = None


class SecretInfo(BaseModel):
    """When a secret was made and, while it is being rotated out, until when it signs."""

    created_at: datetime
    expires_at: datetime | None


class WebhookOut(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    active: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    secrets: list[SecretInfo]  # newest first; no secret values


class WebhookCreated(WebhookOut):
    secret: str  # shown this once; otacm cannot show it again


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seconds the current secret keeps signing beside the new one; 0 retires it at once.
    grace_period_seconds: int = Field(
        default=int(DEFAULT_ROTATION_GRACE.total_seconds()),
        ge=0,
        le=int(MAX_ROTATION_GRACE.total_seconds()),
    )


class SecretRotated(BaseModel):
    id: int
    secret: str  # the new secret, shown this once
    previous_secret_expires_at: datetime | None  # None: no previous secret is kept


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    message_id: str
    message_type: str
    created_at: datetime
    status: str  # pending | delivered | failed
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    response_snippet: str | None
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
