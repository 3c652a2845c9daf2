"""Customer notices: what the owner is told about an update to their vehicle, and when.

Four kinds, each recorded per deployment (`customer_notices`, the text as sent) and queued as a
signed webhook message `customer.<kind>` for an owner app or CRM:

- `scheduled` — the vehicle's wave is open but the offer waits for the campaign's maintenance
  window: when it opens, and what the update is;
- `available` — the offer is made: the notice for the vehicle's screen (purpose, what changes,
  duration, unavailable functions, instructions), in the vehicle's language where the campaign
  has it;
- `completed` — the vehicle's manifest confirmed the new software;
- `failed` — the update failed or was rolled back (the vehicle runs its previous software).

Each kind is sent once per deployment attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns.models import Campaign, Deployment
from otacm.notifications import outbox
from otacm.vehicle_api.models import CustomerNotice

SCHEDULED = "scheduled"
AVAILABLE = "available"
COMPLETED = "completed"
FAILED = "failed"


def pick_language(available: list[str], accept_language: str | None) -> str | None:
    """The first language of `Accept-Language` the campaign has (a region-less match counts:
    `de-AT` takes `de`); else the campaign's first language; None when it has none."""
    if not available:
        return None
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if not tag:
            continue
        for candidate in (tag, tag.split("-")[0]):
            for language in available:
                if language.lower() == candidate:
                    return language
    return available[0]


def notice_of(campaign: Campaign, accept_language: str | None) -> dict[str, Any] | None:
    notices = campaign.user_notice or {}
    language = pick_language(list(notices), accept_language)
    if language is None:
        return None
    return {"language": language, **notices[language]}


def _already(session: Session, deployment: Deployment, kind: str) -> bool:
    found = session.scalar(
        select(CustomerNotice.id)
        .where(
            CustomerNotice.deployment_id == deployment.id,
            CustomerNotice.kind == kind,
            # One per attempt: a retried deployment tells the customer again.
            CustomerNotice.attempt == deployment.attempts,
        )
        .limit(1)
    )
    return found is not None


def send(
    session: Session,
    kind: str,
    deployment: Deployment,
    campaign: Campaign,
    vin: str,
    now: datetime,
    *,
    accept_language: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Record the notice and queue its webhook message, once per deployment attempt; returns
    whether it was sent now."""
    if _already(session, deployment, kind):
        return False
    notice = notice_of(campaign, accept_language)
    content: dict[str, Any] = {
        "attempt": deployment.attempts,
        "campaign": {"id": campaign.id, "name": campaign.name, "category": campaign.category},
        "notice": notice,
        **(extra or {}),
    }
    session.add(
        CustomerNotice(
            deployment_id=deployment.id,
            vehicle_id=deployment.vehicle_id,
            campaign_id=campaign.id,
            kind=kind,
            attempt=deployment.attempts,
            language=notice["language"] if notice else None,
            at=now,
            content=content,
        )
    )
    outbox.enqueue(
        session,
        f"customer.{kind}",
        outbox.json_safe(
            {"vin": vin, "deployment_id": deployment.id, "at": now.isoformat(), **content}
        ),
        now=now,
        email=False,
    )
    return True
