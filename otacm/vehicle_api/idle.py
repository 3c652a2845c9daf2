"""The idle-poll index: a fleet's idle polls answered from memory, without the database.

Most of a fleet is idle most of the time, and each idle vehicle polls every 15 minutes. On two
cores a poll that makes even one database query costs several times a bare endpoint, so each
server process keeps, per vehicle id, what an idle answer needs:

- `digests`: the SHA-256 of the vehicle's live credential, 32 bytes at `vehicle_id * 32`
  (zeros: none known). Tokens name their vehicle (`otv_<id>_<secret>`, `credentials.py`), so
  checking one is a hash and a constant-time comparison of 32 bytes;
- `work`: one byte per vehicle id, set when the vehicle may have work (a deployment unfinished
  in an open wave: `auth.HAS_WORK_SQL`). Ids past its end have none.

A poll is answered 204 from memory when the token's digest matches and the work byte is clear;
anything else (a flag set, an unknown or earlier-format token, a certificate-identified vehicle,
an index not loaded or gone stale) takes the database path, which stays the authority. A flag set
by mistake only costs that query; a flag missing would hold back an offer, so the refresh errs
towards setting them. 1,000,000 vehicles take 33 MB.

One task per server process refreshes the index (`start`/`close`, from the app's lifespan):

- at start, a full load (credentials by a server-side cursor on PostgreSQL);
- every `OTACM_VEHICLE_INDEX_REFRESH` (1 s), what changed since its last look: credentials
  issued or revoked since; waves that opened (every open wave of a running or paused campaign
  is read and compared with the last look, no clock involved) and then their unfinished
  deployments' vehicles; deployments that became `pending` since in an open wave, which is the
  only way a deployment comes back into flight (a retry) or joins one (a dynamic campaign's
  newcomers; `campaigns/states.py`);
- every `WORK_REBUILD_EVERY` the work flags anew, so that finished vehicles drop out, and every
  `CREDENTIALS_RELOAD_EVERY` the credentials anew.

"Since" is by the database's clock. A row's time is its writer's clock when its work began, and
the row commits later: each look reads again from `CREDENTIALS_MARGIN` / `WORK_MARGIN` before
the previous one, and on PostgreSQL the previous one counts from the start of the oldest
transaction that was still writing that table then (`pg_locks`; at most `MAX_PULLBACK` back),
so that a long batch (provisioning a whole fleet, which revokes the earlier credentials) is read
when it commits. A batch too large for one look (`DELTA_CAP`) is reloaded in full instead. What
escapes all that (clocks apart by more than the margins) is caught by the full rebuilds.

Guarantees, with the refresh keeping up: new work is seen within about one interval (plus the
refresh's own duration); a revoked credential is refused within one interval (until then it
can only learn "nothing for you": offers, events, manifests and director metadata always check
the database); a new credential works at once, through the database, and from memory after
the next refresh. If refreshes stop succeeding, memory stops answering `max_age` (two intervals
and 2 s) after the last good one, and every poll takes the database path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Connection, Engine, and_, func, select, text

from otacm.campaigns.models import Campaign, CampaignWave, Deployment
from otacm.campaigns.schemas import CampaignState
from otacm.campaigns.states import UNFINISHED, DeploymentState
from otacm.config import Settings
from otacm.db import utcnow
from otacm.vehicle_api.credentials import token_vehicle_id
from otacm.vehicle_api.models import VehicleCredential

log = logging.getLogger("otacm.vehicle_api.idle")

DIGEST = 32
# How far before its last look a refresh reads again: a row's time is its writer's clock when
# its work began, and it commits later. Provisioning stamps its time as its transaction begins;
# the engine stamps one time per tick, then steps campaign after campaign in transactions of
# their own.
CREDENTIALS_MARGIN = timedelta(seconds=5)
WORK_MARGIN = timedelta(seconds=30)
# The furthest a transaction still writing moves a look back (PostgreSQL).
MAX_PULLBACK = timedelta(minutes=10)
WORK_REBUILD_EVERY = 60.0
CREDENTIALS_RELOAD_EVERY = 15 * 60.0
# More credentials changed since the last look than this (a fleet provisioned anew): the whole
# set is reloaded, streamed, rather than read as one large delta; at most once per RELOAD_GAP,
# and memory does not answer while one is due.
DELTA_CAP = 20_000
RELOAD_GAP = 30.0
# Vehicle ids past this are left to the database (the arrays would take 33 bytes per id up to
# the highest: 1.6 GB here).
MAX_VEHICLE_ID = 50_000_000
# Rows per round trip of the full credential load.
BATCH = 50_000
# The states a deployment leaves the terminal ones by, or is created in.
_ENTRY = DeploymentState.PENDING.value
_UNFINISHED = sorted(s.value for s in UNFINISHED)
# Campaigns in which waves open and deployments become pending (the engine's TICKED).
_LIVE_CAMPAIGNS = (CampaignState.RUNNING.value, CampaignState.PAUSED.value)

# Per process: one series per server worker, so that a scrape says which one it reached.
_PID = ("pid",)
INDEX_CREDENTIALS = Gauge(
    "otacm_vehicle_index_credentials", "Live credentials at the index's last full load", _PID
)
INDEX_BYTES = Gauge("otacm_vehicle_index_bytes", "Size of the idle-poll index's arrays", _PID)
INDEX_LOAD_SECONDS = Gauge(
    "otacm_vehicle_index_load_seconds", "Duration of the last full load of credentials", _PID
)
INDEX_REFRESHES = Counter(
    "otacm_vehicle_index_refreshes_total", "Idle-poll index refreshes by outcome", ["outcome"]
)


@dataclass
class _Look:
    """What one refresh read; applied on the event loop (`IdleIndex._apply`)."""

    credentials_mark: datetime  # the time of this look, for each kind of row
    work_mark: datetime
    waves: frozenset[tuple[int, int]]
    credentials: bytearray | None = None  # a full load
    credentials_behind: bool = False  # too many changes, and a full load not yet due
    live: list[tuple[int, bytes]] = field(default_factory=list)  # issued since
    revoked: list[tuple[int, bytes]] = field(default_factory=list)  # revoked since
    work: bytearray | None = None  # a full rebuild
    gained: list[int] = field(default_factory=list)  # may have gained work since
    load_seconds: float | None = None
    loaded_credentials: int = 0


def _digest(token_hash: str) -> bytes | None:
    # Only what the database path can match (`hash_token`: lower-case hex), so that memory never
    # accepts a token the database would refuse. (A hash of digits alone fails islower(): that
    # vehicle, one in 10^13, asks the database.)
    if len(token_hash) != 2 * DIGEST or not token_hash.islower():
        return None
    try:
        return bytes.fromhex(token_hash)
    except ValueError:
        return None


def _grown(array: bytearray, needed: int) -> bytearray:
    """`array`, at least `needed` long; grown by a quarter at least, so that ids handed out one
    by one do not copy it each time."""
    if needed > len(array):
        array.extend(bytes(max(needed - len(array), len(array) // 4)))
    return array


def _flags(vehicle_ids: Iterable[int]) -> bytearray:
    ids = [v for v in vehicle_ids if 0 <= v <= MAX_VEHICLE_ID]
    work = bytearray(max(ids) + 1 if ids else 0)
    for vehicle_id in ids:
        work[vehicle_id] = 1
    return work


class IdleIndex:
    """The index of one server process; see the module's docstring."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.interval = settings.vehicle_index_refresh.total_seconds()
        # Memory answers only this long after the last successful refresh.
        self.max_age = 2 * self.interval + 2.0
        self.digests = bytearray()
        self.work = bytearray()
        self.fresh_until = -math.inf  # time.monotonic(); nothing is answered before a load
        self._credentials_mark: datetime | None = None
        self._work_mark: datetime | None = None
        self._waves: frozenset[tuple[int, int]] = frozenset()
        self._credentials_at = -math.inf
        self._work_at = -math.inf
        self._lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    # --- the poll ---------------------------------------------------------------------------

    def is_idle(self, token: str) -> bool:
        """Whether `token` was a live credential of a vehicle without work at the last refresh.
        False means "ask the database", never "refuse"."""
        if time.monotonic() >= self.fresh_until:
            return False
        vehicle_id = token_vehicle_id(token)
        if vehicle_id is None:
            return False
        at = vehicle_id * DIGEST
        digests = self.digests
        if at + DIGEST > len(digests):
            return False
        # The credential first, then the flag: without a valid token, no answer's timing says
        # whether a vehicle has work. An empty slot is 32 zero bytes, which no SHA-256 is.
        if not hmac.compare_digest(
            hashlib.sha256(token.encode("utf-8")).digest(), digests[at : at + DIGEST]
        ):
            return False
        work = self.work
        return vehicle_id >= len(work) or not work[vehicle_id]

    # --- the refresh task ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the refresh task on the running loop (the app's lifespan); the first load runs
        in the background, polls take the database path until it is done."""
        if not self.enabled or self._task is not None:
            return
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="vehicle index")

    async def close(self) -> None:
        """Stop the task, letting a refresh in progress finish (its thread would run on)."""
        if self._task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            log.warning("vehicle index: the refresh did not finish in 10 s; cancelled")
        self._task = None
        self.fresh_until = -math.inf

    async def ready(self) -> None:
        """Wait for the first full load."""
        assert self._ready is not None, "the index was not started"
        await self._ready.wait()

    async def _run(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await self.refresh()
            except Exception:
                INDEX_REFRESHES.labels("failed").inc()
                if not self._failing:
                    log.exception(
                        "vehicle index: refresh failed; polls use the database until one succeeds"
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("vehicle index: refreshing again")
                self._failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)

    async def refresh(self, *, full: bool = False) -> None:
        """One look at the database, then its changes applied; `full` reloads everything."""
        if not self.enabled:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            began = time.monotonic()
            look = await asyncio.to_thread(self._look, full, began)
            self._apply(look, began)
        INDEX_REFRESHES.labels("full" if look.credentials is not None else "delta").inc()
        if self._ready is not None and look.credentials is not None:
            self._ready.set()

    def _apply(self, look: _Look, began: float) -> None:
        """On the event loop, between two polls: the arrays never change under one."""
        if look.credentials is not None:
            self.digests = look.credentials
            self._credentials_at = began
            INDEX_CREDENTIALS.labels(os.getpid()).set(look.loaded_credentials)
            INDEX_LOAD_SECONDS.labels(os.getpid()).set(look.load_seconds or 0.0)
        else:
            digests = self.digests
            for vehicle_id, digest in look.revoked:
                at = vehicle_id * DIGEST
                if digests[at : at + DIGEST] == digest:
                    digests[at : at + DIGEST] = bytes(DIGEST)
            for vehicle_id, digest in look.live:
                at = vehicle_id * DIGEST
                digests = _grown(digests, at + DIGEST)
                digests[at : at + DIGEST] = digest
            self.digests = digests
        if look.work is not None:
            self.work = look.work
            self._work_at = began
        else:
            work = self.work
            for vehicle_id in look.gained:
                work = _grown(work, vehicle_id + 1)
                work[vehicle_id] = 1
            self.work = work
        self._work_mark = look.work_mark
        self._waves = look.waves
        if look.credentials_behind:
            # Its changes were not applied: read again from the same mark, answer nothing.
            self.fresh_until = -math.inf
        else:
            self._credentials_mark = look.credentials_mark
            # From now, not from `began`: a full load takes seconds, and the next refresh
            # follows it one interval later.
            self.fresh_until = time.monotonic() + self.max_age
        INDEX_BYTES.labels(os.getpid()).set(len(self.digests) + len(self.work))

    # --- the queries (in a worker thread) -----------------------------------------------------

    def _look(self, full: bool, began: float) -> _Look:
        credentials_mark, work_mark = self._credentials_mark, self._work_mark
        reload = (
            full
            or credentials_mark is None
            or began - self._credentials_at >= CREDENTIALS_RELOAD_EVERY
        )
        rebuild = full or work_mark is None or began - self._work_at >= WORK_REBUILD_EVERY
        with self.engine.connect() as conn:
            # The clock first: everything read after it is at least as new.
            look = _Look(*self._clock(conn), waves=self._open_waves(conn))
            if rebuild:
                look.work = _flags(self._all_work(conn))
            else:
                assert work_mark is not None
                look.gained = self._gained(conn, look.waves, work_mark - WORK_MARGIN)
            if not reload:
                assert credentials_mark is not None
                changed = self._changed_credentials(conn, credentials_mark - CREDENTIALS_MARGIN)
                if changed is not None:
                    look.live, look.revoked = changed
                elif began - self._credentials_at >= RELOAD_GAP:
                    reload = True
                else:
                    look.credentials_behind = True
        if reload:
            started = time.perf_counter()
            look.credentials, look.loaded_credentials = self._all_credentials()
            look.load_seconds = time.perf_counter() - started
            log.info(
                "vehicle index: %d credentials loaded in %.2f s",
                look.loaded_credentials,
                look.load_seconds,
            )
        return look

    def _clock(self, conn: Connection) -> tuple[datetime, datetime]:
        """The time of this look for credentials and for deployments: the database's, moved
        back to the start of the oldest transaction still writing that table (PostgreSQL;
        at most MAX_PULLBACK), whose rows will be visible only once it commits."""
        if conn.dialect.name != "postgresql":
            now = utcnow()  # SQLite: a file on this machine, one writer at a time
            return now, now
        writing = (
            "(SELECT min(a.xact_start) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'relation' AND l.relation = '{}'::regclass"
            " AND l.mode = 'RowExclusiveLock' AND a.pid <> pg_backend_pid())"
        )
        now, *oldest = conn.execute(
            text(
                f"SELECT now(), {writing.format('vehicle_credentials')},"
                f" {writing.format('deployments')}"
            )
        ).one()
        marks = [
            now if first is None or first >= now else max(first, now - MAX_PULLBACK)
            for first in oldest
        ]
        return marks[0], marks[1]

    def _open_waves(self, conn: Connection) -> frozenset[tuple[int, int]]:
        rows = conn.execute(
            select(CampaignWave.campaign_id, CampaignWave.number)
            .join(Campaign, Campaign.id == CampaignWave.campaign_id)
            .where(Campaign.state.in_(_LIVE_CAMPAIGNS), CampaignWave.opened_at.is_not(None))
        )
        return frozenset((c, n) for c, n in rows)

    def _all_work(self, conn: Connection) -> list[int]:
        """Every vehicle with a deployment unfinished in an open wave (`HAS_WORK_SQL`), in
        campaigns of any state: one cancelled after consent still has some in flight."""
        return list(
            conn.execute(
                select(Deployment.vehicle_id)
                .distinct()
                .join(
                    CampaignWave,
                    and_(
                        CampaignWave.campaign_id == Deployment.campaign_id,
                        CampaignWave.number == Deployment.wave,
                    ),
                )
                .where(Deployment.state.in_(_UNFINISHED), CampaignWave.opened_at.is_not(None))
            ).scalars()
        )

    def _gained(
        self, conn: Connection, waves: frozenset[tuple[int, int]], since: datetime
    ) -> list[int]:
        gained: list[int] = []
        for campaign_id, number in waves - self._waves:
            gained.extend(
                conn.execute(
                    select(Deployment.vehicle_id).where(
                        Deployment.campaign_id == campaign_id,
                        Deployment.wave == number,
                        Deployment.state.in_(_UNFINISHED),
                    )
                ).scalars()
            )
        campaigns = sorted({c for c, _ in waves})
        if campaigns:
            # One range of (campaign_id, state, state_entered_at) per campaign.
            gained.extend(
                conn.execute(
                    select(Deployment.vehicle_id)
                    .join(
                        CampaignWave,
                        and_(
                            CampaignWave.campaign_id == Deployment.campaign_id,
                            CampaignWave.number == Deployment.wave,
                        ),
                    )
                    .where(
                        Deployment.campaign_id.in_(campaigns),
                        Deployment.state == _ENTRY,
                        Deployment.state_entered_at >= since,
                        CampaignWave.opened_at.is_not(None),
                    )
                ).scalars()
            )
        return [v for v in gained if 0 <= v <= MAX_VEHICLE_ID]

    def _changed_credentials(
        self, conn: Connection, since: datetime
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]] | None:
        """Credentials issued or revoked since `since`; None when there are more than
        DELTA_CAP."""
        changed: dict[tuple[int, str], bool] = {}  # a row can be in both
        for condition in (
            VehicleCredential.issued_at >= since,
            VehicleCredential.revoked_at >= since,
        ):
            rows = conn.execute(
                select(
                    VehicleCredential.vehicle_id,
                    VehicleCredential.token_hash,
                    VehicleCredential.revoked_at.is_not(None),
                )
                .where(condition)
                .limit(DELTA_CAP + 1)
            ).all()
            if len(rows) > DELTA_CAP:
                return None
            for vehicle_id, token_hash, revoked in rows:
                changed[vehicle_id, token_hash] = changed.get((vehicle_id, token_hash)) or revoked
        live: list[tuple[int, bytes]] = []
        revoked_: list[tuple[int, bytes]] = []
        for (vehicle_id, token_hash), revoked in changed.items():
            digest = _digest(token_hash)
            if digest is not None and 0 <= vehicle_id <= MAX_VEHICLE_ID:
                (revoked_ if revoked else live).append((vehicle_id, digest))
        return live, revoked_

    def _all_credentials(self) -> tuple[bytearray, int]:
        with self.engine.connect() as conn:
            highest = conn.execute(select(func.max(VehicleCredential.vehicle_id))).scalar()
            size = min(int(highest or 0), MAX_VEHICLE_ID) + 1 if highest is not None else 0
            digests = bytearray(size * DIGEST)
            loaded = 0
            for vehicle_id, digest in self._live_credentials(conn):
                if 0 <= vehicle_id < size:
                    at = vehicle_id * DIGEST
                    digests[at : at + DIGEST] = digest
                    loaded += 1
        return digests, loaded

    def _live_credentials(self, conn: Connection) -> Iterable[tuple[int, bytes]]:
        if conn.dialect.name == "postgresql":
            # A server-side cursor without SQLAlchemy's rows: in batches, never all at once
            # (1M rows in about a second here).
            raw: Any = conn.connection.dbapi_connection  # psycopg's own connection
            with raw.cursor(name="otacm_vehicle_index") as cursor:
                cursor.itersize = BATCH
                cursor.execute(
                    "SELECT vehicle_id, token_hash FROM vehicle_credentials"
                    " WHERE revoked_at IS NULL"
                )
                while rows := cursor.fetchmany(BATCH):
                    for vehicle_id, token_hash in rows:
                        digest = _digest(token_hash)
                        if digest is not None:
                            yield vehicle_id, digest
            return
        result = conn.execution_options(yield_per=BATCH).execute(
            select(VehicleCredential.vehicle_id, VehicleCredential.token_hash).where(
                VehicleCredential.revoked_at.is_(None)
            )
        )
        for vehicle_id, token_hash in result:
            digest = _digest(token_hash)
            if digest is not None:
                yield vehicle_id, digest
