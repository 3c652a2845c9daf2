"""The answer to a vehicle's poll: its offers, their ETag, and when to ask again.

`offers_for` (campaigns) decides what is offered; this module turns the offers into what the
vehicle reads (docs/vehicle-api.md): campaign, consent rule, the strictest preconditions of the
updates, the maintenance window's end, the notice in the vehicle's language, the ordered ECU
steps and, for encrypted files, the data key wrapped to the vehicle's X25519 key.

The ETag covers everything but the wrapped keys (a fresh ephemeral key each time: the same
data key, different bytes) and `poll_after_s`, so an unchanged offer answers 304.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from otacm.campaigns.models import Campaign, Deployment
from otacm.campaigns.offers import Offer, in_open_waves, offers_for
from otacm.campaigns.policy import RolloutPolicy, current_window_end, next_window_start
from otacm.campaigns.schemas import CampaignState
from otacm.campaigns.states import DeploymentState
from otacm.config import Settings
from otacm.fleet.models import Vehicle
from otacm.security import encryption
from otacm.updates.models import SoftwareUpdate
from otacm.updates.schemas import Preconditions
from otacm.updates.service import data_key_of, key_context
from otacm.vehicle_api import notices
from otacm.vehicle_api.assignment import Step, steps_for


def poll_after(settings: Settings, active: bool, rng: random.Random | None = None) -> int:
    """Seconds until the next poll: the active or idle period, ±`vehicle_poll_jitter`."""
    base = (settings.vehicle_poll_active if active else settings.vehicle_poll_idle).total_seconds()
    jitter = settings.vehicle_poll_jitter
    spread = (rng or random).uniform(1 - jitter, 1 + jitter)
    return max(1, round(base * spread))


def _preconditions(updates: Sequence[SoftwareUpdate]) -> dict[str, Any]:
    """The strictest of the updates' preconditions: every one must hold."""
    merged = Preconditions(parked=False, ignition_off=False)
    for update in updates:
        each = Preconditions.model_validate(update.preconditions or {})
        merged.parked |= each.parked
        merged.ignition_off |= each.ignition_off
        merged.charging |= each.charging
        if each.min_battery_percent is not None:
            merged.min_battery_percent = max(
                merged.min_battery_percent or 0, each.min_battery_percent
            )
    return merged.model_dump()


def _window(campaign: Campaign, now: datetime) -> dict[str, Any] | None:
    windows = RolloutPolicy.model_validate(campaign.rollout).maintenance_windows
    if not windows:
        return None
    closes = current_window_end(now, windows)
    return {"closes_at": closes.isoformat() if closes else None}


class _Wrapper:
    """Data keys of confidential updates, wrapped to one vehicle's key; unwrapped once each."""

    def __init__(self, vehicle: Vehicle, updates: dict[int, SoftwareUpdate], settings: Settings):
        self.vehicle_key = (
            encryption.decode_vehicle_public_key(vehicle.vehicle_public_key)
            if vehicle.vehicle_public_key
            else None
        )
        self.updates = updates
        self.settings = settings
        self.data_keys: dict[int, bytes | None] = {}

    def wrapped(self, update_id: int) -> dict[str, str] | None:
        if self.vehicle_key is None:
            return None  # the vehicle reports it cannot decrypt; see docs/vehicle-api.md
        if update_id not in self.data_keys:
            self.data_keys[update_id] = data_key_of(self.updates[update_id], self.settings)
        data_key = self.data_keys[update_id]
        if data_key is None:
            return None
        return encryption.wrap_for_vehicle(
            data_key, self.vehicle_key, context=key_context(update_id)
        )


def _step(step: Step, wrapper: _Wrapper) -> dict[str, Any]:
    fields = asdict(step)
    del fields["deployment_id"], fields["hardware_id"], fields["release_counter"]
    if step.encrypted:
        fields["wrapped_key"] = wrapper.wrapped(step.update_id)
    return fields


def offer_document(
    offer: Offer,
    steps: Sequence[Step],
    vehicle: Vehicle,
    wrapper: _Wrapper,
    now: datetime,
    accept_language: str | None,
) -> dict[str, Any]:
    deployment, campaign = offer.deployment, offer.campaign
    return {
        "deployment_id": deployment.id,
        "attempt": deployment.attempts + 1,
        "state": deployment.state,
        "campaign": {
            "id": campaign.id,
            "name": campaign.name,
            "category": campaign.category,
            "urgency": campaign.urgency,
            "priority": campaign.priority,
            "ends_at": campaign.ends_at.isoformat() if campaign.ends_at else None,
        },
        "consent_required": campaign.consent_required,
        "preconditions": _preconditions(offer.updates),
        "maintenance_window": _window(campaign, now),
        "notice": notices.notice_of(campaign, accept_language),
        "director": f"/tuf/director/{vehicle.vin}/",
        "steps": [_step(s, wrapper) for s in steps],
    }


def etag_of(offers: Sequence[dict[str, Any]]) -> str:
    stable = [
        {**o, "steps": [{k: v for k, v in s.items() if k != "wrapped_key"} for s in o["steps"]]}
        for o in offers
    ]
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def _announce_waiting(
    session: Session, vehicle: Vehicle, now: datetime, language: str | None
) -> None:
    """A `scheduled` notice for each deployment whose wave is open but whose campaign's
    maintenance window is not: the customer learns when it will come."""
    rows = session.execute(
        in_open_waves(vehicle.id).where(
            Deployment.state == DeploymentState.PENDING.value,
            Campaign.state == CampaignState.RUNNING.value,
        )
    ).all()
    for deployment, campaign in rows:
        windows = RolloutPolicy.model_validate(campaign.rollout).maintenance_windows
        opens = next_window_start(now, windows) if windows else None
        if opens is None or current_window_end(now, windows) is not None:
            continue
        notices.send(
            session, notices.SCHEDULED, deployment, campaign, vehicle.vin, now,
            accept_language=language, extra={"window_opens_at": opens.isoformat()},
        )  # fmt: skip


def poll(
    session: Session,
    vehicle: Vehicle,
    settings: Settings,
    now: datetime,
    accept_language: str | None,
) -> list[dict[str, Any]]:
    """Make the offers due for the vehicle and return what it reads (empty: nothing now)."""
    offers = offers_for(session, vehicle, now)
    for offer in offers:
        if offer.deployment.state == DeploymentState.OFFERED.value and (
            offer.deployment.state_entered_at == now
        ):
            notices.send(
                session, notices.AVAILABLE, offer.deployment, offer.campaign, vehicle.vin, now,
                accept_language=accept_language,
            )  # fmt: skip
    _announce_waiting(session, vehicle, now, accept_language)
    if not offers:
        return []
    steps = steps_for(session, [(o.deployment, o.updates) for o in offers])
    updates = {u.id: u for o in offers for u in o.updates}
    wrapper = _Wrapper(vehicle, updates, settings)
    return [
        offer_document(o, steps[o.deployment.id], vehicle, wrapper, now, accept_language)
        for o in offers
    ]
