"""The JSON the vehicle API sends and takes (docs/vehicle-api.md), as typed values.

Parsing is lenient about what it does not use (a newer server may add fields) and strict about
what it does: a missing or mistyped field the client needs raises `MalformedAnswer`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class MalformedAnswer(ValueError):
    """The server answered with JSON this client cannot read."""


class EventKind(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    POSTPONED = "postponed"
    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_PROGRESS = "download_progress"
    DOWNLOAD_FINISHED = "download_finished"
    INSTALL_STARTED = "install_started"
    INSTALL_FINISHED = "install_finished"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


# The server's view of a deployment, as `offers[].state` and the events answer give it.
OFFERED, POSTPONED, INSTALLED = "offered", "postponed", "installed"
WORKING = frozenset({"accepted", "downloading", "downloaded", "installing"})
# Deployment states after which nothing the vehicle sends changes anything.
SETTLED = frozenset(
    {"succeeded", "declined", "cancelled", "expired", "failed", "rolled_back", "timed_out"}
)


@dataclass(frozen=True, slots=True)
class Preconditions:
    """What must hold before installing. A false or missing flag asks for nothing (`charging:
    false` is "charging not required", not "must not be charging")."""

    parked: bool = False
    min_battery_percent: int = 0
    charging: bool = False
    ignition_off: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    order: int
    ecu_serial: str
    ecu_type: str
    update_id: int
    version: str
    target: str  # the image repository's target path
    length: int
    sha256: str
    encrypted: bool
    wrapped_key: Mapping[str, str] | None
    estimated_install_minutes: float | None


@dataclass(frozen=True, slots=True)
class Offer:
    deployment_id: int
    attempt: int
    state: str
    consent_required: bool
    urgency: str
    preconditions: Preconditions
    window_closes_at: datetime | None
    steps: tuple[Step, ...]
    campaign_name: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One deployment event; `event_id` is ours and makes sending it again safe."""

    event: EventKind
    attempt: int
    code: str | None = None
    detail: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event": self.event.value,
            "attempt": self.attempt,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "code": self.code,
            "detail": self.detail,
        }


def _get(data: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = data.get(name)
    # bool is an int in Python; a flag sent where a number belongs is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedAnswer(f"{name!r} is missing or not {kind.__name__}: {value!r}")
    return value


def _timestamp(text: Any) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedAnswer(f"not an ISO 8601 timestamp: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_step(data: Mapping[str, Any]) -> Step:
    wrapped = data.get("wrapped_key")
    estimate = data.get("estimated_install_minutes")
    return Step(
        order=_get(data, "order", int),
        ecu_serial=_get(data, "ecu_serial", str),
        ecu_type=str(data.get("ecu_type", "")),
        update_id=_get(data, "update_id", int),
        version=_get(data, "version", str),
        target=_get(data, "target", str),
        length=_get(data, "length", int),
        sha256=_get(data, "sha256", str),
        encrypted=bool(data.get("encrypted", False)),
        wrapped_key={str(k): str(v) for k, v in wrapped.items()}
        if isinstance(wrapped, Mapping)
        else None,
        estimated_install_minutes=float(estimate) if isinstance(estimate, int | float) else None,
    )


def parse_offer(data: Mapping[str, Any]) -> Offer:
    conditions = data.get("preconditions") or {}
    window = data.get("maintenance_window") or {}
    campaign = data.get("campaign") or {}
    steps = sorted((parse_step(s) for s in _get(data, "steps", list)), key=lambda s: s.order)
    return Offer(
        deployment_id=_get(data, "deployment_id", int),
        attempt=_get(data, "attempt", int),
        state=_get(data, "state", str),
        consent_required=bool(data.get("consent_required", True)),
        urgency=str(campaign.get("urgency", "")),
        preconditions=Preconditions(
            parked=bool(conditions.get("parked", False)),
            min_battery_percent=int(conditions.get("min_battery_percent") or 0),
            charging=bool(conditions.get("charging", False)),
            ignition_off=bool(conditions.get("ignition_off", False)),
        ),
        window_closes_at=_timestamp(window.get("closes_at")),
        steps=tuple(steps),
        campaign_name=str(campaign.get("name", "")),
    )


def parse_offers(body: Mapping[str, Any]) -> list[Offer]:
    """The offers of a 200 answer to `GET /vehicle/v1/updates`, highest priority first."""
    return [parse_offer(o) for o in _get(body, "offers", list)]


def parse_poll_after(value: str | None, default: float) -> float:
    """Seconds from a `Poll-After` header; `default` when absent or unreadable."""
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        return default
    return seconds if seconds >= 0 else default
