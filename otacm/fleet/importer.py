"""Fleet import: a manufacturing export streamed into the registry in bounded batches.

Each batch of vehicles is validated, compared with what the registry holds and written in one
transaction, so an interruption loses at most the batch in flight and never half a vehicle. In
strict mode the whole file is one transaction that is rolled back if any record is bad.

A first load, into an empty registry, is one transaction instead (`_FirstLoad`): nothing to
compare with, the secondary indexes dropped at its start and built at its end. An interruption
leaves the registry empty. For its whole duration it holds the `vehicles` and `ecus` tables
exclusively on PostgreSQL (readers of the registry wait until it commits) and the database's
write lock on SQLite (readers go on seeing the empty registry).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import gc
import io
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import Connection, Engine, insert, update
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.db import utcnow
from otacm.fleet._bulk import (
    ECU_COLUMNS,
    ECU_UPDATE_COLUMNS,
    HISTORY_COLUMNS,
    VEHICLE_COLUMNS,
    VEHICLE_UPDATE_COLUMNS,
    BulkIO,
    Registry,
    is_repeated_key,
)
from otacm.fleet._diff import BatchDiff, Counts, RecordConflict, StoredEcu
from otacm.fleet._pipeline import (
    COLLECT_EVERY,
    ReadAhead,
    Validated,
    batches_of,
    collector_paused,
    read_ahead,
)
from otacm.fleet.models import FleetImport, FleetImportRejection
from otacm.fleet.parser import ImportFileError, csv_column, open_export
from otacm.fleet.records import Problem, RawRecord, VehicleRecord
from otacm.security import audit
from otacm.security.audit import SYSTEM, Actor

# One fleet import at a time per PostgreSQL database (SQLite serialises writers by itself).
IMPORT_LOCK_KEY = 0x07AC_F1EE
# Rejections a strict import keeps for its report while it decides to take nothing.
STRICT_REJECTION_LIMIT = 100_000
# How long a first load waits for the registry's tables (PostgreSQL) before it leaves the
# import to the batch path: long-running readers must not keep the import waiting.
FIRST_LOAD_LOCK_TIMEOUT_S = 10.0
# Server memory PostgreSQL may use to sort each index a first load builds at its end; the
# default (64 MB) spills 12 million keys to disk in many runs.
FIRST_LOAD_INDEX_MEMORY = "1GB"


@dataclass(slots=True)
class Rejection:
    line: int
    vin: str | None
    field: str | None
    reason: str


@dataclass
class ImportReport:
    import_id: int
    source_name: str
    strict: bool
    actor: Actor
    format: str | None = None
    compressed: bool = False
    status: str = "running"
    records_read: int = 0
    records_rejected: int = 0
    counts: Counts = field(default_factory=Counts)
    rejections: list[Rejection] = field(default_factory=list)
    error: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    # Whether the import went into an empty registry as one transaction (see _FirstLoad).
    first_load: bool = False

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "completed" else 2

    def summary(self) -> dict[str, Any]:
        return {
            "records_read": self.records_read,
            "records_rejected": self.records_rejected,
            **asdict(self.counts),
        }


def run_import(
    engine: Engine,
    stream: IO[bytes],
    *,
    settings: Settings,
    source_name: str,
    strict: bool = False,
    actor: Actor = SYSTEM,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import the manufacturing export in `stream`; the report says what happened to each record.

    Three threads share the work: one reads and validates the file a batch ahead, this one
    plans each batch (lookups on its own connection, then the in-memory comparison), and a
    writer commits the previous batch meanwhile. A batch that touches a VIN or ECU serial of
    the batch being written waits for that write, so every plan reads committed data. A strict
    import is one transaction, so there it plans and writes on one connection, in turn.

    Into an empty registry, a file that can be read twice (a file, an upload spooled to disk)
    is loaded as one transaction instead (`_FirstLoad`); it gives the same registry, report
    and rejections.

    Raises:
        ImportFileError: the file as a whole is unreadable (empty, no usable header); nothing
            was imported, and the import is recorded as failed.
    """
    report = ImportReport(
        _create_import(engine, source_name, strict, actor), source_name, strict, actor
    )
    write_conn = engine.connect().execution_options(sqlite_begin="IMMEDIATE")
    read_conn = write_conn if strict else engine.connect()
    writer = _Writer(BulkIO(write_conn), report)
    planner = _Planner(BulkIO(read_conn), report, engine, commit_reads=not strict)
    sqlite_lock = _SqliteImportLock(engine) if not writer.bulk.postgresql else None
    try:
        if sqlite_lock is not None:
            sqlite_lock.acquire()
        if writer.bulk.postgresql:
            write_conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (IMPORT_LOCK_KEY,))
            # Holding the lock, no other import runs: one still marked running was cut off.
            write_conn.execute(
                update(FleetImport)
                .where(FleetImport.status == "running", FleetImport.id != report.import_id)
                .values(
                    status="interrupted",
                    finished_at=utcnow(),
                    error="the import stopped before it finished; the batches it committed "
                    "are kept whole",
                )
            )
            write_conn.commit()
        planner.bulk.create_seen_tables()
        read_conn.commit()
        # One buffered reader for the whole import: a first load that gives way reads the
        # file again from `origin` through it.
        buffered: IO[bytes] = (
            stream
            if isinstance(stream, io.BufferedReader)
            else io.BufferedReader(cast(Any, stream))
        )
        origin = buffered.tell() if buffered.seekable() else None
        try:
            reader = open_export(buffered, settings.import_max_line_bytes)
        except ImportFileError as exc:
            _finish(engine, report, "failed", error=exc.detail)
            raise
        report.format, report.compressed = reader.format, reader.compressed
        planner.jsonl = reader.format == "jsonl"

        def validated(records: Iterator[RawRecord]) -> ReadAhead:
            return read_ahead(
                batches_of(records, settings.import_batch_size), settings.vin_check_digit
            )

        keep = settings.import_report_rejections
        with collector_paused():
            outcome = _Outcome.DECLINED
            if origin is not None:
                first_load = _FirstLoad(writer, planner, report, strict, keep, on_batch)
                outcome = first_load.run(lambda: validated(reader.records))
                if outcome is _Outcome.GAVE_WAY:
                    buffered.seek(origin)
                    reader = open_export(buffered, settings.import_max_line_bytes)
            if outcome is not _Outcome.LOADED:
                batches = validated(reader.records)
                if strict:
                    _import_strict(batches, planner, writer, report, keep, on_batch)
                else:
                    _import_pipelined(batches, planner, writer, report, keep, on_batch)
        status = (
            "completed"
            if not report.records_rejected
            else ("rejected" if strict else "completed_with_rejections")
        )
        _finish(engine, report, status)
        return report
    except BaseException as exc:
        if report.status == "running":
            _finish(engine, report, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            writer.close()
            for conn in {id(read_conn): read_conn, id(write_conn): write_conn}.values():
                try:
                    if conn.in_transaction():
                        conn.rollback()
                    if conn is read_conn:
                        planner.bulk.drop_seen_tables()
                    if conn is write_conn and writer.bulk.postgresql:
                        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (IMPORT_LOCK_KEY,))
                    conn.commit()
                finally:
                    conn.close()
        finally:
            if sqlite_lock is not None:
                sqlite_lock.release()


class _SqliteImportLock:
    """One import at a time on an SQLite database file, across processes: an exclusive lock
    on a file beside the database (PostgreSQL uses an advisory lock instead). Two imports of
    the same vehicles planned side by side would both try to create them."""

    def __init__(self, engine: Engine) -> None:
        database = engine.url.database
        self.path = (
            None if not database or database == ":memory:" else Path(database + ".import-lock")
        )
        self.handle: IO[bytes] | None = None

    def acquire(self) -> None:
        if self.path is not None:
            self.handle = self.path.open("ab")
            fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _import_pipelined(
    batches: Iterable[Validated],
    planner: _Planner,
    writer: _Writer,
    report: ImportReport,
    keep: int,
    on_batch: Callable[[ImportReport], None] | None,
) -> None:
    in_flight: Future[None] | None = None
    in_flight_keys: set[str] = set()

    def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            future, in_flight = in_flight, None
            future.result()
            if on_batch:
                on_batch(report)

    def wait_if_overlapping(keys: set[str]) -> None:
        if in_flight is not None and not keys.isdisjoint(in_flight_keys):
            in_flight.result()

    try:
        for number, batch in enumerate(batches, 1):
            if number % COLLECT_EVERY == 0:
                gc.collect()
            plan = planner.plan(batch, wait_if_overlapping)
            report.rejections.extend(plan.rejected[: keep - len(report.rejections)])
            settle()
            in_flight, in_flight_keys = writer.submit(plan), plan.keys
        settle()
    finally:
        # Never leave a batch half-written behind us: let the one in flight finish.
        if in_flight is not None:
            with contextlib.suppress(BaseException):
                in_flight.result()


def _import_strict(
    batches: Iterable[Validated],
    planner: _Planner,
    writer: _Writer,
    report: ImportReport,
    keep: int,
    on_batch: Callable[[ImportReport], None] | None,
) -> None:
    conn = writer.bulk.conn
    kept: list[Rejection] = []
    conn.begin()
    for batch in batches:
        plan = planner.plan(batch, lambda _keys: None)
        # After the first bad record nothing will be kept: go on validating, write nothing.
        if not report.records_rejected:
            writer.write_rows(plan)
        kept.extend(plan.rejected[: max(0, STRICT_REJECTION_LIMIT - len(kept))])
        report.rejections.extend(plan.rejected[: keep - len(report.rejections)])
        if on_batch:
            on_batch(report)
    if report.records_rejected:
        conn.rollback()
        report.counts = Counts()
    else:
        conn.commit()
    with conn.begin():
        _store_rejections(conn, report.import_id, kept)


@dataclass
class _Plan:
    diff: BatchDiff
    rejected: list[Rejection]
    keys: set[str]  # the VINs and ECU serials the batch reads or writes


class _Planner:
    """Works out what a batch changes, reading committed state on its own connection."""

    def __init__(
        self, bulk: BulkIO, report: ImportReport, engine: Engine, *, commit_reads: bool
    ) -> None:
        self.bulk = bulk
        self.report = report
        self.engine = engine
        self.commit_reads = commit_reads
        self.jsonl = False
        # Records rejected for what they contradict (not for their own defects).
        self.conflicts = 0

    def _reject(self, raw: RawRecord, problems: list[Problem], out: list[Rejection]) -> None:
        self.report.records_rejected += 1
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

    def plan(self, batch: Validated, wait_for: Callable[[set[str]], None]) -> _Plan:
        rejected: list[Rejection] = []
        self.report.records_read += len(batch)
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
            clash = _serial_clash(record, self.report.import_id, diff, seen, owners)
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
        self.report.counts.add(diff.counts)
        self._remember(list(first_seen.items()))
        if self.commit_reads:
            # Ends the read snapshot, so that the next plan sees the batches written meanwhile.
            self.bulk.conn.commit()
        return _Plan(diff, rejected, keys)

    def _new_ids(self, count: int) -> Iterator[int]:
        return self.bulk.vehicle_ids(count, self.engine)

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        return self.bulk.seen_vins(vins)

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        self.bulk.remember(vins)

    def _load_state(self, vins: list[str], serials: list[str], new_ids: Iterator[int]) -> BatchDiff:
        bulk = self.bulk
        vehicles = bulk.stored_vehicles(vins)
        stored = bulk.active_ecus_of([v.id for v in vehicles.values()])
        fitted = {e.serial for e in stored}
        stored += bulk.ecus_by_serial([s for s in serials if s not in fitted])
        ecus: dict[str, StoredEcu] = {}
        active: dict[int, list[str]] = {}
        for ecu in stored:
            ecus[ecu.serial] = ecu
            if ecu.removed_at is None:
                active.setdefault(ecu.vehicle_id, []).append(ecu.serial)
        return BatchDiff(
            self.report.import_id, utcnow(), bulk.timestamp, vehicles, ecus, active, new_ids
        )


class _Repeat(Exception):
    """A later batch of a first load may repeat a VIN or serial of an earlier one."""


class _Outcome(enum.Enum):
    DECLINED = "the registry is not empty, or its tables stayed busy: nothing was read"
    LOADED = "the import is done"
    GAVE_WAY = "rolled back: the batch path must import the file from its start"


class _EmptyRegistryPlanner(_Planner):
    """Plans batches for a first load: nothing is stored, so there is nothing to look up.

    Within a batch the plan works as usual (repeats of a VIN or serial are seen in memory);
    across batches the unique indexes see them, and the load gives way (see `_FirstLoad`).
    """

    def __init__(
        self, planner: _Planner, ids_from: BulkIO | None, vehicle_ids: Iterator[int] | None
    ) -> None:
        # Reads nothing but ids: from a connection of its own (PostgreSQL's sequence, beside
        # the loading transaction) or counted by the load itself (SQLite).
        super().__init__(
            ids_from or planner.bulk, planner.report, planner.engine, commit_reads=False
        )
        self.jsonl = planner.jsonl
        self._vehicle_ids = vehicle_ids

    def _new_ids(self, count: int) -> Iterator[int]:
        if self._vehicle_ids is None:
            return super()._new_ids(count)
        return itertools.islice(self._vehicle_ids, count)

    def _load_state(self, vins: list[str], serials: list[str], new_ids: Iterator[int]) -> BatchDiff:
        return BatchDiff(self.report.import_id, utcnow(), self.bulk.timestamp, {}, {}, {}, new_ids)

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        return {}

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        pass


class _FirstLoad:
    """An import into an empty registry, as one transaction on the writing connection.

    With nothing stored there is nothing to look up or compare with: each batch is planned
    against an empty state and its rows appended, and the indexes whose upkeep row by row
    costs most are dropped at the start and built from the loaded rows at the end.

    Why the result is the batch path's: on an empty registry a batch's plan depends on earlier
    batches only through the VINs and ECU serials they took, and within a batch the plan sees
    repeats as usual. A record of a later batch that names a VIN or serial an earlier batch
    took is one of two kinds. Taken, its rows break a unique index (the VIN's at once, the
    serial's when it is rebuilt). Rejected by the plan (it contradicts a record of its own
    batch), it writes nothing, and the batch path might have rejected it for the earlier
    batch's record instead: so any such rejection after the first batch counts as a repeat.
    On a repeat the whole load is rolled back and the import starts over on the batch path
    (`_Outcome.GAVE_WAY`), which reports it exactly.

    Interruption and concurrency: the data, the dropped indexes and the rejections are one
    transaction, so a kill, a lost connection or an error leaves the registry empty with its
    indexes as they were. Imports are serialised by their lock (advisory on PostgreSQL, a
    file lock on SQLite); other writers are kept out by the table lock (PostgreSQL, which
    also makes readers of `vehicles` and `ecus` wait until the load commits) or the write
    lock (SQLite). The registry is checked to be empty under that lock.
    """

    def __init__(
        self,
        writer: _Writer,
        planner: _Planner,
        report: ImportReport,
        strict: bool,
        keep: int,
        on_batch: Callable[[ImportReport], None] | None,
    ) -> None:
        self.writer, self.planner, self.report = writer, planner, report
        self.strict, self.keep, self.on_batch = strict, keep, on_batch
        self.in_flight: Future[None] | None = None

    def run(self, make_batches: Callable[[], ReadAhead]) -> _Outcome:
        conn = self.writer.bulk.conn
        registry = Registry(self.writer.bulk)
        batches: ReadAhead | None = None
        ids_conn: Connection | None = None
        conn.begin()
        try:
            if not (
                registry.may_set_indexes_aside()
                and registry.lock(FIRST_LOAD_LOCK_TIMEOUT_S)
                and registry.is_empty()
            ):
                conn.rollback()
                return _Outcome.DECLINED
            registry.set_indexes_aside()
            ids: Iterator[int] | None = None
            if self.writer.bulk.postgresql:
                ids_conn = self.planner.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
                planner = _EmptyRegistryPlanner(self.planner, BulkIO(ids_conn), None)
            else:
                # No sequence: holding the write lock, the load counts ids itself.
                ids = itertools.count(registry.first_vehicle_id())
                planner = _EmptyRegistryPlanner(self.planner, None, ids)
            self.report.first_load = True
            batches = make_batches()
            kept = self._load(batches, planner)
            if self.report.records_rejected and self.strict:
                conn.rollback()
                self.report.counts = Counts()
                with conn.begin():
                    _store_rejections(conn, self.report.import_id, kept)
                return _Outcome.LOADED
            registry.rebuild_indexes(FIRST_LOAD_INDEX_MEMORY)
            if ids is not None:
                registry.ids_used_below(next(ids))
            conn.commit()
            return _Outcome.LOADED
        except BaseException as exc:
            self._settle_quietly()
            if conn.in_transaction():
                conn.rollback()
            repeat = isinstance(exc, _Repeat) or is_repeated_key(exc)
            if batches is not None:
                # Before the file is read again, the reader must have let go of it.
                batches.close(wait=repeat)
            if not repeat:
                raise
            # The batch path takes over from the start of the file, with a fresh report.
            report = self.report
            report.records_read = report.records_rejected = 0
            report.counts, report.rejections, report.first_load = Counts(), [], False
            return _Outcome.GAVE_WAY
        finally:
            if ids_conn is not None:
                ids_conn.close()

    def _load(self, batches: ReadAhead, planner: _EmptyRegistryPlanner) -> list[Rejection]:
        report, keep, strict = self.report, self.keep, self.strict
        kept: list[Rejection] = []
        for number, batch in enumerate(batches, 1):
            if number % COLLECT_EVERY == 0:
                gc.collect()
            conflicts = planner.conflicts
            plan = planner.plan(batch, lambda _keys: None)
            if planner.conflicts > conflicts and number > 1:
                raise _Repeat
            report.rejections.extend(plan.rejected[: keep - len(report.rejections)])
            if strict:
                kept.extend(plan.rejected[: max(0, STRICT_REJECTION_LIMIT - len(kept))])
            self._settle()
            # After a strict import's first bad record nothing will be kept: write nothing.
            if not (strict and report.records_rejected):
                self.in_flight = self.writer.submit_rows(plan, rejections=not strict)
            elif self.on_batch:
                self.on_batch(report)
        self._settle()
        return kept

    def _settle(self) -> None:
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            future.result()
            if self.on_batch:
                self.on_batch(self.report)

    def _settle_quietly(self) -> None:
        """Let a write in flight end before the transaction is rolled back under it."""
        if self.in_flight is not None:
            with contextlib.suppress(BaseException):
                self.in_flight.result()
            self.in_flight = None


class _Writer:
    """Writes planned batches, one transaction each, on a thread of its own."""

    def __init__(self, bulk: BulkIO, report: ImportReport) -> None:
        self.bulk = bulk
        self.report = report
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, plan: _Plan) -> Future[None]:
        summary = self.report.summary()
        return self._thread().submit(self._write_batch, plan, summary)

    def submit_rows(self, plan: _Plan, *, rejections: bool) -> Future[None]:
        """Write the plan's rows (and rejections) in the transaction the connection is in."""
        return self._thread().submit(self._write_rows_and_rejections, plan, rejections)

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="fleet-import-writer")
        return self._executor

    def _write_rows_and_rejections(self, plan: _Plan, rejections: bool) -> None:
        self.write_rows(plan)
        if rejections:
            _store_rejections(self.bulk.conn, self.report.import_id, plan.rejected)

    def _write_batch(self, plan: _Plan, summary: dict[str, Any]) -> None:
        conn = self.bulk.conn
        with conn.begin():
            self.write_rows(plan)
            _store_rejections(conn, self.report.import_id, plan.rejected)
            conn.execute(
                update(FleetImport)
                .where(FleetImport.id == self.report.import_id)
                .values(
                    counts=summary, format=self.report.format, compressed=self.report.compressed
                )
            )

    def write_rows(self, plan: _Plan) -> None:
        bulk, diff = self.bulk, plan.diff
        bulk.insert("vehicles", VEHICLE_COLUMNS, diff.new_vehicles)
        bulk.update_by_id("vehicles", VEHICLE_UPDATE_COLUMNS, diff.changed_vehicle_rows(bulk.json))
        bulk.update_by_id("ecus", ECU_UPDATE_COLUMNS, diff.changed_ecu_rows())
        bulk.insert("ecus", ECU_COLUMNS, diff.new_ecus)
        bulk.insert("ecu_history", HISTORY_COLUMNS, diff.history)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _serial_clash(
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


def _create_import(engine: Engine, source_name: str, strict: bool, actor: Actor) -> int:
    with Session(engine) as session, session.begin():
        row = FleetImport(
            source_name=source_name[:500],
            strict=strict,
            status="running",
            started_at=utcnow(),
            counts={},
            started_by=actor.name,
        )
        session.add(row)
        session.flush()
        audit.record(
            session,
            actor,
            "fleet.import.start",
            object_type="fleet_import",
            object_id=row.id,
            after={"source": source_name[:500], "strict": strict},
        )
        return row.id


def _store_rejections(conn: Connection, import_id: int, rejections: list[Rejection]) -> None:
    if rejections:
        conn.execute(
            insert(FleetImportRejection),
            [
                {
                    "import_id": import_id,
                    "line": r.line,
                    "vin": r.vin,
                    "field": r.field,
                    "reason": r.reason[:2000],
                }
                for r in rejections
            ],
        )


def _finish(engine: Engine, report: ImportReport, status: str, error: str | None = None) -> None:
    report.status, report.error, report.finished_at = status, error, utcnow()
    with Session(engine) as session, session.begin():
        session.execute(
            update(FleetImport)
            .where(FleetImport.id == report.import_id)
            .values(
                status=status,
                error=error,
                finished_at=report.finished_at,
                counts=report.summary(),
                format=report.format,
                compressed=report.compressed,
            )
        )
        audit.record(
            session,
            report.actor,
            "fleet.import.finish",
            object_type="fleet_import",
            object_id=report.import_id,
            after={"status": status, **report.summary()},
            outcome="failed" if status == "failed" else "success",
            detail=error,
        )
