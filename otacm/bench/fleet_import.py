"""`otacm bench import`: fleet import throughput against a raw COPY, re-import, memory, search.

The baseline is PostgreSQL's own `COPY` of the same ECU rows, pre-made as CSV, into an
unindexed table: the fastest any importer could possibly write them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from otacm.app import create_app
from otacm.bench.common import (
    Report,
    Result,
    console,
    fleet_file,
    median_seconds,
    scratch_postgres_database,
    timed,
)
from otacm.config import Settings
from otacm.db import make_engine, make_session_factory, unit_of_work, upgrade
from otacm.fleet.models import Ecu, Vehicle
from otacm.fleet.parser import CSV_HEADER
from otacm.security import service
from otacm.security.audit import SYSTEM
from otacm.security.models import User

BENCH_OPERATOR = "bench-viewer"


def raw_copy(engine: Engine, csv_path: Path) -> tuple[float, int]:
    """COPY the CSV file as-is into an unindexed text table; (seconds, rows)."""
    columns = ", ".join(f"{c} text" for c in CSV_HEADER)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE bench_raw_ecu_rows ({columns})")
    with engine.connect() as conn, timed() as elapsed:
        raw = conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY bench_raw_ecu_rows FROM STDIN WITH (FORMAT csv, HEADER true)"
            ) as copy,
            csv_path.open("rb") as source,
        ):
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        raw.commit()
    with engine.begin() as conn:
        rows = int(conn.exec_driver_sql("SELECT count(*) FROM bench_raw_ecu_rows").scalar_one())
        conn.exec_driver_sql("DROP TABLE bench_raw_ecu_rows")
    return elapsed(), rows


def import_into(
    engine: Engine,
    path: Path,
    peaks: dict[str, float],
    label: str,
    paths: list[str] | None = None,
) -> tuple[float, int]:
    """Import in a child process: its peak memory is the importer's alone. `paths` gets the
    way the import went (a first load into an empty registry, or batch by batch)."""
    url = engine.url.render_as_string(hide_password=False)
    child = subprocess.run(
        [sys.executable, "-m", "otacm.bench._import_child", url, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if result["rejected"]:
        raise RuntimeError(f"the benchmark file had {result['rejected']} rejected records")
    # The importing process and its worker processes together.
    peaks[label] = max(result["peak_rss_mb"], result["peak_total_mb"])
    if paths is not None:
        way = "first load, one transaction" if result["first_load"] else "batch by batch"
        if result["workers"]:
            way += f", {result['workers']} worker processes"
        paths.append(way)
    return float(result["seconds"]), int(result["rows"])


def search_latency(engine: Engine, settings: Settings, report: Report, label: str) -> None:
    """Median time for one page of GET /api/v1/vehicles with typical operator filters."""
    with engine.connect() as conn:
        installed = conn.execute(
            select(Ecu.software_version).where(Ecu.ecu_type == "GATEWAY").limit(1)
        ).scalar()
        model = conn.execute(select(Vehicle.model).limit(1)).scalar()
    queries: dict[str, dict[str, object]] = {
        "no filter": {},
        "model + year range": {"model": model, "model_year_min": 2023, "model_year_max": 2024},
        "fuel + region + ECU hardware": {
            "fuel_type": "electric",
            "region": "EU",
            "ecu_type": "BMS",
            "hardware_version": "B1",
        },
        "VIN prefix": {"vin_prefix": "1"},
        "ECU software version": {"ecu_type": "GATEWAY", "software_version": installed},
        "ECU software version, no vehicle has it": {
            "ecu_type": "GATEWAY",
            "software_version": "0.0.1",
        },
    }
    with unit_of_work(make_session_factory(engine)) as session:
        if not session.scalar(select(User.id).where(User.name == BENCH_OPERATOR)):
            service.create_user(
                session, SYSTEM, BENCH_OPERATOR, "viewer", secrets.token_urlsafe(16)
            )
        token = service.create_token(session, SYSTEM, BENCH_OPERATOR, "bench", None).secret
    with TestClient(create_app(settings, engine)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        for name, params in queries.items():

            def page(p: dict[str, object] = params) -> None:
                response = client.get("/api/v1/vehicles", params={"limit": 100, **p})
                assert response.status_code == 200, response.text

            page()
            seconds = median_seconds(page, 15)
            report.add(
                Result(
                    f"{label}: GET /api/v1/vehicles ({name})",
                    seconds,
                    note="median of 15, target < 0.1 s",
                )
            )


def run(
    *,
    vehicles: int,
    seed: int,
    work_dir: Path,
    postgres_url: str | None,
    sqlite: bool,
    command: str,
) -> Report:
    report = Report(f"Fleet import, {vehicles:,} vehicles", command)
    jsonl = fleet_file(work_dir, vehicles, seed, "jsonl")
    settings = Settings(data_dir=work_dir)
    baseline_rate: float | None = None
    peaks: dict[str, float] = {}
    if postgres_url:
        csv_path = fleet_file(work_dir, vehicles, seed, "csv")
        with scratch_postgres_database(postgres_url, "otacm_bench") as engine:
            seconds, rows = raw_copy(engine, csv_path)
            baseline_rate = rows / seconds
            report.add(Result("PostgreSQL raw COPY of the ECU rows (baseline)", seconds, rows))
            upgrade(engine)
            paths: list[str] = []
            seconds, rows = import_into(engine, jsonl, peaks, "PostgreSQL import", paths)
            report.add(
                Result(
                    "PostgreSQL: import into an empty registry",
                    seconds,
                    rows,
                    "raw COPY",
                    rows / seconds / baseline_rate,
                    "target < 120 s",
                )
            )
            first = seconds
            seconds, rows = import_into(engine, jsonl, peaks, "re-import", paths)
            report.facts["PostgreSQL import, then re-import"] = " / ".join(paths)
            report.add(
                Result(
                    "PostgreSQL: re-import, all unchanged",
                    seconds,
                    rows,
                    "first import",
                    first / seconds,
                    "target: no slower than first",
                )
            )
            with engine.connect() as conn:
                report.facts["PostgreSQL registry"] = (
                    f"{conn.execute(select(func.count()).select_from(Vehicle)).scalar():,} "
                    f"vehicles, {conn.execute(select(func.count()).select_from(Ecu)).scalar():,}"
                    " ECUs"
                )
            search_latency(engine, settings, report, "PostgreSQL")
    if sqlite:
        path = work_dir / "bench-sqlite.db"
        for old in work_dir.glob("bench-sqlite.db*"):
            old.unlink()
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        sqlite_paths: list[str] = []
        seconds, rows = import_into(engine, jsonl, peaks, "SQLite import", sqlite_paths)
        report.facts["SQLite import"] = sqlite_paths[0]
        report.add(
            Result(
                "SQLite: import into an empty registry",
                seconds,
                rows,
                "raw COPY" if baseline_rate else None,
                rows / seconds / baseline_rate if baseline_rate else None,
                "target < 180 s",
            )
        )
        search_latency(engine, settings, report, "SQLite")
        engine.dispose()
    report.facts["peak memory of an import (resident, with its worker processes)"] = (
        f"{max(peaks.values()):.0f} MB (target < 500): "
        + ", ".join(f"{label} {mb:.0f} MB" for label, mb in peaks.items())
        if peaks
        else "not measured"
    )
    console.print("done")
    return report


def run_search(*, database_url: str, command: str) -> Report:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        vehicles = conn.execute(select(func.count()).select_from(Vehicle)).scalar_one()
        ecus = conn.execute(select(func.count()).select_from(Ecu)).scalar_one()
    report = Report(f"Vehicle search, {vehicles:,} vehicles", command)
    report.facts["registry"] = f"{vehicles:,} vehicles, {ecus:,} ECUs ({engine.dialect.name})"
    label = "PostgreSQL" if engine.dialect.name == "postgresql" else "SQLite"
    search_latency(engine, Settings(database_url=database_url), report, label)
    engine.dispose()
    return report
