"""Fleet import: a manufacturing export streamed into the registry in bounded batches.

Each batch of vehicles is validated, compared with what the registry holds and written in one
transaction, so an interruption loses at most the batch in flight and never half a vehicle. In
strict mode the whole file is one transaction that is rolled back if any record is bad.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from queue import Full, Queue
from typing import IO, Any

from sqlalchemy import Connection, Engine, insert, update

from otacm.config import Settings, VinCheckDigitPolicy
from otacm.db import utcnow
from otacm.fleet._bulk import (
    ECU_COLUMNS,
    ECU_UPDATE_COLUMNS,
    HISTORY_COLUMNS,
    VEHICLE_COLUMNS,
    VEHICLE_UPDATE_COLUMNS,
    BulkIO,
)
from otacm.fleet._diff import BatchDiff, Counts, RecordConflict, StoredEcu, StoredVehicle
from otacm.fleet.models import FleetImport, FleetImportRejection
from otacm.fleet.parser import ImportFileError, TruncatedFile, csv_column, open_export
from otacm.fleet.records import Problem, RawRecord, VehicleRecord, validate_record

# One fleet import at a time per PostgreSQL database (SQLite serialises writers by itself).
IMPORT_LOCK_KEY = 0x07AC_F1EE
# Rejections a strict import keeps for its report while it decides to take nothing.
STRICT_REJECTION_LIMIT = 100_000


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
    started_by: str | None = None,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import the manufacturing export in `stream`; the report says what happened to each record.

    Raises:
        ImportFileError: the file as a whole is unreadable (empty, no usable header); nothing
            was imported, and the import is recorded as failed.
    """
    report = ImportReport(
        _create_import(engine, source_name, strict, started_by), source_name, strict
    )
    conn = engine.connect().execution_options(sqlite_begin="IMMEDIATE")
    bulk = BulkIO(conn)
    try:
        if bulk.postgresql:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (IMPORT_LOCK_KEY,))
        bulk.create_seen_tables()
        conn.commit()
        try:
            reader = open_export(stream, settings.import_max_line_bytes)
        except ImportFileError as exc:
            _finish(engine, report, "failed", error=exc.detail)
            raise
        report.format, report.compressed = reader.format, reader.compressed
        importer = _BatchImporter(bulk, report, settings)
        kept: list[Rejection] = []
        policy = settings.vin_check_digit
        batches = _read_ahead(_batches(reader.records, settings.import_batch_size), policy)
        for batch in batches:
            if strict:
                if not conn.in_transaction():
                    conn.begin()
                # After the first bad record nothing will be kept: validate, write nothing.
                rejected = importer.process(batch, write=report.records_rejected == 0)
                kept.extend(rejected[: max(0, STRICT_REJECTION_LIMIT - len(kept))])
            else:
                with conn.begin():
                    rejected = importer.process(batch, write=True)
                    _store_rejections(conn, report.import_id, rejected)
                    _save_progress(conn, report)
            report.rejections.extend(
                rejected[: settings.import_report_rejections - len(report.rejections)]
            )
            if on_batch:
                on_batch(report)
        if strict:
            if report.records_rejected:
                conn.rollback()
                report.counts = Counts()
            else:
                conn.commit()
            with conn.begin():
                _store_rejections(conn, report.import_id, kept)
        status = (
            "completed"
            if not report.records_rejected
            else ("rejected" if strict else "completed_with_rejections")
        )
        _finish(engine, report, status)
        return report
    except BaseException as exc:
        if conn.in_transaction():
            conn.rollback()
        if report.status == "running":
            _finish(engine, report, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            if conn.in_transaction():
                conn.rollback()
            bulk.drop_seen_tables()
            if bulk.postgresql:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (IMPORT_LOCK_KEY,))
            conn.commit()
        finally:
            conn.close()


Validated = list[tuple[RawRecord, VehicleRecord | None]]


def _read_ahead(
    batches: Iterator[list[RawRecord]], policy: VinCheckDigitPolicy
) -> Iterator[Validated]:
    """Parse and validate the next batches in a thread while the caller writes this one.

    The database does its share of the work in its own process (PostgreSQL) or with the
    interpreter lock released (SQLite), so reading ahead keeps both cores busy. At most two
    batches wait, which bounds memory.
    """
    done = object()
    queue: Queue[Any] = Queue(maxsize=2)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Hand `item` over unless the consumer has gone away."""
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                validated = [
                    (raw, None if raw.problems else validate_record(raw, policy)) for raw in batch
                ]
                if not offer(validated):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)

    thread = threading.Thread(target=produce, name="fleet-import-reader", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _batches(records: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    """Batches of records; a compressed file that breaks off ends with a rejection for it."""
    batch: list[RawRecord] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
    except TruncatedFile as exc:
        batch.append(RawRecord(exc.line + 1, {}, problems=[Problem(None, exc.reason)]))
    if batch:
        yield batch


class _BatchImporter:
    def __init__(self, bulk: BulkIO, report: ImportReport, settings: Settings) -> None:
        self.bulk = bulk
        self.report = report
        self.policy = settings.vin_check_digit
        self.jsonl = report.format == "jsonl"

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

    def process(self, batch: Validated, *, write: bool) -> list[Rejection]:
        rejected: list[Rejection] = []
        self.report.records_read += len(batch)
        valid: list[tuple[RawRecord, VehicleRecord]] = []
        for raw, record in batch:
            if record is None:
                self._reject(raw, raw.problems, rejected)
            else:
                valid.append((raw, record))
        bulk = self.bulk
        vins = list(dict.fromkeys(r.vin for _, r in valid))
        diff = self._load_state(valid, vins)
        # VINs taken earlier in this file: repeats of the batch's own, and owners of its ECUs.
        owner_vins = {e.owner_vin for e in diff.ecus.values()}
        seen = bulk.seen_vins(list(owner_vins.union(vins)))
        batch_vins = set(vins)
        diff.repeated_vins = {vin: line for vin, line in seen.items() if vin in batch_vins}
        owners: dict[str, tuple[str, int]] = {}
        applied: list[tuple[RawRecord, VehicleRecord]] = []
        for raw, record in valid:
            clash = _serial_clash(record, self.report.import_id, diff, seen, owners)
            if clash:
                self._reject(raw, [clash], rejected)
                continue
            try:
                taken = diff.apply(record, raw.line)
            except RecordConflict as conflict:
                self._reject(
                    raw, [Problem(conflict.field, conflict.reason, conflict.ecu)], rejected
                )
                continue
            if taken:
                applied.append((raw, record))
                for ecu in record.ecus:
                    owners.setdefault(ecu.serial, (record.vin, raw.line))
        self.report.counts.add(diff.counts)
        if write:
            self._write(diff)
        first_seen = {r.vin: raw.line for raw, r in reversed(applied) if r.vin not in seen}
        bulk.remember(list(first_seen.items()))
        return rejected

    def _load_state(
        self, accepted: list[tuple[RawRecord, VehicleRecord]], vins: list[str]
    ) -> BatchDiff:
        bulk = self.bulk
        vehicles = {
            row.vin: StoredVehicle(
                row.id,
                row.vin,
                (
                    row.engine_number,
                    row.chassis_number,
                    row.model,
                    row.model_year,
                    row.fuel_type,
                    row.region,
                    row.country,
                    row.manufactured_at,
                    row.vehicle_public_key,
                    row.rxswin,
                    row.attributes or {},
                ),
                row.exported_at,
            )
            for row in bulk.vehicles_by_vin(vins)
        }
        serials = list(dict.fromkeys(e.serial for _, r in accepted for e in r.ecus))
        rows = bulk.ecus_by_serial(serials) if serials else []
        if vehicles:
            rows.extend(bulk.active_ecus_of([v.id for v in vehicles.values()]))
        ecus: dict[str, StoredEcu] = {}
        active: dict[int, list[str]] = {}
        for row in rows:
            if row.serial in ecus:
                continue
            ecus[row.serial] = StoredEcu(
                row.id,
                row.serial,
                row.vehicle_id,
                row.owner_vin,
                row.owner_exported_at,
                (row.ecu_type, row.hardware_part_number, row.hardware_version, row.protocol),
                (row.software_part_number, row.software_version, row.calibration_id),
                row.software_source,
                row.software_observed_at,
                row.import_id,
                row.removed_at,
            )
            if row.removed_at is None:
                active.setdefault(row.vehicle_id, []).append(row.serial)
        new_ids = iter(bulk.reserve_vehicle_ids(len(vins) - len(vehicles)))
        return BatchDiff(
            self.report.import_id,
            utcnow(),
            bulk.timestamp,
            vehicles,
            ecus,
            active,
            new_ids,
        )

    def _write(self, diff: BatchDiff) -> None:
        bulk = self.bulk
        bulk.insert("vehicles", VEHICLE_COLUMNS, diff.new_vehicles)
        bulk.update_by_id("vehicles", VEHICLE_UPDATE_COLUMNS, diff.changed_vehicle_rows(bulk.json))
        bulk.update_by_id("ecus", ECU_UPDATE_COLUMNS, diff.changed_ecu_rows())
        bulk.insert("ecus", ECU_COLUMNS, diff.new_ecus)
        bulk.insert("ecu_history", HISTORY_COLUMNS, diff.history)


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
                and stored.id != -1
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


def _create_import(engine: Engine, source_name: str, strict: bool, started_by: str | None) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(FleetImport)
                .values(
                    source_name=source_name[:500],
                    strict=strict,
                    status="running",
                    started_at=utcnow(),
                    counts={},
                    started_by=started_by,
                )
                .returning(FleetImport.id)
            ).scalar_one()
        )


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


def _save_progress(conn: Connection, report: ImportReport) -> None:
    conn.execute(
        update(FleetImport)
        .where(FleetImport.id == report.import_id)
        .values(counts=report.summary(), format=report.format, compressed=report.compressed)
    )


def _finish(engine: Engine, report: ImportReport, status: str, error: str | None = None) -> None:
    report.status, report.error, report.finished_at = status, error, utcnow()
    with engine.begin() as conn:
        conn.execute(
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
