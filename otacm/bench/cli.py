"""`otacm bench`: the home of every benchmark."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from otacm.bench.common import Report

app = typer.Typer(
    help="Benchmarks, each reported as throughput and as a ratio to a raw "
    "baseline measured in the same run.",
    no_args_is_help=True,
)

RegistryOption = Annotated[
    str,
    typer.Option(help="A registry already filled (e.g. by a fleet import of a generated export)."),
]
RecordOption = Annotated[
    Path | None, typer.Option("--record", help="Append the results as Markdown to this file.")
]


def _finish(report: Report, record: Path | None) -> None:
    report.show()
    if record:
        with record.open("a", encoding="utf-8") as out:
            out.write("\n" + report.markdown())


@app.command("import")
def bench_import(
    vehicles: Annotated[int, typer.Option(min=1)] = 100_000,
    seed: int = 1,
    work_dir: Annotated[Path, typer.Option(help="Generated files are kept here.")] = Path(
        "bench-data"
    ),
    postgres_url: Annotated[
        str | None,
        typer.Option(help="Administrative PostgreSQL URL; a scratch database is made and dropped."),
    ] = None,
    sqlite: Annotated[bool, typer.Option(help="Also benchmark SQLite.")] = True,
    record: RecordOption = None,
) -> None:
    """Fleet import: throughput vs raw COPY, re-import, peak memory, vehicle search latency."""
    from otacm.bench import fleet_import

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _finish(
        fleet_import.run(
            vehicles=vehicles,
            seed=seed,
            work_dir=work_dir,
            postgres_url=postgres_url,
            sqlite=sqlite,
            command=command,
        ),
        record,
    )


@app.command("search")
def bench_search(
    database_url: RegistryOption,
    record: RecordOption = None,
) -> None:
    """Vehicle search latency (GET /api/v1/vehicles) on an existing registry."""
    from otacm.bench import fleet_import

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _finish(fleet_import.run_search(database_url=database_url, command=command), record)


@app.command("artifacts")
def bench_artifacts(
    size_mb: Annotated[int, typer.Option(min=1, help="Size of the artifact in MiB.")] = 2048,
    work_dir: Annotated[Path, typer.Option(help="Scratch files are made here, then removed.")] = (
        Path("bench-data/artifacts")
    ),
    confidential: Annotated[
        bool, typer.Option(help="Also upload it as a confidential (encrypted) update.")
    ] = True,
    record: RecordOption = None,
) -> None:
    """A large artifact through `otacm serve`: upload, release, download, server memory; the
    baseline is nginx serving the same file (needs nginx installed)."""
    import shutil

    from otacm.bench import artifacts
    from otacm.bench.common import Report

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = Report(f"Artifacts: {size_mb} MiB through otacm serve vs nginx", command)
    try:
        artifacts.run(report, size_mb << 20, work_dir, confidential=confidential)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    _finish(report, record)


@app.command("targeting")
def bench_targeting(
    database_url: RegistryOption,
    record: RecordOption = None,
) -> None:
    """Targeting preview and per-vehicle view vs the plain selection query, on an existing
    registry (a benchmark update is released into it)."""
    from otacm.bench import targeting

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _finish(targeting.run(database_url=database_url, command=command), record)


@app.command("campaigns")
def bench_campaigns(database_url: RegistryOption, record: RecordOption = None) -> None:
    """Launching a campaign over the whole registry vs a raw INSERT … SELECT of as many rows
    (a benchmark update and campaign are left in the registry)."""
    from otacm.bench import campaigns

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _finish(campaigns.run(database_url=database_url, command=command), record)


@app.command("vehicle-api")
def bench_vehicle_api(
    database_url: Annotated[
        str, typer.Option(help="A PostgreSQL registry already filled (e.g. 1,000,000 vehicles).")
    ],
    workers: Annotated[int, typer.Option(min=1, help="uvicorn workers of each server.")] = 2,
    seconds: Annotated[float, typer.Option(min=1, help="Measured load per endpoint.")] = 15,
    sample: Annotated[
        int, typer.Option(min=1, help="Idle vehicles picked at random, polled round-robin.")
    ] = 200_000,
    record: RecordOption = None,
) -> None:
    """Idle vehicle polls vs a bare FastAPI endpoint, same workers, same load generator."""
    from otacm.bench import vehicle_api

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _finish(
        vehicle_api.run(
            database_url=database_url,
            command=command,
            workers=workers,
            seconds=seconds,
            sample=sample,
        ),
        record,
    )
