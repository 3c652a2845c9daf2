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


@app.command("fleet")
def bench_fleet(
    vehicles: Annotated[int, typer.Option(min=10, help="Vehicles imported and simulated.")] = (
        10_000
    ),
    processes: Annotated[int, typer.Option(min=1, help="Simulator processes.")] = 2,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="uvicorn workers of the server [default: 2; 1 on SQLite]"),
    ] = None,
    postgres_url: Annotated[
        str | None,
        typer.Option(help="Administrative PostgreSQL URL; a scratch database is made and dropped."),
    ] = None,
    seed: int = 7,
    lost_answer_rate: Annotated[
        float,
        typer.Option(min=0, max=1, help="Vehicle API answers lost after the server acted."),
    ] = 0.02,
    poll_idle: Annotated[
        float, typer.Option(min=0.1, help="Real seconds between a vehicle's idle polls.")
    ] = 120.0,
    start_rate: Annotated[
        float, typer.Option(min=1, help="Vehicles started per second, over all processes.")
    ] = 50.0,
    timeout: Annotated[
        float, typer.Option(min=10, help="Real seconds the campaign may take.")
    ] = 1800.0,
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Each run makes a directory here (server data, vehicles), then removes it."
        ),
    ] = Path("bench-data/fleet"),
    record: RecordOption = None,
) -> None:
    """A simulated fleet completes one campaign against one server; the server's records are
    then checked against the vehicles' truth (no event lost or counted twice, tallies, final
    states, ECU versions). Exits 1 when a check fails."""
    from otacm.bench import fleet_sim

    command = "otacm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    options = fleet_sim.BenchOptions(
        vehicles=vehicles,
        seed=seed,
        processes=processes,
        # SQLite serialises writers: one process writes, a second would only wait on it.
        workers=workers or (2 if postgres_url else 1),
        postgres_url=postgres_url,
        work_dir=work_dir,
        timeout_s=timeout,
        poll_idle_s=poll_idle,
        start_rate=start_rate,
        lost_answer_rate=lost_answer_rate,
    )
    bench = fleet_sim.run(options, command)
    _finish(bench.report, record)
    if not bench.passed:
        failed = ", ".join(c.name for c in bench.checks if not c.ok) or "no check ran"
        typer.echo(f"FAILED: {failed}", err=True)
        raise typer.Exit(1)
