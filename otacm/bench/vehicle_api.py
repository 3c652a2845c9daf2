"""`otacm bench vehicle-api`: idle polls of the vehicle API against a bare FastAPI endpoint.

Both run under uvicorn with the same number of workers, and both are measured in the same run
with the same load generator (`load.py`) on the same machine. The idle poll is the real one:
`GET /vehicle/v1/updates` with a vehicle credential, for vehicles with nothing pending (answer
204), round-robin over a large random sample of the registry's idle vehicles (200,000 by
default, in random order), so that the in-memory index (`otacm/vehicle_api/idle.py`) is read
all over a fleet-sized key space rather than a few hot entries. It is measured twice: as
`otacm serve` runs it (index on, after every worker has loaded it) and with the index off
(`OTACM_VEHICLE_INDEX_REFRESH=0`: every poll asks the database). Credentials for every vehicle
are made for the run (hashed in the database) and removed at its end.

The report gives each server worker's memory (RSS) and index load time, the database's
credential lookups during each measure (PostgreSQL's own count, so "from memory" is checked
rather than assumed), and how many such servers a fleet of 10 million vehicles polling every
15 minutes needs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import math
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Response
from sqlalchemy import Engine, text

from otacm.bench.common import Report, Result, console
from otacm.bench.load import LoadResult, request_bytes, run_load
from otacm.db import make_engine, upgrade

FLEET_TARGET = 10_000_000
POLL_PERIOD_S = 15 * 60
BENCH_ISSUER = "otacm bench vehicle-api"


def bare_app() -> FastAPI:
    """The baseline: FastAPI answering 204 and doing nothing else."""
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> Response:
        return Response(status_code=204)

    return app


def poll_app() -> FastAPI:
    """otacm's app from the environment (`OTACM_*`), as `otacm serve` makes it."""
    from otacm.app import create_app

    return create_app()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class _Running:
    port: int
    pid: int  # uvicorn's supervisor; the workers are its children


@contextmanager
def _server(factory: str, workers: int, env: dict[str, str]) -> Iterator[_Running]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--log-level", "warning",
            "--no-access-log",
        ],
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{factory} did not start") from None
                time.sleep(0.2)
        time.sleep(1.0)  # every worker up, not just the first
        yield _Running(port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _workers_rss(supervisor: int) -> list[int]:
    """Resident memory of each uvicorn worker (the supervisor's children but multiprocessing's
    resource tracker), in bytes."""
    sizes = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"resource_tracker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    continue
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if found:
                sizes.append(int(found.group(1)) * 1024)
    return sorted(sizes)


_GAUGE = re.compile(r'^(otacm_vehicle_index_\w+)\{pid="(\d+)"\} (\S+)$', re.MULTILINE)


@dataclass
class _IndexState:
    # pid → gauge name → value, for every worker a scrape reached
    workers: dict[int, dict[str, float]] = field(default_factory=dict)


def _scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Connection": "close"})
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _wait_for_index(port: int, workers: int, timeout: float = 300.0) -> _IndexState:
    """Scrape /metrics over many simultaneous connections (each lands on some worker) until
    every worker reports its index loaded. Without this, the first seconds of the measure
    would be answered by the database while the index loads."""
    state = _IndexState()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=4 * workers) as pool:
        while True:
            for text_ in pool.map(_scrape, [port] * 4 * workers):
                for name, pid, value in _GAUGE.findall(text_):
                    state.workers.setdefault(int(pid), {})[name] = float(value)
            loaded = [
                pid
                for pid, gauges in state.workers.items()
                if "otacm_vehicle_index_load_seconds" in gauges
            ]
            if len(loaded) >= workers:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vehicle index was not loaded in {timeout:.0f} s")
            time.sleep(0.5)


def _secret(salt: str, vehicle_id: int) -> str:
    """The bench credential's secret: 43 characters of base64url, as issued ones have, derived
    from the run's random salt so that the database can make 1M of them in one statement."""
    digest = hashlib.sha256(f"{salt}{vehicle_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _issue_credentials(engine: Engine, salt: str) -> int:
    """A credential for every vehicle, `otv_<id>_<secret>` like issued ones, hashed by the
    database."""
    secret = (
        "rtrim(translate(encode(sha256(convert_to(:salt || id, 'UTF8')), 'base64'),"
        " '+/', '-_'), '=')"
    )
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM vehicle_credentials WHERE issued_by = :by"), {"by": BENCH_ISSUER}
        )
        made = conn.execute(
            text(
                "INSERT INTO vehicle_credentials (vehicle_id, token_hash, issued_at, issued_by) "
                "SELECT id, encode(sha256(convert_to("
                f"'otv_' || id || '_' || {secret}, 'UTF8')), 'hex'), now(), :by FROM vehicles"
            ),
            {"salt": salt, "by": BENCH_ISSUER},
        ).rowcount
        conn.execute(text("ANALYZE vehicle_credentials"))
    return int(made or 0)


def _idle_vehicles(engine: Engine, count: int) -> tuple[list[int], int]:
    """`count` vehicles picked at random from all those with nothing to do (no unfinished
    deployment in an open wave, the poll's own test), in random order; and how many there are."""
    from otacm.vehicle_api.auth import HAS_WORK_SQL

    with engine.connect() as conn:
        every = list(
            conn.execute(text(f"SELECT v.id FROM vehicles v WHERE NOT {HAS_WORK_SQL}")).scalars()
        )
    return random.sample(every, min(count, len(every))), len(every)


def _credential_lookups(engine: Engine) -> int:
    """Index scans of vehicle_credentials so far (PostgreSQL's statistics): a poll that asks
    the database makes one; the index's refreshes a few a second."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables"
                " WHERE relname = 'vehicle_credentials'"
            )
        ).scalar()
    return int(found or 0)


def _measure(label: str, port: int, requests: list[bytes], seconds: float) -> LoadResult:
    console.print(f"[bold]{label}[/]: {seconds:.0f} s of load on port {port}")
    result = run_load("127.0.0.1", port, requests, connections=32, warmup=2.0, seconds=seconds)
    console.print(
        f"  {result.rate:,.0f} requests/s, p50 {result.median * 1000:.1f} ms, "
        f"p99 {result.percentile(0.99) * 1000:.1f} ms, statuses {dict(result.statuses)}, "
        f"connection errors {result.errors}"
    )
    return result


def _mb(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


@dataclass
class _PollRun:
    load: LoadResult
    rss: list[int]
    lookups: int
    index: _IndexState | None = None


def run(*, database_url: str, command: str, workers: int, seconds: float, sample: int) -> Report:
    engine = make_engine(database_url)
    if engine.dialect.name != "postgresql":
        raise SystemExit("the vehicle API benchmark needs PostgreSQL (--database-url)")
    upgrade(engine)
    report = Report(f"Vehicle API: idle polls, {workers} uvicorn workers", command)
    salt = secrets.token_urlsafe(16)
    with engine.connect() as conn:
        vehicles = int(conn.execute(text("SELECT count(*) FROM vehicles")).scalar_one())
    env = {
        "OTACM_DATABASE_URL": database_url,
        "OTACM_ENGINE_INTERVAL": "PT0S",
        "OTACM_MAINTENANCE_INTERVAL": "PT0S",
        "OTACM_NOTIFICATION_INTERVAL": "PT0S",
        "OTACM_LOG_LEVEL": "warning",
    }
    runs: dict[str, _PollRun] = {}
    try:
        started = time.perf_counter()
        issued = _issue_credentials(engine, salt)
        console.print(f"{issued:,} bench credentials in {time.perf_counter() - started:.1f} s")
        idle, idle_total = _idle_vehicles(engine, sample)
        if not idle:
            raise SystemExit("no idle vehicle found: every vehicle has a deployment in flight")
        polls = [
            request_bytes(
                "/vehicle/v1/updates",
                "127.0.0.1",
                {"Authorization": f"Bearer otv_{vehicle_id}_{_secret(salt, vehicle_id)}"},
            )
            for vehicle_id in idle
        ]
        with _server("otacm.bench.vehicle_api:bare_app", workers, {}) as server:
            bare = _measure(
                "bare FastAPI endpoint", server.port, [request_bytes("/bare", "127.0.0.1")], seconds
            )
            bare_rss = _workers_rss(server.pid)
        for label, refresh in (("index", None), ("database", "PT0S")):
            extra = {"OTACM_VEHICLE_INDEX_REFRESH": refresh} if refresh else {}
            with _server("otacm.bench.vehicle_api:poll_app", workers, {**env, **extra}) as server:
                index = _wait_for_index(server.port, workers) if refresh is None else None
                before = _credential_lookups(engine)
                load = _measure(f"idle poll ({label})", server.port, polls, seconds)
                rss = _workers_rss(server.pid)
            # Read after the server stopped: its connections' statistics are flushed by then.
            runs[label] = _PollRun(load, rss, _credential_lookups(engine) - before, index)
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM vehicle_credentials WHERE issued_by = :by"), {"by": BENCH_ISSUER}
            )
        engine.dispose()
    report.add(
        Result(
            "bare FastAPI endpoint (204)", seconds, rows=bare.requests, unit="requests",
            note=f"p50 {bare.median * 1000:.1f} ms, p99 {bare.percentile(0.99) * 1000:.1f} ms",
        )
    )  # fmt: skip
    names = {
        "index": "idle poll GET /vehicle/v1/updates (204), in-memory index",
        "database": "the same, index off (every poll asks the database)",
    }
    for label, measured in runs.items():
        poll = measured.load
        wrong = sum(n for status, n in poll.statuses.items() if status != 204)
        share = poll.rate / bare.rate if bare.rate else 0.0
        report.add(
            Result(
                names[label], seconds, rows=poll.requests, unit="requests",
                baseline="bare FastAPI time per request",
                ratio=bare.rate / poll.rate if poll.rate else None,
                note=(
                    f"{share:.0%} of bare; p50 {poll.median * 1000:.1f} ms, "
                    f"p99 {poll.percentile(0.99) * 1000:.1f} ms; {wrong} answers not 204; "
                    f"{measured.lookups:,} credential lookups in the database"
                ),
            )
        )  # fmt: skip
    rate = runs["index"].load.rate
    needed = FLEET_TARGET / POLL_PERIOD_S
    servers = math.ceil(needed / rate) if rate else 0
    loaded = runs["index"].index
    load_times = (
        ", ".join(
            f"{g['otacm_vehicle_index_load_seconds']:.1f} s "
            f"({g.get('otacm_vehicle_index_credentials', 0):,.0f} credentials, "
            f"{_mb(g.get('otacm_vehicle_index_bytes', 0))} of arrays)"
            for g in loaded.workers.values()
            if "otacm_vehicle_index_load_seconds" in g
        )
        if loaded
        else "?"
    )
    report.facts.update(
        {
            "registry": (
                f"{vehicles:,} vehicles, a credential each; {idle_total:,} idle, of which "
                f"{len(idle):,} picked at random and polled round-robin in random order"
            ),
            "load": (
                "32 keep-alive connections from one process on the same machine, "
                f"{seconds:.0f} s after 2 s warm-up"
            ),
            "index load per worker": load_times,
            "memory per worker (RSS after the measure)": (
                f"index on {', '.join(_mb(r) for r in runs['index'].rss)}; "
                f"index off {', '.join(_mb(r) for r in runs['database'].rss)}; "
                f"bare FastAPI {', '.join(_mb(r) for r in bare_rss)}"
            ),
            "sizing": (
                f"{FLEET_TARGET:,} vehicles polling every {POLL_PERIOD_S // 60} min make "
                f"{needed:,.0f} polls/s: {servers} servers like this one ({workers} workers each) "
                "at the measured idle-poll rate (index on), before headroom; each worker's index "
                f"takes 33 bytes per vehicle id ({_mb(33 * FLEET_TARGET)} for {FLEET_TARGET:,})"
            ),
        }
    )
    return report
