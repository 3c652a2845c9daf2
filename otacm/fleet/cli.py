"""`otacm fleet` and `otacm vehicles`: generate, import and export manufacturing data."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from otacm.cli import DatabaseOption, cli_actor, cli_session, settings_with
from otacm.db import engine_from_settings, upgrade
from otacm.fleet import service
from otacm.fleet.exporter import export_fleet
from otacm.fleet.generator import MAX_VEHICLES, write_export
from otacm.fleet.importer import ImportReport, run_import
from otacm.fleet.parser import ImportFileError

fleet_app = typer.Typer(
    help="The fleet registry: manufacturing exports in and out.", no_args_is_help=True
)
vehicles_app = typer.Typer(help="Single vehicles.", no_args_is_help=True)
console = Console(stderr=True)


@fleet_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="File to write; .gz compresses it.")],
    vehicles: Annotated[
        int, typer.Option(min=1, max=MAX_VEHICLES, help="How many vehicles.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same file.")] = 1,
    format: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
) -> None:
    """Write a realistic synthetic manufacturing export."""
    if format not in ("jsonl", "csv"):
        raise typer.BadParameter("use jsonl or csv", param_hint="--format")
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        _progress("generating", vehicles, bytes_=False) as (progress, task),
        _open_text(out) as handle,
    ):
        rows = write_export(
            handle, vehicles, seed, format, on_vehicle=lambda n: progress.update(task, completed=n)
        )
    console.print(f"wrote {vehicles} vehicles ({rows} ECU rows) to {out}")


def _open_text(path: Path) -> IO[str]:
    """A text file for writing; gzip-compressed when the name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", newline="")
    return path.open("w", encoding="utf-8", newline="")


def _progress(label: str, total: int, *, bytes_: bool) -> _ProgressContext:
    return _ProgressContext(label, total, bytes_)


class _ProgressContext:
    def __init__(self, label: str, total: int, bytes_: bool) -> None:
        columns = [TextColumn(label), BarColumn(), TextColumn("{task.percentage:>5.1f}%")]
        columns += [DownloadColumn()] if bytes_ else [TextColumn("{task.completed} vehicles")]
        self.progress = Progress(*columns, TimeRemainingColumn(), console=console, transient=False)
        self.total = total

    def __enter__(self) -> tuple[Progress, TaskID]:
        self.progress.__enter__()
        return self.progress, self.progress.add_task("", total=self.total)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


def print_report(report: ImportReport, limit: int = 50) -> None:
    table = Table(title=f"fleet import {report.import_id}: {report.status}", show_header=False)
    for key, value in report.summary().items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    if report.rejections:
        rejected = Table("line", "vin", "field", "reason", title="rejected records")
        for r in report.rejections[:limit]:
            rejected.add_row(str(r.line), r.vin or "", r.field or "", r.reason)
        console.print(rejected)
        more = report.records_rejected - min(limit, len(report.rejections))
        if more > 0:
            console.print(
                f"… and more: every rejection is listed by "
                f"GET /api/v1/fleet/imports/{report.import_id}/rejections"
            )
    if report.status == "rejected":
        console.print("[red]strict import: nothing was taken because records were rejected")


@fleet_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines, plain or gzip; - for stdin.")],
    strict: Annotated[bool, typer.Option(help="Take nothing if any record is bad.")] = False,
    show: Annotated[int, typer.Option(help="Rejected records to print.")] = 50,
    database_url: DatabaseOption = None,
) -> None:
    """Import a manufacturing export. Exit code 0: all taken; 2: records were rejected."""
    settings = settings_with(database_url)
    engine = engine_from_settings(settings)
    if engine.dialect.name == "sqlite":
        upgrade(engine)
    stream: IO[bytes]
    if str(file) == "-":
        stream, total = sys.stdin.buffer, 0
    else:
        if not file.is_file():
            raise typer.BadParameter(f"{file} is not a readable file", param_hint="FILE")
        stream, total = open(file, "rb"), os.path.getsize(file)  # noqa: SIM115
    try:
        with _progress("importing", total or 1, bytes_=True) as (progress, task):

            def advance(_report: ImportReport) -> None:
                if total:
                    progress.update(task, completed=stream.tell())

            report = run_import(
                engine,
                stream,
                settings=settings,
                source_name=str(file),
                strict=strict,
                actor=cli_actor(),
                on_batch=advance,
            )
            progress.update(task, completed=total or 1)
    except ImportFileError as exc:
        console.print(f"[red]{exc.detail}")
        raise typer.Exit(2) from None
    finally:
        stream.close()
    print_report(report, show)
    raise typer.Exit(report.exit_code)


@fleet_app.command("export")
def export(
    format: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File (.gz compresses); standard output if not given."),
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Write the whole registry in the manufacturing export format."""
    if format not in ("jsonl", "csv"):
        raise typer.BadParameter("use jsonl or csv", param_hint="--format")
    engine = engine_from_settings(settings_with(database_url))
    if out is None:
        for chunk in export_fleet(engine, format):
            sys.stdout.write(chunk)
        return
    with _open_text(out) as handle:
        for chunk in export_fleet(engine, format):
            handle.write(chunk)
    console.print(f"exported the registry to {out}")


@vehicles_app.command("show")
def show(vin: str, database_url: DatabaseOption = None) -> None:
    """Print a vehicle, its ECUs and their history as JSON."""
    with cli_session(database_url) as session:
        typer.echo(service.vehicle_detail(session, vin).model_dump_json(indent=2))


@vehicles_app.command("set-status")
def set_status(
    vin: str,
    status: Annotated[str, typer.Argument(help="active, inactive or scrapped")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    database_url: DatabaseOption = None,
) -> None:
    """Mark a vehicle active, inactive or scrapped (vehicles are never deleted)."""
    if status not in ("active", "inactive", "scrapped"):
        raise typer.BadParameter("use active, inactive or scrapped", param_hint="STATUS")
    with cli_session(database_url) as session:
        vehicle, previous = service.change_status(session, cli_actor(), vin, status, reason)
    console.print(f"{vehicle.vin}: {previous} → {status}")


def _register_provisioning() -> None:
    # Issued per vehicle, so they live with the other single-vehicle commands.
    from otacm.vehicle_api.cli import issue_credentials, revoke_credentials

    vehicles_app.command("credentials")(issue_credentials)
    vehicles_app.command("revoke-credentials")(revoke_credentials)


_register_provisioning()
