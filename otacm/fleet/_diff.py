"""What one batch of validated records changes in the registry: computed in memory.

`BatchDiff` holds the stored state of every vehicle and ECU the batch touches, applies the
records one by one (so that two records of one batch see each other's effects) and collects the
rows to insert and update. It does no I/O; the importer loads the state and writes the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from otacm.fleet.records import EcuRecord, VehicleRecord

# The registry's current view of one vehicle and one ECU, as loaded for the batch.


@dataclass(slots=True)
class StoredVehicle:
    id: int
    vin: str
    data: tuple[Any, ...]  # the comparable vehicle fields, see `vehicle_data`
    exported_at: datetime


@dataclass(slots=True)
class StoredEcu:
    id: int
    serial: str
    vehicle_id: int
    owner_vin: str
    owner_exported_at: datetime
    hardware: tuple[str, str, str, str]  # ecu_type, part number, version, protocol
    software: tuple[str, str, str | None]  # part number, version, calibration id
    software_source: str
    software_observed_at: datetime
    import_id: int | None
    removed_at: datetime | None
    changed: bool = False


def vehicle_data(r: VehicleRecord) -> tuple[Any, ...]:
    return (
        r.engine_number,
        r.chassis_number,
        r.model,
        r.model_year,
        r.fuel_type,
        r.region,
        r.country,
        r.manufactured_at,
        r.vehicle_public_key,
        r.rxswin,
        r.attributes,
    )


def ecu_hardware(e: EcuRecord) -> tuple[str, str, str, str]:
    return (e.ecu_type, e.hardware_part_number, e.hardware_version, e.protocol)


def ecu_software(e: EcuRecord) -> tuple[str, str, str | None]:
    return (e.software_part_number, e.software_version, e.calibration_id)


class RecordConflict(Exception):
    """The record contradicts newer data or an earlier record of the same file."""

    def __init__(self, field: str, reason: str, ecu: int | None = None) -> None:
        super().__init__(reason)
        self.field, self.reason, self.ecu = field, reason, ecu


@dataclass
class Counts:
    vehicles_created: int = 0
    vehicles_updated: int = 0
    vehicles_unchanged: int = 0
    vehicles_stale: int = 0
    ecus_created: int = 0
    ecus_updated: int = 0
    ecus_replaced: int = 0
    ecus_removed: int = 0
    ecus_unchanged: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class BatchDiff:
    import_id: int
    now: datetime
    timestamp: Callable[[datetime], Any]  # the engine's representation of a timestamp
    vehicles: dict[str, StoredVehicle]
    ecus: dict[str, StoredEcu]
    active_by_vehicle: dict[int, list[str]]
    new_ids: Iterator[int]
    # VINs already taken earlier in the same file: a repeat may only restate them.
    repeated_vins: dict[str, int] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    new_vehicles: list[tuple[Any, ...]] = field(default_factory=list)
    changed_vehicles: dict[int, VehicleRecord] = field(default_factory=dict)
    new_ecus: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    # Vehicles this batch creates, by VIN: what a repeat of the VIN must restate exactly.
    created: dict[str, VehicleRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.now_value = self.timestamp(self.now)

    def apply(self, record: VehicleRecord, line: int) -> bool:
        """Apply one record, or raise RecordConflict and change nothing.

        Returns False for a stale record (older than the registry's data), which changes and
        claims nothing.
        """
        exported_at = record.exported_at
        created = self.created.get(record.vin)
        if created is not None:
            # Compared only when a VIN repeats: most records never need their signature.
            if _signature(created) != _signature(record):
                raise RecordConflict(
                    "vin",
                    f"VIN repeats line {self.repeated_vins[record.vin]} of this file "
                    "with different data",
                )
            self.counts.vehicles_unchanged += 1
            self.counts.ecus_unchanged += len(record.ecus)
            return True
        stored = self.vehicles.get(record.vin)
        repeat_of = self.repeated_vins.get(record.vin)
        if stored is not None and exported_at < stored.exported_at:
            if repeat_of is not None:
                raise RecordConflict(
                    "vin", f"VIN repeats line {repeat_of} of this file with different data"
                )
            self.counts.vehicles_stale += 1
            return False
        data = vehicle_data(record)
        vehicle_changed = stored is None or data != stored.data
        plan = self._plan_ecus(record, stored)
        ecu_changes = any(kind != "same" for kind, _ in plan) or self._removals(record, stored)
        if repeat_of is not None and (
            vehicle_changed or ecu_changes or stored is None or exported_at != stored.exported_at
        ):
            raise RecordConflict(
                "vin", f"VIN repeats line {repeat_of} of this file with different data"
            )
        self.repeated_vins.setdefault(record.vin, line)

        if stored is None:
            vehicle_id = next(self.new_ids)
            stored = StoredVehicle(vehicle_id, record.vin, data, exported_at)
            self.vehicles[record.vin] = stored
            self.created[record.vin] = record
            ts = self.timestamp
            self.new_vehicles.append(
                (
                    vehicle_id,
                    record.vin,
                    record.engine_number,
                    record.chassis_number,
                    record.model,
                    record.model_year,
                    record.fuel_type,
                    record.region,
                    record.country,
                    ts(record.manufactured_at),
                    ts(exported_at),
                    "active",
                    _json(record.attributes),
                    record.vehicle_public_key,
                    record.rxswin,
                    self.import_id,
                    self.now_value,
                    self.now_value,
                )
            )
            self.counts.vehicles_created += 1
        else:
            if vehicle_changed:
                self.counts.vehicles_updated += 1
            else:
                self.counts.vehicles_unchanged += 1
            if vehicle_changed or exported_at > stored.exported_at:
                # The row is rewritten from the record: new data, or a newer export stamp.
                self.changed_vehicles[stored.id] = record
            stored.data, stored.exported_at = data, exported_at
        self._apply_ecus(record, stored, plan)
        return True

    def _plan_ecus(
        self, record: VehicleRecord, vehicle: StoredVehicle | None
    ) -> list[tuple[str, EcuRecord]]:
        """What happens to each ECU of the record; raises RecordConflict before any change."""
        plan: list[tuple[str, EcuRecord]] = []
        vehicle_id = vehicle.id if vehicle else None
        for index, ecu in enumerate(record.ecus):
            stored = self.ecus.get(ecu.serial)
            if stored is None:
                plan.append(("create", ecu))
            elif stored.vehicle_id == vehicle_id and stored.removed_at is None:
                hardware_changed = stored.hardware != ecu_hardware(ecu)
                software_changed = (
                    stored.software != ecu_software(ecu)
                    and record.exported_at > stored.software_observed_at
                )
                plan.append(("update" if hardware_changed or software_changed else "same", ecu))
            else:
                owner = self.vehicles.get(stored.owner_vin)
                owner_exported = owner.exported_at if owner else stored.owner_exported_at
                if stored.removed_at is None and owner_exported >= record.exported_at:
                    raise RecordConflict(
                        "serial",
                        f"ECU serial {ecu.serial!r} is fitted to vehicle {stored.owner_vin} "
                        f"by an export of {owner_exported.isoformat()}, not older than this one",
                        index,
                    )
                plan.append(("move", ecu))
        return plan

    def _removals(self, record: VehicleRecord, vehicle: StoredVehicle | None) -> bool:
        if vehicle is None:
            return False
        listed = {e.serial for e in record.ecus}
        return any(
            serial not in listed
            and self.ecus[serial].vehicle_id == vehicle.id
            and self.ecus[serial].removed_at is None
            for serial in self.active_by_vehicle.get(vehicle.id, ())
        )

    def _apply_ecus(
        self, record: VehicleRecord, vehicle: StoredVehicle, plan: list[tuple[str, EcuRecord]]
    ) -> None:
        at = record.exported_at
        counts = self.counts
        listed = set()
        # The same for every ECU this record creates: written once, not per ECU.
        created_tail = ("import", self.timestamp(at), self.import_id, None, self.now_value)
        new_ecus = self.new_ecus
        for kind, ecu in plan:
            listed.add(ecu.serial)
            if kind == "create":
                new_ecus.append(
                    (
                        vehicle.id,
                        ecu.ecu_type,
                        ecu.serial,
                        ecu.hardware_part_number,
                        ecu.hardware_version,
                        ecu.protocol,
                        ecu.software_part_number,
                        ecu.software_version,
                        ecu.calibration_id,
                        *created_tail,
                    )
                )
                counts.ecus_created += 1
                continue
            stored = self.ecus[ecu.serial]
            if kind == "same":
                counts.ecus_unchanged += 1
                continue
            if kind == "move":
                change = "moved" if stored.removed_at is None else "returned"
                self._record_history(stored, change, vehicle.id, at)
                self.active_by_vehicle.setdefault(vehicle.id, []).append(ecu.serial)
                counts.ecus_replaced += 1
            else:
                change = "hardware" if stored.hardware != ecu_hardware(ecu) else "software"
                self._record_history(stored, change, None, at)
                counts.ecus_updated += 1
            stored.vehicle_id, stored.owner_vin = vehicle.id, vehicle.vin
            stored.hardware = ecu_hardware(ecu)
            if kind == "move" or at > stored.software_observed_at:
                stored.software = ecu_software(ecu)
                stored.software_source, stored.software_observed_at = "import", at
            stored.import_id, stored.removed_at, stored.changed = self.import_id, None, True
        for serial in self.active_by_vehicle.get(vehicle.id, ()):
            stored = self.ecus[serial]
            if serial in listed or stored.vehicle_id != vehicle.id or stored.removed_at:
                continue
            self._record_history(stored, "removed", None, at)
            stored.removed_at, stored.import_id, stored.changed = at, self.import_id, True
            counts.ecus_removed += 1

    def _record_history(
        self, stored: StoredEcu, change: str, to_vehicle: int | None, at: datetime
    ) -> None:
        ts = self.timestamp
        self.history.append(
            (
                stored.id,
                change,
                stored.vehicle_id,
                *stored.hardware[1:],
                *stored.software,
                stored.software_source,
                ts(stored.software_observed_at),
                stored.import_id,
                self.import_id,
                to_vehicle,
                ts(at),
                self.now_value,
            )
        )

    def written_keys(self) -> set[str]:
        """The VINs and ECU serials whose rows this batch writes."""
        keys = set(self.created)
        keys.update(r.vin for r in self.changed_vehicles.values())
        keys.update(row[2] for row in self.new_ecus)
        keys.update(e.serial for e in self.ecus.values() if e.changed)
        return keys

    def read_keys(self) -> set[str]:
        """The VINs and ECU serials whose stored rows this batch's plan read."""
        keys = set(self.vehicles)
        for e in self.ecus.values():
            keys.add(e.serial)
            keys.add(e.owner_vin)
        return keys

    def changed_ecu_rows(self) -> list[tuple[Any, ...]]:
        """UPDATE rows (columns of `ECU_UPDATE_COLUMNS`, then the id) for every changed ECU."""
        ts = self.timestamp
        return [
            (
                e.vehicle_id,
                *e.hardware,
                *e.software,
                e.software_source,
                ts(e.software_observed_at),
                e.import_id,
                ts(e.removed_at) if e.removed_at else None,
                self.now_value,
                e.id,
            )
            for e in self.ecus.values()
            if e.changed
        ]

    def changed_vehicle_rows(
        self, to_json: Callable[[dict[str, Any]], str]
    ) -> list[tuple[Any, ...]]:
        ts = self.timestamp
        rows = []
        for vehicle_id, r in self.changed_vehicles.items():
            rows.append(
                (
                    r.engine_number,
                    r.chassis_number,
                    r.model,
                    r.model_year,
                    r.fuel_type,
                    r.region,
                    r.country,
                    ts(r.manufactured_at),
                    ts(r.exported_at),
                    to_json(r.attributes),
                    r.vehicle_public_key,
                    r.rxswin,
                    self.import_id,
                    self.now_value,
                    vehicle_id,
                )
            )
        return rows


def _signature(r: VehicleRecord) -> tuple[Any, ...]:
    return (
        vehicle_data(r),
        r.exported_at,
        [(e.serial, ecu_hardware(e), ecu_software(e)) for e in r.ecus],
    )


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
