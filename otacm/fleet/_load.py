"""A first load's work on its records, in chunks that worker processes can take.

Into an empty registry every chunk of the file can be planned without the database (nothing
stored to look up), so the parsing, validating, planning and encoding of rows, which is
nearly all of a first load's work in Python, can run in several processes at once while the
importing process writes what they return (`importer._FirstLoad`). A chunk carries what it
needs: its lines, the number of its first line, and the first vehicle id it may use; it
returns its rows ready to write (COPY text for PostgreSQL, parameter rows for SQLite) with
its rejections and counts.

The vehicle ids a chunk may use start where the previous chunk's range ends; a range is as
long as the chunk has records, so the ids follow the file's order and a rejected record
leaves a gap, as the sequence's own ids may.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from otacm.config import VinCheckDigitPolicy
from otacm.db import make_engine, sqlite_timestamp
from otacm.fleet._bulk import BulkIO
from otacm.fleet._diff import Counts
from otacm.fleet._pipeline import Validated
from otacm.fleet._plan import EmptyRegistryPlanner, RegistryPlanner, Rejection, Rows, Tally
from otacm.fleet.parser import TruncatedFile, jsonl_records
from otacm.fleet.records import Problem, RawRecord, validate_record


@dataclass(frozen=True, slots=True)
class LoadJob:
    """What every chunk of one first load shares."""

    import_id: int
    jsonl: bool
    policy: VinCheckDigitPolicy
    max_line_bytes: int
    postgresql: bool
    # Whether chunks are loaded in worker processes (see `LoadedChunk.packed`).
    pack_rows: bool = False


@dataclass(slots=True)
class LineChunk:
    """Consecutive lines of a JSON Lines file (None for a line over the length limit)."""

    number: int
    first_line: int
    first_id: int
    lines: list[bytes | None]
    # Why a compressed file broke off after these lines, if it did.
    truncated: str | None = None


@dataclass(slots=True)
class LoadedChunk:
    """A chunk planned against the empty registry: rows to write, and what it rejected."""

    number: int
    records_read: int = 0
    records_rejected: int = 0
    # Records rejected for contradicting another record (see `PlannerBase.conflicts`).
    conflicts: int = 0
    counts: Counts = field(default_factory=Counts)
    rejections: list[Rejection] = field(default_factory=list)
    # PostgreSQL: COPY text; SQLite: parameter rows.
    vehicles: str | list[tuple[Any, ...]] = ""
    ecus: str | list[tuple[Any, ...]] = ""
    # SQLite rows from a worker process travel and wait pickled: a fifth of their size as
    # objects, which bounds the importing process's memory while chunks queue for writing.
    packed: bytes | None = None

    def rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The SQLite parameter rows of the vehicles and the ECUs."""
        if self.packed is not None:
            vehicles, ecus = pickle.loads(self.packed)
            return vehicles, ecus
        assert isinstance(self.vehicles, list) and isinstance(self.ecus, list)
        return self.vehicles, self.ecus

    # The first vehicle id the chunk left unused.
    next_id: int = 0


# Chunks a worker process plans between two runs of its (otherwise paused) garbage collector.
_COLLECT_EVERY = 25
_loaded = 0


def worker_started() -> None:
    """A worker process of a first load: like the importing process, it keeps Python's
    garbage collector out of the way of its tens of millions of short-lived objects."""
    gc.disable()


def validated_lines(
    policy: VinCheckDigitPolicy, max_line_bytes: int, chunk: LineChunk
) -> Validated:
    """The chunk's records, parsed and validated."""
    records = jsonl_records(zip(itertools.count(chunk.first_line), chunk.lines), max_line_bytes)
    batch = [(raw, None if raw.problems else validate_record(raw, policy)) for raw in records]
    if chunk.truncated is not None:
        after = chunk.first_line + len(chunk.lines)
        batch.append((RawRecord(after, {}, problems=[Problem(None, chunk.truncated)]), None))
    return batch


def _collect_now_and_then() -> None:
    global _loaded
    _loaded += 1
    if _loaded % _COLLECT_EVERY == 0 and not gc.isenabled():
        gc.collect()


def load_lines(job: LoadJob, chunk: LineChunk) -> LoadedChunk:
    """Parse, validate, plan and encode one chunk of JSON Lines (in a worker process)."""
    batch = validated_lines(job.policy, job.max_line_bytes, chunk)
    # JSON escapes every backslash and control character, so a chunk whose lines hold no
    # backslash holds none in any value either: its ECU rows need no COPY escaping.
    plain = not any(line is not None and b"\\" in line for line in chunk.lines)
    loaded = load_batch(job, chunk.number, chunk.first_id, batch, plain=plain)
    _collect_now_and_then()
    return loaded


def load_batch(
    job: LoadJob, number: int, first_id: int, batch: Validated, *, plain: bool = False
) -> LoadedChunk:
    """Plan and encode validated records. `plain`: no value holds a backslash."""
    result = LoadedChunk(number)
    ids = itertools.count(first_id)
    timestamp = _copy_timestamp if job.postgresql else sqlite_timestamp
    planner = EmptyRegistryPlanner(result, job.import_id, timestamp, ids, jsonl=job.jsonl)
    plan = planner.plan(batch, _no_wait)
    diff = plan.diff
    result.conflicts = planner.conflicts
    result.rejections = plan.rejected
    result.next_id = next(ids)
    if job.postgresql:
        result.vehicles = copy_text(diff.new_vehicles)
        result.ecus = ecu_copy_text(diff.new_ecus) if plain else copy_text(diff.new_ecus)
    else:
        result.vehicles, result.ecus = diff.new_vehicles, diff.new_ecus
        if job.pack_rows:
            result.packed = pickle.dumps((result.vehicles, result.ecus), pickle.HIGHEST_PROTOCOL)
            result.vehicles = result.ecus = []
    return result


def _no_wait(_keys: set[str]) -> None:
    pass


def _copy_timestamp(value: datetime) -> str:
    return value.isoformat()


# -- COPY text format ----------------------------------------------------------------------------
# https://www.postgresql.org/docs/current/sql-copy.html (Text Format): tab between columns,
# newline after each row, \N for NULL, backslash escapes for backslash and control characters.

_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: Any) -> str:
    if value is None:
        return _NULL
    text = value if type(value) is str else str(value)
    return text.translate(_ESCAPES)


def copy_text(rows: Sequence[tuple[Any, ...]]) -> str:
    """Rows in COPY's text format, every value escaped."""
    return "".join(["\t".join([_copy_value(v) for v in row]) + "\n" for row in rows])


def ecu_copy_text(rows: Sequence[tuple[Any, ...]]) -> str:
    """New ECU rows (`_bulk.ECU_COLUMNS`) in COPY's text format, for values known to hold no
    backslash: validated ECU values hold no control characters, and most of a first load's
    rows are these, so they skip the escaping."""
    return "".join(
        [
            f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t{r[5]}\t{r[6]}\t{r[7]}\t"
            f"{_NULL if r[8] is None else r[8]}\t{r[9]}\t{r[10]}\t{r[11]}\t"
            f"{_NULL if r[12] is None else r[12]}\t{r[13]}\n"
            for r in rows
        ]
    )


def jsonl_chunks(
    lines: Iterator[tuple[int, bytes | None]], chunk_lines: int, first_id: int
) -> Iterator[LineChunk]:
    """Cut numbered lines into chunks of `chunk_lines`, each with its range of vehicle ids.
    A compressed file that breaks off ends with a chunk that reports it."""
    number, next_line = 0, 1
    taken: list[bytes | None] = []
    truncated: str | None = None
    try:
        for line_number, raw in lines:
            if not taken:
                next_line = line_number
            taken.append(raw)
            if len(taken) >= chunk_lines:
                number += 1
                yield LineChunk(number, next_line, first_id, taken)
                first_id += len(taken)
                next_line += len(taken)
                taken = []
    except TruncatedFile as exc:
        truncated, next_line = exc.reason, (next_line if taken else exc.line + 1)
    if taken or truncated is not None:
        yield LineChunk(number + 1, next_line, first_id, taken, truncated)


# -- planning against the registry, for the batch path -------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanJob:
    """What every chunk of one import planned in worker processes shares (PostgreSQL)."""

    import_id: int
    policy: VinCheckDigitPolicy
    max_line_bytes: int
    database_url: str


@dataclass(slots=True)
class PlannedChunk:
    """A chunk planned against the committed registry by a worker process.

    Valid only if nothing written after the worker read the registry touched what it read
    (`reads`), and if none of `checked_vins` was taken by an earlier chunk of the same file:
    the importing process checks both, and plans the chunk again itself otherwise.
    """

    number: int
    records_read: int = 0
    records_rejected: int = 0
    counts: Counts = field(default_factory=Counts)
    rejections: list[Rejection] = field(default_factory=list)
    rows: Rows | None = None
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    # VINs the plan would have looked up among those taken earlier in the file.
    checked_vins: list[str] = field(default_factory=list)
    # VINs the chunk takes, with their lines (to remember for later chunks).
    taken_vins: list[tuple[str, int]] = field(default_factory=list)


class _WorkerPlanner(RegistryPlanner):
    """Plans on a worker process's own connection. What the file took earlier is unknown
    here: the VINs it would have checked are handed back instead, and new vehicles take the
    ids the importing process reserved for the chunk, so that ids follow the file's order."""

    def __init__(self, bulk: BulkIO, tally: Tally, import_id: int, engine: Engine) -> None:
        super().__init__(bulk, tally, import_id, engine, commit_reads=True)
        self.checked: list[str] = []
        self.taken: list[tuple[str, int]] = []

    def _seen_vins(self, vins: list[str]) -> dict[str, int]:
        self.checked = vins
        return {}

    def _remember(self, vins: list[tuple[str, int]]) -> None:
        self.taken = vins


_planner: _WorkerPlanner | None = None


def _worker_planner(job: PlanJob, tally: Tally) -> _WorkerPlanner:
    global _planner
    if _planner is None or _planner.import_id != job.import_id:
        engine = make_engine(job.database_url, pool_size=1, max_overflow=0)
        conn = engine.connect()
        # Closed when the pool lets the worker go, not dropped when the process ends.
        atexit.register(engine.dispose)
        atexit.register(conn.close)
        _planner = _WorkerPlanner(BulkIO(conn), tally, job.import_id, engine)
        _planner.jsonl = True
    _planner.tally = tally
    return _planner


def plan_lines(job: PlanJob, chunk: LineChunk, ids: list[int]) -> PlannedChunk:
    """Parse, validate and plan one chunk of JSON Lines against the registry (in a worker)."""
    batch = validated_lines(job.policy, job.max_line_bytes, chunk)
    result = PlannedChunk(chunk.number)
    planner = _worker_planner(job, result)
    planner.reserved_ids = ids
    plan = planner.plan(batch, _no_wait)
    diff = plan.diff
    result.rejections = plan.rejected
    result.rows = Rows.of(diff, planner.bulk.json)
    result.reads = plan.keys | diff.read_keys()
    result.writes = diff.written_keys()
    result.checked_vins, result.taken_vins = planner.checked, planner.taken
    _collect_now_and_then()
    return result
