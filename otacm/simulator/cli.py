"""`otacm simulate`: a simulated fleet of reference clients against a running server.

Only typer is imported here: `otacm` loads this module for every command, and the simulator's
own imports (httpx, python-tuf, rich's live display) wait until a simulation runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def simulate(
    credentials: Annotated[
        Path,
        typer.Argument(
            help="Provisioning records, one JSON object per line "
            "(`otacm vehicles credentials --all --keys -o FILE`).",
            exists=True,
            dir_okay=False,
        ),
    ],
    server: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8080",
    vehicles: Annotated[
        int | None, typer.Option(min=1, help="Simulate the first N vehicles (default: all).")
    ] = None,
    failure_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of installs that fail and fall back.")
    ] = 0.05,
    postpone_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of owners who answer 'later'.")
    ] = 0.1,
    decline_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of owners who answer 'no'.")
    ] = 0.02,
    offline_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of vehicles that go offline now and then.")
    ] = 0.1,
    interruption_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of downloads cut once in the middle.")
    ] = 0.1,
    install_seconds: Annotated[
        tuple[float, float],
        typer.Option(help="Range of simulated seconds to write one image."),
    ] = (60.0, 600.0),
    time_scale: Annotated[
        float, typer.Option(min=0.0001, help="Real seconds per simulated second.")
    ] = 0.01,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many real seconds.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The same seed, the same fleet.")] = None,
    work_dir: Annotated[
        Path, typer.Option(help="The vehicles' storage (kept: a second run is a restart).")
    ] = Path("otacm-data/simulator"),
    cpu_slots: Annotated[
        int, typer.Option(min=1, help="TUF refreshes, hashing and decryption at once.")
    ] = 2,
    processes: Annotated[
        int,
        typer.Option(
            min=1, help="Split the fleet over this many processes (one core each, at most)."
        ),
    ] = 1,
    lost_answer_rate: Annotated[
        float,
        typer.Option(
            min=0, max=1, help="Share of answers lost after the server acted (sent again)."
        ),
    ] = 0.0,
    language: Annotated[str | None, typer.Option(help="The owners' Accept-Language.")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the ground truth per vehicle here, as JSON.")
    ] = None,
) -> None:
    """Run a simulated fleet against a server, until Ctrl-C or --duration.

    Each vehicle polls, verifies (Uptane), downloads, installs and reports as
    docs/vehicle-api.md says; the ground truth per vehicle is shown at the end.
    """
    import asyncio
    import contextlib
    import json
    import signal

    from rich.console import Console
    from rich.table import Table

    from otacm.simulator.fleet import Fleet, FleetOptions, FleetResult, run_sharded
    from otacm.simulator.records import InvalidRecord, read_records

    console = Console(stderr=True)
    try:
        records = list(read_records(credentials))
        options = FleetOptions(
            vehicles=vehicles,
            failure_rate=failure_rate,
            postpone_rate=postpone_rate,
            decline_rate=decline_rate,
            offline_rate=offline_rate,
            interruption_rate=interruption_rate,
            lost_answer_rate=lost_answer_rate,
            install_s=install_seconds,
            time_scale=time_scale,
            duration_s=duration,
            seed=seed,
            work_dir=work_dir,
            cpu_slots=cpu_slots,
            language=language,
        )
    except (InvalidRecord, ValueError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    if not records:
        console.print(f"[red]{credentials} holds no provisioning records")
        raise typer.Exit(2)

    async def run() -> FleetResult:
        fleet = Fleet(records, server, options, console=console)
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, fleet.stop, "Ctrl-C")
        return await fleet.run()

    if processes > 1:
        # The records cross to the other processes as the JSON they were read from.
        lines = credentials.read_text(encoding="utf-8").splitlines()
        raw = [json.loads(line) for line in lines if line.strip()]
        console.print(f"simulating in {processes} processes; Ctrl-C stops them all")
        result = run_sharded(raw, server, options, processes=processes)
    else:
        result = asyncio.run(run())
    console.print(f"stopped: {result.stopped_because} after {result.elapsed_s:.1f} s")
    table = Table("VIN", "phase", "installed", "installs", "rollbacks", "failures", "retries")
    for vin, vehicle in list(result.vehicles.items())[:20]:
        installed = ", ".join(f"{s} {v}" for s, v in vehicle.installed.items())
        t = vehicle.tally
        table.add_row(
            vin, vehicle.phase, installed, str(t.installs), str(t.rollbacks), str(t.failures),
            str(t.retries),
        )  # fmt: skip
    if len(result.vehicles) > 20:
        table.caption = f"the first 20 of {len(result.vehicles)} vehicles"
    console.print(table)
    for vin, why in list(result.crashed.items())[:10]:
        console.print(f"[red]{vin}: {why}")
    if report is not None:
        report.write_text(json.dumps(result.as_json(), indent=1), encoding="utf-8")
        console.print(f"ground truth per vehicle written to {report}")
