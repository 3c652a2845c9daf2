"""The simulated car around the client: its ECUs with A/B banks, its conditions, its owner.

This is the part of the simulator a real vehicle replaces with hardware: the state of charge
and the gear lever instead of `Conditions`, the driver's tap on the screen instead of
`OwnerBehaviour.decide`, the ECUs' flash banks instead of `EcuState`. `VehicleState` is what a
real Primary keeps in its secure storage across restarts (what each ECU runs, the manifest
counter, the attacks not yet reported); it is saved as JSON in the client's work directory.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from otacm.simulator.records import ProvisioningRecord
from otacm.simulator.wire import Preconditions


@dataclass(slots=True)
class Image:
    """Software in one bank of an ECU."""

    version: str
    sha256: str | None  # None: the software as built, whose image hash the vehicle never saw
    release_counter: int  # 0 for the software as built


@dataclass(slots=True)
class EcuState:
    """One ECU with A/B banks: `active` runs; `fallback` is what it falls back to when the
    new image fails its health check."""

    serial: str
    ecu_type: str
    hardware_id: str
    active: Image
    fallback: Image | None = None

    def switch_to(self, image: Image) -> None:
        """The new image was written to the inactive bank; boot from it."""
        self.fallback, self.active = self.active, image

    def fall_back(self) -> None:
        """The new image failed to come up: boot the previous bank again."""
        if self.fallback is not None:
            self.active, self.fallback = self.fallback, None


@dataclass(slots=True)
class VehicleState:
    """What survives a restart of the client: the vehicle's ground truth."""

    ecus: dict[str, EcuState]
    report_counter: int = 0
    attacks: list[str] = field(default_factory=list)  # refused, not yet in an accepted manifest
    # Our last word on a deployment attempt, "deployment_id/attempt" -> outcome, so that an
    # offer seen again after a restart is not worked on twice.
    outcomes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def as_built(cls, record: ProvisioningRecord) -> VehicleState:
        return cls(
            ecus={
                e.serial: EcuState(
                    e.serial, e.ecu_type, e.hardware_id, Image(e.software_version, None, 0)
                )
                for e in record.ecus
            }
        )

    @classmethod
    def load(cls, path: Path, record: ProvisioningRecord) -> VehicleState:
        """The state saved at `path`, or the vehicle as built when there is none."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls.as_built(record)
        ecus = {}
        for serial, e in data["ecus"].items():
            fallback = e.get("fallback")
            ecus[serial] = EcuState(
                serial,
                e["ecu_type"],
                e["hardware_id"],
                Image(**e["active"]),
                Image(**fallback) if fallback else None,
            )
        return cls(ecus, data["report_counter"], data["attacks"], data["outcomes"])

    def save(self, path: Path) -> None:
        """Written to a new file and renamed: a crash never leaves half a state behind."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(partial, path)

    def installed(self) -> dict[str, str]:
        """Serial -> the version it runs."""
        return {serial: ecu.active.version for serial, ecu in self.ecus.items()}


@dataclass(slots=True)
class Conditions:
    battery_percent: float = 80.0
    parked: bool = True
    ignition_on: bool = False
    charging: bool = False


def unmet(required: Preconditions, now: Conditions) -> list[str]:
    """What keeps the vehicle from installing now, in words; empty when nothing does."""
    missing = []
    if required.parked and not now.parked:
        missing.append("not parked")
    if required.ignition_off and now.ignition_on:
        missing.append("ignition on")
    if now.battery_percent < required.min_battery_percent:
        missing.append(f"battery {now.battery_percent:.0f} % < {required.min_battery_percent} %")
    if required.charging and not now.charging:
        missing.append("not charging")
    return missing


@dataclass(frozen=True, slots=True)
class DrivingPattern:
    """How the simulated cars are used: trips and stops of random length (exponential with
    these means), the battery draining while driving and filling while charging."""

    mean_trip_s: float = 25 * 60.0  # simulated seconds
    mean_stop_s: float = 90 * 60.0  # simulated seconds
    drain_per_s: float = 20 / 3600  # battery percent per second while driving
    charge_per_s: float = 40 / 3600  # battery percent per second while charging
    plugged_in: float = 0.4  # share of stops at a charger
    battery_at_start: tuple[float, float] = (25.0, 100.0)  # percent, uniform

    def __post_init__(self) -> None:
        if min(self.mean_trip_s, self.mean_stop_s) <= 0:
            raise ValueError("mean trip and stop durations must be positive")
        low, high = self.battery_at_start
        if not 0 <= low <= high <= 100 or not 0 <= self.plugged_in <= 1:
            raise ValueError("battery percentages lie in 0..100, low <= high; plugged_in in 0..1")


class ConditionModel:
    """One car going about its day along a `DrivingPattern`."""

    def __init__(self, rng: random.Random, pattern: DrivingPattern | None = None) -> None:
        self.rng = rng
        self.pattern = p = pattern or DrivingPattern()
        parked = rng.random() < p.mean_stop_s / (p.mean_stop_s + p.mean_trip_s)
        self.now = Conditions(
            battery_percent=rng.uniform(*p.battery_at_start),
            parked=parked,
            ignition_on=not parked,
            charging=parked and rng.random() < p.plugged_in,
        )

    def advance(self, seconds: float) -> Conditions:
        """The conditions `seconds` later."""
        now, p = self.now, self.pattern
        if now.parked:
            if now.charging:
                now.battery_percent = min(100.0, now.battery_percent + p.charge_per_s * seconds)
            if self.rng.random() < 1 - math.exp(-seconds / p.mean_stop_s):
                now.parked, now.ignition_on, now.charging = False, True, False
        else:
            now.battery_percent = max(5.0, now.battery_percent - p.drain_per_s * seconds)
            if self.rng.random() < 1 - math.exp(-seconds / p.mean_trip_s):
                now.parked, now.ignition_on = True, False
                # A driver with a low battery looks for a charger.
                now.charging = self.rng.random() < p.plugged_in or now.battery_percent < 30
        return now


class Consent(StrEnum):
    ACCEPT = "accepted"
    POSTPONE = "postponed"
    DECLINE = "declined"


@dataclass(frozen=True, slots=True)
class OwnerBehaviour:
    """How the owner answers an offer that needs consent: probabilities of postponing and of
    declining; the rest accept."""

    postpone_rate: float = 0.0
    decline_rate: float = 0.0

    def __post_init__(self) -> None:
        if (
            min(self.postpone_rate, self.decline_rate) < 0
            or self.postpone_rate + self.decline_rate > 1
        ):
            raise ValueError("postpone and decline rates are probabilities adding up to at most 1")

    def decide(self, rng: random.Random) -> Consent:
        draw = rng.random()
        if draw < self.decline_rate:
            return Consent.DECLINE
        if draw < self.decline_rate + self.postpone_rate:
            return Consent.POSTPONE
        return Consent.ACCEPT


@dataclass(frozen=True, slots=True)
class InstallBehaviour:
    """How installing goes: how long writing an image takes (simulated seconds, uniform in the
    range) and how often the new image fails its health check (then the ECU falls back)."""

    duration_s: tuple[float, float] = (60.0, 600.0)
    failure_rate: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.duration_s
        if not 0 <= low <= high:
            raise ValueError("install duration is a range of seconds, low <= high")
        if not 0 <= self.failure_rate <= 1:
            raise ValueError("the install failure rate is a probability")
