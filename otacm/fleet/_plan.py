"""Planning a batch of validated records: which rows it writes and which records it rejects.

The plan itself is in memory (`BatchDiff`); what it needs from the registry comes through
hooks, so that the same planning runs against the database (`importer._Planner`) and against
an empty registry, in the importing process or in a worker process of a first load
(`EmptyRegistryPlanner`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from otacm.db import utcnow
from otacm.fleet._bulk import BulkIO
from otacm.fleet._diff import BatchDiff, Counts, RecordConflict, StoredEcu
from otacm.fleet._pipeline import Validated
from otacm.fleet.parser import csv_column
from otacm.fleet.records import Problem, RawRecord, VehicleRecord


@dataclass(slots=True)
class Rejection:
    line: int
    vin: str | None
    field: str | None
    reason: str


class Tally(Protocol):
    """What planning adds up: the import's report, or a worker's share of it."""

    records_read: int
    records_rejected: int
    counts: Counts


@dataclass
class Plan:
    diff: BatchDiff
    rejected: list[Rejection]
    keys: set[str]  # the VINs and ECU serials the batch reads or writes


@dataclass(slots=True)
class Rows:
    """What a planned batch writes: rows in the order of `_bulk`'s column lists."""

    new_vehicles: list[tuple[Any, ...]]
    changed_vehicles: list[tuple[Any, ...]]
    changed_ecus: list[tuple[Any, ...]]
    new_ecus: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]

    @classmethod
    def of(cls, diff: BatchDiff, to_json: Callable[[dict[str, Any]], str]) -> Rows:
        return cls(
            diff.new_vehicles,
            diff.changed_vehicle_rows(to_json),
            diff.changed_ecu_rows(),
            diff.new_ecus,
            diff.history,
        )


class PlannerBase:
    """Works out what a batch changes; subclasses say where the stored state comes from."""

    def __init__(
        self,
        tally: Tally,
        import_id: int,
        timestamp: Callable[[datetime], Any],
        *,
        jsonl: bool = False,
    ) -> None:
        self.tally = tally
        self.import_id = import_id
        # The engine's (or the encoder's) representation of a timestamp.
        self.timestamp = timestamp
        self.jsonl = jsonl
        # Records rejected for what they contradict (not for their own defects).
        self.conflicts = 0

    # -- hooks ---------------------------------------------------------------------------------

    def _new_ids(self, count: int) -> Iterator[int]:
        raise NotImplementedError

    def _load_state(self, vins: list[str], serials: list[str], new_ids: Iterator[int]) -> BatchDiff:
        raise NotImplementedError

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        raise NotImplementedError

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        raise NotImplementedError

    def _end_reads(self) -> None:
        """Called once a plan has read all it needs."""

    # -- planning ------------------------------------------------------------------------------

    def _reject(self, raw: RawRecord, problems: list[Problem], out: list[Rejection]) -> None:
        self.tally.records_rejected += 1
        vin = raw.fields.get("vin")
        vin = vin.strip()[:64] if isinstance(vin, str) else None
        for p in problems:
            line = raw.line
            name = p.field
            if p.ecu is not None:
                if p.ecu < len(raw.ecu_lines):
                    line = raw.ecu_lines[p.ecu]
                if self.jsonl and name:
                    name = f"ecus[{p.ecu}].{name}"
            out.append(Rejection(line, vin, name if self.jsonl else csv_column(name), p.reason))

    def plan(self, batch: Validated, wait_for: Callable[[set[str]], None]) -> Plan:
        rejected: list[Rejection] = []
        self.tally.records_read += len(batch)
        valid: list[tuple[RawRecord, VehicleRecord]] = []
        for raw, record in batch:
            if record is None:
                self._reject(raw, raw.problems, rejected)
            else:
                valid.append((raw, record))
        vins = list(dict.fromkeys(r.vin for _, r in valid))
        serials = list(dict.fromkeys(e.serial for _, r in valid for e in r.ecus))
        keys = {*vins, *serials}
        new_ids = self._new_ids(len(vins))
        wait_for(keys)
        diff = self._load_state(vins, serials, new_ids)
        # VINs taken earlier in this file: repeats of the batch's own, and owners of its ECUs.
        owner_vins = {e.owner_vin for e in diff.ecus.values()}
        seen = self._seen_vins(list(owner_vins.union(vins)))
        batch_vins = set(vins)
        diff.repeated_vins = {vin: line for vin, line in seen.items() if vin in batch_vins}
        owners: dict[str, tuple[str, int]] = {}
        first_seen: dict[str, int] = {}
        for raw, record in valid:
            clash = serial_clash(record, self.import_id, diff, seen, owners)
            if clash:
                self.conflicts += 1
                self._reject(raw, [clash], rejected)
                continue
            try:
                taken = diff.apply(record, raw.line)
            except RecordConflict as conflict:
                self.conflicts += 1
                self._reject(
                    raw, [Problem(conflict.field, conflict.reason, conflict.ecu)], rejected
                )
                continue
            if taken:
                if record.vin not in seen:
                    first_seen.setdefault(record.vin, raw.line)
                for ecu in record.ecus:
                    owners.setdefault(ecu.serial, (record.vin, raw.line))
        self.tally.counts.add(diff.counts)
        self._remember(list(first_seen.items()))
        self._end_reads()
        return Plan(diff, rejected, keys)


class RegistryPlanner(PlannerBase):
    """Plans against the registry, reading committed state on its own connection."""

    def __init__(
        self, bulk: BulkIO, tally: Tally, import_id: int, engine: Engine, *, commit_reads: bool
    ) -> None:
        super().__init__(tally, import_id, bulk.timestamp)
        self.bulk = bulk
        self.engine = engine
        self.commit_reads = commit_reads
        # Ids set aside for the batch in hand, if any (else drawn as the plan needs them).
        self.reserved_ids: list[int] | None = None

    def _end_reads(self) -> None:
        if self.commit_reads:
            # Ends the read snapshot, so that the next plan sees the batches written meanwhile.
            self.bulk.conn.commit()

    def _new_ids(self, count: int) -> Iterator[int]:
        if self.reserved_ids is not None:
            return iter(self.reserved_ids)
        return self.bulk.vehicle_ids(count, self.engine)

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        return self.bulk.seen_vins(vins)

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        self.bulk.remember(vins)

    def _load_state(self, vins: list[str], serials: list[str], new_ids: Iterator[int]) -> BatchDiff:
        bulk = self.bulk
        vehicles = bulk.stored_vehicles(vins)
        stored = bulk.active_ecus_of(list(vehicles.values()))
        fitted = {e.serial for e in stored}
        stored += bulk.ecus_by_serial([s for s in serials if s not in fitted])
        ecus: dict[str, StoredEcu] = {}
        active: dict[int, list[str]] = {}
        for ecu in stored:
            ecus[ecu.serial] = ecu
            if ecu.removed_at is None:
                active.setdefault(ecu.vehicle_id, []).append(ecu.serial)
        return BatchDiff(self.import_id, utcnow(), bulk.timestamp, vehicles, ecus, active, new_ids)


class EmptyRegistryPlanner(PlannerBase):
    """Plans batches for a first load: nothing is stored, so there is nothing to look up.

    Within a batch the plan works as usual (repeats of a VIN or serial are seen in memory);
    across batches the unique indexes see them, and the load gives way (`importer._FirstLoad`).
    Vehicle ids come from `vehicle_ids`, handed out by the load.
    """

    def __init__(
        self,
        tally: Tally,
        import_id: int,
        timestamp: Callable[[datetime], Any],
        vehicle_ids: Iterator[int],
        *,
        jsonl: bool,
    ) -> None:
        super().__init__(tally, import_id, timestamp, jsonl=jsonl)
        self._vehicle_ids = vehicle_ids

    def _new_ids(self, count: int) -> Iterator[int]:
        return self._vehicle_ids

    def _load_state(self, vins: list[str], serials: list[str], new_ids: Iterator[int]) -> BatchDiff:
        return BatchDiff(self.import_id, utcnow(), self.timestamp, {}, {}, {}, new_ids)

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        return {}

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        pass


def serial_clash(
    record: VehicleRecord,
    import_id: int,
    diff: BatchDiff,
    seen: dict[str, int],
    owners: dict[str, tuple[str, int]],
) -> Problem | None:
    """An ECU of `record` that an earlier record of this file already listed for another VIN.

    Earlier in this batch is in `owners`. Earlier batches are already in the registry: the ECU
    belongs to the other vehicle and was written by this import, or that vehicle's record was
    taken earlier in this file (`seen`) with the ECU fitted.
    """
    for index, ecu in enumerate(record.ecus):
        owner = owners.get(ecu.serial)
        if owner is None:
            stored = diff.ecus.get(ecu.serial)
            if (
                stored is not None
                and stored.removed_at is None
                and stored.owner_vin != record.vin
                and (stored.import_id == import_id or stored.owner_vin in seen)
            ):
                owner = (stored.owner_vin, seen.get(stored.owner_vin, 0))
        if owner and owner[0] != record.vin:
            where = f"at line {owner[1]}" if owner[1] else "earlier"
            return Problem(
                "serial",
                f"ECU serial {ecu.serial!r} is already listed for vehicle {owner[0]} "
                f"{where} in this file",
                index,
            )
    return None
