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

import collections
import contextlib
import dataclasses
import enum
import fcntl
import functools
import gc
import io
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
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
from otacm.fleet._diff import Counts
from otacm.fleet._load import (
    LineChunk,
    LoadedChunk,
    LoadJob,
    PlanJob,
    PlannedChunk,
    jsonl_chunks,
    load_batch,
    load_lines,
    plan_lines,
    validated_lines,
    worker_started,
)
from otacm.fleet._pipeline import (
    COLLECT_EVERY,
    ReadAhead,
    Validated,
    batches_of,
    collector_paused,
    read_ahead,
)
from otacm.fleet._plan import RegistryPlanner, Rejection, Rows
from otacm.fleet.models import FleetImport, FleetImportRejection
from otacm.fleet.parser import ExportReader, ImportFileError, open_export
from otacm.fleet.records import RawRecord
from otacm.security import audit
from otacm.security.audit import SYSTEM, Actor

log = logging.getLogger(__name__)

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
# Lines of a first load's chunk: a chunk is no transaction of its own, and smaller chunks
# keep the memory of the workers and of the results waiting to be written low (at 1M
# vehicles on SQLite, 1000 lines peak at 443 MB for the import and its workers, 2000 at 484).
FIRST_LOAD_CHUNK_LINES = 1000


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
    # Worker processes that parsed and planned the file (0: the importing process alone).
    workers: int = 0

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
    planner = RegistryPlanner(
        BulkIO(read_conn), report, report.import_id, engine, commit_reads=not strict
    )
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
        size = None
        if origin is not None:
            size = buffered.seek(0, io.SEEK_END) - origin
            buffered.seek(origin)
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
                first_load = _FirstLoad(writer, report, strict, keep, on_batch)
                job = LoadJob(
                    report.import_id,
                    reader.format == "jsonl",
                    settings.vin_check_digit,
                    settings.import_max_line_bytes,
                    writer.bulk.postgresql,
                )
                outcome = first_load.run(
                    lambda first_id: _Chunks.of(reader, job, settings, size or 0, first_id, report)
                )
                if outcome is _Outcome.GAVE_WAY:
                    buffered.seek(origin)
                    reader = open_export(buffered, settings.import_max_line_bytes)
            workers = settings.import_workers or os.cpu_count() or 1
            if (
                outcome is not _Outcome.LOADED
                and not strict
                and writer.bulk.postgresql
                and reader.lines is not None
                and size is not None
                and size >= settings.import_parallel_min_bytes
            ):
                plan_job = PlanJob(
                    report.import_id,
                    settings.vin_check_digit,
                    settings.import_max_line_bytes,
                    engine.url.render_as_string(hide_password=False),
                )
                report.workers = workers
                with _worker_pool(workers) as pool:
                    _import_in_workers(
                        jsonl_chunks(reader.lines, settings.import_batch_size, 0),
                        pool,
                        workers,
                        plan_job,
                        planner,
                        writer,
                        report,
                        keep,
                        on_batch,
                    )
            elif outcome is not _Outcome.LOADED:
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
    planner: RegistryPlanner,
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
            rows = Rows.of(plan.diff, writer.bulk.json)
            # What the batch names and what it writes: removing an ECU writes a serial that
            # none of its records names.
            in_flight_keys = plan.keys | plan.diff.written_keys()
            in_flight = writer.submit(rows, plan.rejected)
        settle()
    finally:
        # Never leave a batch half-written behind us: let the one in flight finish.
        if in_flight is not None:
            with contextlib.suppress(BaseException):
                in_flight.result()


def _import_in_workers(
    chunks: Iterator[LineChunk],
    pool: ProcessPoolExecutor,
    workers: int,
    job: PlanJob,
    planner: RegistryPlanner,
    writer: _Writer,
    report: ImportReport,
    keep: int,
    on_batch: Callable[[ImportReport], None] | None,
) -> None:
    """The batch path with its chunks parsed, validated and planned by worker processes
    (PostgreSQL, JSON Lines): each plans against the registry as committed when it reads it,
    and this process writes the plans in the file's order.

    A worker's plan stands only if no batch written after it was handed out (so possibly
    after the worker read the registry) wrote a VIN or serial the plan read, and if no VIN
    it depends on was taken earlier in the file (the importing connection remembers those).
    Otherwise this process plans the chunk again, after the writes before it, exactly as the
    in-process path would; a clean export seldom needs it.
    """
    depth = workers + 1
    pending: collections.deque[tuple[LineChunk, list[int], int, Future[PlannedChunk]]] = (
        collections.deque()
    )
    # Keys written by each chunk handed to the writer, until every chunk in flight saw them.
    written: dict[int, set[str]] = {}
    committed = 0  # chunks up to this number are written and committed
    in_flight: tuple[int, Future[None]] | None = None

    def settle() -> None:
        nonlocal in_flight, committed
        if in_flight is not None:
            (number, future), in_flight = in_flight, None
            future.result()
            committed = number
            if on_batch:
                on_batch(report)

    def submit(chunk: LineChunk) -> None:
        # Ids set aside in the file's order: the chunk's new vehicles take them, whoever
        # plans it.
        ids = list(planner.bulk.vehicle_ids(len(chunk.lines), planner.engine))
        pending.append((chunk, ids, committed, pool.submit(plan_lines, job, chunk, ids)))

    def stands(result: PlannedChunk, seen_from: int) -> bool:
        if any(not result.reads.isdisjoint(written[n]) for n in written if n > seen_from):
            return False
        return not planner.bulk.seen_vins(result.checked_vins)

    def replan(chunk: LineChunk, ids: list[int]) -> tuple[Rows, list[Rejection], set[str]]:
        settle()
        batch = validated_lines(job.policy, job.max_line_bytes, chunk)
        planner.reserved_ids = ids
        try:
            plan = planner.plan(batch, lambda _keys: None)
        finally:
            planner.reserved_ids = None
        return Rows.of(plan.diff, writer.bulk.json), plan.rejected, plan.diff.written_keys()

    def write_planned(
        chunk: LineChunk, ids: list[int], seen_from: int, future: Future[PlannedChunk]
    ) -> None:
        nonlocal in_flight
        result = future.result()
        if chunk.number % COLLECT_EVERY == 0:
            gc.collect()
        if stands(result, seen_from):
            assert result.rows is not None
            rows, rejected, writes = result.rows, result.rejections, result.writes
            report.records_read += result.records_read
            report.records_rejected += result.records_rejected
            report.counts.add(result.counts)
            planner.bulk.remember(result.taken_vins)
            planner.bulk.conn.commit()
        else:
            rows, rejected, writes = replan(chunk, ids)
        report.rejections.extend(rejected[: keep - len(report.rejections)])
        settle()
        written[chunk.number] = writes
        # Chunks still to be checked, and those handed out from now on, were handed out
        # after `oldest` was committed: what was written up to it, they all see.
        oldest = min([committed, *(seen for _c, _i, seen, _f in pending)])
        for number in [n for n in written if n <= oldest]:
            del written[number]
        in_flight = (chunk.number, writer.submit(rows, rejected))

    try:
        for chunk in chunks:
            submit(chunk)
            while len(pending) >= depth or (pending and pending[0][3].done()):
                write_planned(*pending.popleft())
        while pending:
            write_planned(*pending.popleft())
        settle()
    finally:
        for *_, future in pending:
            future.cancel()
        # Never leave a batch half-written behind us: let the one in flight finish.
        if in_flight is not None:
            with contextlib.suppress(BaseException):
                in_flight[1].result()


def _import_strict(
    batches: Iterable[Validated],
    planner: RegistryPlanner,
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
            writer.write_rows(Rows.of(plan.diff, writer.bulk.json))
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


class _Repeat(Exception):
    """A later batch of a first load may repeat a VIN or serial of an earlier one."""


class _Outcome(enum.Enum):
    DECLINED = "the registry is not empty, or its tables stayed busy: nothing was read"
    LOADED = "the import is done"
    GAVE_WAY = "rolled back: the batch path must import the file from its start"


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
        report: ImportReport,
        strict: bool,
        keep: int,
        on_batch: Callable[[ImportReport], None] | None,
    ) -> None:
        self.writer, self.report = writer, report
        self.strict, self.keep, self.on_batch = strict, keep, on_batch
        self.in_flight: Future[None] | None = None

    def run(self, make_chunks: Callable[[int], _Chunks]) -> _Outcome:
        conn = self.writer.bulk.conn
        registry = Registry(self.writer.bulk)
        chunks: _Chunks | None = None
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
            self.report.first_load = True
            first_id = registry.first_vehicle_id()
            chunks = make_chunks(first_id)
            started = time.monotonic()
            kept, next_id = self._load(chunks, first_id)
            loaded = time.monotonic()
            if self.report.records_rejected and self.strict:
                conn.rollback()
                self.report.counts = Counts()
                with conn.begin():
                    _store_rejections(conn, self.report.import_id, kept)
                return _Outcome.LOADED
            registry.rebuild_indexes(FIRST_LOAD_INDEX_MEMORY)
            registry.ids_used_below(next_id)
            conn.commit()
            log.info(
                "fleet import %s: first load of %d records: rows written in %.1f s, "
                "indexes built in %.1f s",
                self.report.import_id,
                self.report.records_read,
                loaded - started,
                time.monotonic() - loaded,
            )
            return _Outcome.LOADED
        except BaseException as exc:
            self._settle_quietly()
            if conn.in_transaction():
                conn.rollback()
            repeat = isinstance(exc, _Repeat) or is_repeated_key(exc)
            if chunks is not None:
                # Before the file is read again, the reader must have let go of it.
                chunks.close(wait=repeat)
            if not repeat:
                raise
            # The batch path takes over from the start of the file, with a fresh report.
            report = self.report
            report.records_read = report.records_rejected = 0
            report.counts, report.rejections, report.first_load = Counts(), [], False
            report.workers = 0
            return _Outcome.GAVE_WAY
        finally:
            if chunks is not None:
                chunks.close()

    def _load(self, chunks: _Chunks, next_id: int) -> tuple[list[Rejection], int]:
        """Write the chunks in the file's order; the rejections a strict import keeps, and
        the first vehicle id no chunk used."""
        report, keep, strict = self.report, self.keep, self.strict
        kept: list[Rejection] = []
        for chunk in chunks:
            if chunk.number % COLLECT_EVERY == 0:
                gc.collect()
            if chunk.conflicts and chunk.number > 1:
                raise _Repeat
            report.records_read += chunk.records_read
            report.records_rejected += chunk.records_rejected
            report.counts.add(chunk.counts)
            report.rejections.extend(chunk.rejections[: keep - len(report.rejections)])
            if strict:
                kept.extend(chunk.rejections[: max(0, STRICT_REJECTION_LIMIT - len(kept))])
            next_id = max(next_id, chunk.next_id)
            self._settle()
            # After a strict import's first bad record nothing will be kept: write nothing.
            if not (strict and report.records_rejected):
                self.in_flight = self.writer.submit_loaded(chunk, rejections=not strict)
            elif self.on_batch:
                self.on_batch(report)
        self._settle()
        return kept, next_id

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


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for an import. Started afresh ("spawn"), not forked: the importing
    process may be a server with threads that hold locks. Like any user of process pools, a
    script that imports this way guards its entry point with `if __name__ == "__main__":`."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_started
    )


class _Chunks:
    """A first load's chunks, planned and encoded (`_load`) in the file's order: by worker
    processes when the file is large enough to repay starting them, else in this one."""

    def __init__(
        self,
        tasks: Iterator[Callable[[], LoadedChunk]],
        pool: ProcessPoolExecutor | None,
        reader: ReadAhead | None = None,
        *,
        workers: int = 1,
    ) -> None:
        self._tasks, self._pool, self._reader = tasks, pool, reader
        # A chunk per worker in flight and one waiting: each stays busy, memory stays bounded.
        self._depth = workers + 1

    @classmethod
    def of(
        cls,
        export: ExportReader,
        job: LoadJob,
        settings: Settings,
        size: int,
        first_id: int,
        report: ImportReport,
    ) -> _Chunks:
        if export.lines is None:
            # CSV: a vehicle's rows may span any number of lines, so the file is parsed here
            # (a thread reads ahead) and its batches are planned and encoded in this process.
            reader = read_ahead(
                batches_of(export.records, settings.import_batch_size), settings.vin_check_digit
            )

            def csv_tasks() -> Iterator[Callable[[], LoadedChunk]]:
                next_id = first_id
                for number, batch in enumerate(reader, 1):
                    yield functools.partial(load_batch, job, number, next_id, batch)
                    next_id += len(batch)

            return cls(csv_tasks(), None, reader)
        lines = min(settings.import_batch_size, FIRST_LOAD_CHUNK_LINES)
        chunks = jsonl_chunks(export.lines, lines, first_id)
        if size < settings.import_parallel_min_bytes:
            return cls((functools.partial(load_lines, job, chunk) for chunk in chunks), None)
        workers = settings.import_workers or os.cpu_count() or 1
        report.workers = workers
        job = dataclasses.replace(job, pack_rows=True)
        tasks = (functools.partial(load_lines, job, chunk) for chunk in chunks)
        return cls(tasks, _worker_pool(workers), workers=workers)

    def __iter__(self) -> Iterator[LoadedChunk]:
        if self._pool is None:
            for task in self._tasks:
                yield task()
            return
        pending: collections.deque[Future[LoadedChunk]] = collections.deque()
        for task in self._tasks:
            pending.append(self._pool.submit(task))
            if len(pending) >= self._depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self, *, wait: bool = False) -> None:
        """Stop the work; with `wait`, return once nothing reads the file any more."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._reader is not None:
            self._reader.close(wait=wait)


class _Writer:
    """Writes planned batches, one transaction each, on a thread of its own."""

    def __init__(self, bulk: BulkIO, report: ImportReport) -> None:
        self.bulk = bulk
        self.report = report
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, rows: Rows, rejected: list[Rejection]) -> Future[None]:
        summary = self.report.summary()
        return self._thread().submit(self._write_batch, rows, rejected, summary)

    def submit_loaded(self, chunk: LoadedChunk, *, rejections: bool) -> Future[None]:
        """Write a first load's chunk (and its rejections) in the transaction the connection
        is in."""
        return self._thread().submit(self._write_loaded, chunk, rejections)

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="fleet-import-writer")
        return self._executor

    def _write_loaded(self, chunk: LoadedChunk, rejections: bool) -> None:
        bulk = self.bulk
        if isinstance(chunk.vehicles, str) and isinstance(chunk.ecus, str):
            bulk.copy_text("vehicles", VEHICLE_COLUMNS, chunk.vehicles)
            bulk.copy_text("ecus", ECU_COLUMNS, chunk.ecus)
        else:
            vehicles, ecus = chunk.rows()
            bulk.insert("vehicles", VEHICLE_COLUMNS, vehicles)
            bulk.insert("ecus", ECU_COLUMNS, ecus)
        if rejections:
            _store_rejections(self.bulk.conn, self.report.import_id, chunk.rejections)

    def _write_batch(self, rows: Rows, rejected: list[Rejection], summary: dict[str, Any]) -> None:
        conn = self.bulk.conn
        with conn.begin():
            self.write_rows(rows)
            _store_rejections(conn, self.report.import_id, rejected)
            conn.execute(
                update(FleetImport)
                .where(FleetImport.id == self.report.import_id)
                .values(
                    counts=summary, format=self.report.format, compressed=self.report.compressed
                )
            )

    def write_rows(self, rows: Rows) -> None:
        bulk = self.bulk
        bulk.insert("vehicles", VEHICLE_COLUMNS, rows.new_vehicles)
        bulk.update_by_id("vehicles", VEHICLE_UPDATE_COLUMNS, rows.changed_vehicles)
        bulk.update_by_id("ecus", ECU_UPDATE_COLUMNS, rows.changed_ecus)
        bulk.insert("ecus", ECU_COLUMNS, rows.new_ecus)
        bulk.insert("ecu_history", HISTORY_COLUMNS, rows.history)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


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
