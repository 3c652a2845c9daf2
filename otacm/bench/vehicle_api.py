"""`otacm bench vehicle-api`: idle polls of the vehicle API against a bare FastAPI endpoint.

Both run under uvicorn with the same number of workers, and both are measured in the same run
with the same load generator (`load.py`) on the same machine. The idle poll is the real one:
`GET /vehicle/v1/updates` with a vehicle credential, over the whole registry's credentials, for
vehicles with nothing pending (answer 204). Credentials for every vehicle are made for the run
(random, hashed in the database) and removed at its end.

From the measured rate it works out how many such servers a fleet of 10 million vehicles
polling every 15 minutes needs.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def _server(factory: str, workers: int, env: dict[str, str]) -> Iterator[int]:
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
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _issue_credentials(engine: Engine, salt: str) -> int:
    """A credential for every vehicle, `otv_bench-<id>-<salt>`, hashed by the database."""
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM vehicle_credentials WHERE issued_by = :by"), {"by": BENCH_ISSUER}
        )
        made = conn.execute(
            text(
                "INSERT INTO vehicle_credentials (vehicle_id, token_hash, issued_at, issued_by) "
                "SELECT id, encode(sha256(convert_to('otv_bench-' || id || '-' || :salt, 'UTF8')),"
                " 'hex'), now(), :by FROM vehicles"
            ),
            {"salt": salt, "by": BENCH_ISSUER},
        ).rowcount
        conn.execute(text("ANALYZE vehicle_credentials"))
    return int(made or 0)


def _idle_vehicles(engine: Engine, count: int) -> list[int]:
    """Vehicles with nothing to do (no unfinished deployment in an open wave, the poll's own
    test), spread over the registry."""
    from otacm.vehicle_api.auth import HAS_WORK_SQL

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.id FROM vehicles v TABLESAMPLE SYSTEM (5) "
                f"WHERE NOT {HAS_WORK_SQL} LIMIT :n"
            ),
            {"n": count},
        ).scalars()
        return list(rows)


def _measure(label: str, port: int, requests: list[bytes], seconds: float) -> LoadResult:
    console.print(f"[bold]{label}[/]: {seconds:.0f} s of load on port {port}")
    result = run_load("127.0.0.1", port, requests, connections=32, warmup=2.0, seconds=seconds)
    console.print(
        f"  {result.rate:,.0f} requests/s, p50 {result.median * 1000:.1f} ms, "
        f"p99 {result.percentile(0.99) * 1000:.1f} ms, statuses {dict(result.statuses)}, "
        f"connection errors {result.errors}"
    )
    return result


def run(*, database_url: str, command: str, workers: int, seconds: float, sample: int) -> Report:
    engine = make_engine(database_url)
    if engine.dialect.name != "postgresql":
        raise SystemExit("the vehicle API benchmark needs PostgreSQL (--database-url)")
    upgrade(engine)
    report = Report(f"Vehicle API: idle polls, {workers} uvicorn workers", command)
    salt = secrets.token_urlsafe(16)
    with engine.connect() as conn:
        vehicles = int(conn.execute(text("SELECT count(*) FROM vehicles")).scalar_one())
    try:
        started = time.perf_counter()
        issued = _issue_credentials(engine, salt)
        console.print(f"{issued:,} bench credentials in {time.perf_counter() - started:.1f} s")
        idle = _idle_vehicles(engine, sample)
        if not idle:
            raise SystemExit("no idle vehicle found: every vehicle has a deployment in flight")
        polls = [
            request_bytes(
                "/vehicle/v1/updates",
                "127.0.0.1",
                {"Authorization": f"Bearer otv_bench-{vehicle_id}-{salt}"},
            )
            for vehicle_id in idle
        ]
        with _server("otacm.bench.vehicle_api:bare_app", workers, {}) as port:
            bare = _measure(
                "bare FastAPI endpoint", port, [request_bytes("/bare", "127.0.0.1")], seconds
            )
        env = {
            "OTACM_DATABASE_URL": database_url,
            "OTACM_ENGINE_INTERVAL": "PT0S",
            "OTACM_MAINTENANCE_INTERVAL": "PT0S",
            "OTACM_NOTIFICATION_INTERVAL": "PT0S",
            "OTACM_LOG_LEVEL": "warning",
        }
        with _server("otacm.bench.vehicle_api:poll_app", workers, env) as port:
            poll = _measure("idle poll", port, polls, seconds)
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM vehicle_credentials WHERE issued_by = :by"), {"by": BENCH_ISSUER}
            )
        engine.dispose()
    wrong = sum(n for status, n in poll.statuses.items() if status != 204)
    report.add(
        Result(
            "bare FastAPI endpoint (204)", seconds, rows=bare.requests, unit="requests",
            note=f"p50 {bare.median * 1000:.1f} ms, p99 {bare.percentile(0.99) * 1000:.1f} ms",
        )
    )  # fmt: skip
    share = poll.rate / bare.rate if bare.rate else 0.0
    report.add(
        Result(
            "idle poll GET /vehicle/v1/updates (204)", seconds, rows=poll.requests,
            unit="requests", baseline="bare FastAPI time per request",
            ratio=bare.rate / poll.rate if poll.rate else None,
            note=(
                f"{share:.0%} of bare; p50 {poll.median * 1000:.1f} ms, "
                f"p99 {poll.percentile(0.99) * 1000:.1f} ms; {wrong} answers not 204"
            ),
        )
    )  # fmt: skip
    needed = FLEET_TARGET / POLL_PERIOD_S
    servers = math.ceil(needed / poll.rate) if poll.rate else 0
    report.facts.update(
        {
            "registry": (
                f"{vehicles:,} vehicles, a credential each; {len(idle):,} idle vehicles "
                "polled round-robin"
            ),
            "load": (
                "32 keep-alive connections from one process on the same machine, "
                f"{seconds:.0f} s after 2 s warm-up"
            ),
            "sizing": (
                f"{FLEET_TARGET:,} vehicles polling every {POLL_PERIOD_S // 60} min make "
                f"{needed:,.0f} polls/s: {servers} servers like this one ({workers} workers each) "
                "at the measured idle-poll rate, before headroom"
            ),
        }
    )
    return report
