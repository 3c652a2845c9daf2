"""Who is calling: a vehicle, by its bearer credential or by its client certificate's subject.

`identify` is one query: the credential's vehicle and whether that vehicle has work (a
deployment unfinished in an open wave). The poll uses the second half to answer an idle vehicle
without a transaction that writes; other calls ignore it. Before that, the poll asks the
process's idle-poll index (`idle.py`), which answers most idle vehicles without any query.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, Engine, Exists, Select, exists, select
from sqlalchemy.orm import Session

from otacm.campaigns.models import CampaignWave, Deployment
from otacm.campaigns.states import UNFINISHED
from otacm.config import Settings
from otacm.errors import OtacmError
from otacm.fleet.models import Vehicle
from otacm.vehicle_api.credentials import hash_token
from otacm.vehicle_api.idle import IdleIndex
from otacm.vehicle_api.models import VehicleCredential, VehicleSecurityEvent

log = logging.getLogger("otacm.vehicle_api")

_CN = re.compile(r"(?:^|[,/]\s*)CN\s*=\s*([^,/]+)", re.IGNORECASE)


class VehicleUnauthorized(OtacmError):
    status_code = 401
    code = "vehicle_unauthorized"


@dataclass(frozen=True, slots=True)
class VehicleIdentity:
    vehicle_id: int
    vin: str
    has_work: bool


def _has_work() -> Exists:
    return exists().where(
        Deployment.vehicle_id == Vehicle.id,
        Deployment.state.in_([s.value for s in UNFINISHED]),
        CampaignWave.campaign_id == Deployment.campaign_id,
        CampaignWave.number == Deployment.wave,
        CampaignWave.opened_at.is_not(None),
    )


def _by_token_query(token_hash: str) -> Select[int, str, datetime | None, bool]:
    return (
        select(Vehicle.id, Vehicle.vin, VehicleCredential.revoked_at, _has_work().label("has_work"))
        .select_from(VehicleCredential)
        .join(Vehicle, Vehicle.id == VehicleCredential.vehicle_id)
        .where(VehicleCredential.token_hash == token_hash)
    )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def identify(
    connection: Connection | Session, request: Request, settings: Settings
) -> tuple[VehicleIdentity | None, int | None]:
    """The calling vehicle, or (None, vehicle id) when its credential was revoked, or
    (None, None) when nobody is recognised."""
    if settings.vehicle_cert_header:
        subject = request.headers.get(settings.vehicle_cert_header)
        if subject:
            match = _CN.search(subject)
            if match is None:
                return None, None
            row = connection.execute(
                select(Vehicle.id, Vehicle.vin, _has_work().label("has_work")).where(
                    Vehicle.vin == match.group(1).strip().upper()
                )
            ).first()
            if row is None:
                return None, None
            return VehicleIdentity(row[0], row[1], bool(row[2])), None
    token = bearer_token(request)
    if token is None:
        return None, None
    found = connection.execute(_by_token_query(hash_token(token))).first()
    if found is None:
        return None, None
    vehicle_id, vin, revoked_at, has_work = found
    if revoked_at is not None:
        return None, vehicle_id
    return VehicleIdentity(vehicle_id, vin, bool(has_work)), None


def refuse(
    session: Session | None, revoked_vehicle: int | None, now: datetime
) -> VehicleUnauthorized:
    """The error for a caller not recognised; a revoked credential in use is recorded against
    its vehicle (the caller commits `session`)."""
    if revoked_vehicle is not None:
        log.warning("vehicle %s used a revoked credential", revoked_vehicle)
        if session is not None:
            session.add(
                VehicleSecurityEvent(
                    vehicle_id=revoked_vehicle,
                    at=now,
                    kind="revoked_credential",
                    detail="a request came with a revoked credential",
                )
            )
    return VehicleUnauthorized(
        "a vehicle credential is needed: Authorization: Bearer <vehicle token>; it is missing, "
        "unknown or revoked"
    )


# The same question as `identify`, for the hot path on PostgreSQL: one prepared statement on a
# pooled asyncio connection, no thread hop, no ORM. An idle fleet polls all day; this is what
# each of those polls costs.
_WORK_STATES = ", ".join(f"'{s.value}'" for s in sorted(UNFINISHED))
HAS_WORK_SQL = (
    "EXISTS (SELECT 1 FROM deployments d JOIN campaign_waves w"
    " ON w.campaign_id = d.campaign_id AND w.number = d.wave"
    f" WHERE d.vehicle_id = v.id AND d.state IN ({_WORK_STATES}) AND w.opened_at IS NOT NULL)"
)
_BY_TOKEN_SQL = (
    f"SELECT v.id, v.vin, c.revoked_at IS NOT NULL, {HAS_WORK_SQL}"
    " FROM vehicle_credentials c JOIN vehicles v ON v.id = c.vehicle_id WHERE c.token_hash = %s"
)
_BY_VIN_SQL = f"SELECT v.id, v.vin, false, {HAS_WORK_SQL} FROM vehicles v WHERE v.vin = %s"


class FastIdentifier:
    """`identify` for the hot path. On PostgreSQL: one prepared statement on a pooled asyncio
    psycopg connection in autocommit, awaited on the event loop (no worker thread, no ORM, no
    pre-ping, no rollback round trip). On SQLite: the ORM's `identify` in a worker thread.

    The pool is opened by the app's lifespan on the loop that serves requests (one per uvicorn
    worker) and used only there; a request on any other loop (a test client that was never
    started) takes the SQLite way. The lifespan also starts the idle-poll index's refresh
    (`index`, both engines); its arrays are plain memory, read from any thread."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.index = IdleIndex(engine, settings)
        # One pool per loop that started the app: uvicorn has one; tests may start the same
        # app from several test clients, each on its own loop.
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._index_loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._index_loop is None and self.index.enabled:
            await self.index.start()
            self._index_loop = loop
        if self.engine.dialect.name != "postgresql" or loop in self._pools:
            return
        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=8,
            open=False,
            # Prepared at once: the statements are all this pool ever runs.
            kwargs={"prepare_threshold": 0, "autocommit": True},
        )
        await pool.open()
        self._pools[loop] = pool

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._index_loop is loop:
            await self.index.close()
            self._index_loop = None
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.close()

    async def identify(self, request: Request) -> tuple[VehicleIdentity | None, int | None]:
        pool = self._pools.get(asyncio.get_running_loop())
        if pool is None:
            return await run_in_threadpool(self._identify_sync, request)
        query, value = self._lookup(request)
        if query is None:
            return None, None
        async with pool.connection() as connection:
            cursor = await connection.execute(query, (value,))
            row = await cursor.fetchone()
        if row is None:
            return None, None
        vehicle_id, vin, revoked, has_work = row
        if revoked:
            return None, vehicle_id
        return VehicleIdentity(vehicle_id, vin, bool(has_work)), None

    def idle_from_memory(self, request: Request) -> bool:
        """Whether the index knows the caller as a vehicle with nothing to do (its answer is
        204); False: ask `identify`."""
        header = self.settings.vehicle_cert_header
        if header and request.headers.get(header):
            return False  # identified by its certificate's VIN, which only the database maps
        token = bearer_token(request)
        return token is not None and self.index.is_idle(token)

    def identify_sync(self, request: Request) -> tuple[VehicleIdentity | None, int | None]:
        """For handlers already in a worker thread."""
        return self._identify_sync(request)

    def _identify_sync(self, request: Request) -> tuple[VehicleIdentity | None, int | None]:
        with self.engine.connect() as connection:
            return identify(connection, request, self.settings)

    def _lookup(self, request: Request) -> tuple[LiteralString | None, str]:
        header = self.settings.vehicle_cert_header
        if header and (subject := request.headers.get(header)):
            match = _CN.search(subject)
            return (_BY_VIN_SQL, match.group(1).strip().upper()) if match else (None, "")
        token = bearer_token(request)
        return (_BY_TOKEN_SQL, hash_token(token)) if token else (None, "")
