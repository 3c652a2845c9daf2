"""`otacm targeting`: previews and a vehicle's updates at the terminal (database directly)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from otacm.cli import DatabaseOption, cli_session
from otacm.errors import OtacmError
from otacm.fleet.records import Region
from otacm.targeting import service
from otacm.targeting.eligibility import Reason
from otacm.targeting.schemas import PreviewRequest

targeting_app = typer.Typer(
    help="Which vehicles and ECUs updates would reach, and why not.", no_args_is_help=True
)
console = Console(stderr=True)
out = Console()


def _request(
    update_ids: list[int],
    query: str | None,
    selection_file: Path | None,
    allowed_regions: list[Region] | None,
    excluded_regions: list[Region] | None,
    allow_downgrade: bool,
) -> PreviewRequest:
    selection: dict[str, Any] = {}
    if selection_file is not None:
        try:
            selection = json.loads(selection_file.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{selection_file}: {exc}") from None
        if not isinstance(selection, dict):
            raise typer.BadParameter(f"{selection_file}: expected a JSON object (the selection)")
    if query:
        selection["query"] = query
    try:
        return PreviewRequest.model_validate(
            {
                "update_ids": update_ids,
                "selection": selection,
                "regions": {
                    "allowed_regions": allowed_regions or [],
                    "excluded_regions": excluded_regions or [],
                },
                "allow_downgrade": allow_downgrade,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    except OtacmError as exc:  # a query that does not parse names its position
        raise typer.BadParameter(exc.detail) from None


UpdateOption = Annotated[
    list[int], typer.Option("--update", help="A released update's id (repeatable).")
]
QueryOption = Annotated[
    str | None,
    typer.Option(help="Selection in the query language, e.g. 'model==Nordra;region==EU'."),
]
SelectionOption = Annotated[
    Path | None, typer.Option("--selection", help="JSON file with the structured selection.")
]
AllowedOption = Annotated[list[Region] | None, typer.Option("--allowed-region")]
ExcludedOption = Annotated[list[Region] | None, typer.Option("--excluded-region")]
DowngradeOption = Annotated[bool, typer.Option(help="Explicit rollback: allow older versions.")]


@targeting_app.command("preview")
def preview(
    update: UpdateOption,
    query: QueryOption = None,
    selection: SelectionOption = None,
    allowed_region: AllowedOption = None,
    excluded_region: ExcludedOption = None,
    allow_downgrade: DowngradeOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Count the vehicles the updates would reach in the selection, and every reason why not."""
    request = _request(update, query, selection, allowed_region, excluded_region, allow_downgrade)
    with cli_session(database_url) as session:
        result = service.run_preview(session, request)
    if as_json:
        out.print_json(result.model_dump_json())
        return
    out.print(
        f"{result.vehicles_selected:,} vehicles selected, {result.vehicles_eligible:,} eligible, "
        f"{result.ecus_eligible:,} ECU updates; install order {result.install_order}"
    )
    table = Table("reason", "vehicles", "sample VINs")
    for row in result.reasons:
        table.add_row(row.reason.value, f"{row.vehicles:,}", " ".join(row.sample_vins))
    out.print(table)
    by_model = Table("model", *(r.reason.value for r in result.reasons), title="by model")
    for model, counts in sorted(result.breakdowns.get("model", {}).items()):
        by_model.add_row(model, *(f"{counts.get(r.reason, 0):,}" for r in result.reasons))
    out.print(by_model)


@targeting_app.command("list")
def list_vehicles(
    update: UpdateOption,
    output: Annotated[Path, typer.Option("--out", help="CSV file to write.")],
    reason: Annotated[list[Reason] | None, typer.Option(help="Only these reasons.")] = None,
    query: QueryOption = None,
    selection: SelectionOption = None,
    allowed_region: AllowedOption = None,
    excluded_region: ExcludedOption = None,
    allow_downgrade: DowngradeOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Write every vehicle of the preview with its reason to a CSV file."""
    request = _request(update, query, selection, allowed_region, excluded_region, allow_downgrade)
    rows = 0
    with cli_session(database_url) as session, output.open("w", newline="") as file:
        writer: csv.DictWriter[str] | None = None
        for row in service.preview_rows(session, request, reason or []):
            if writer is None:
                writer = csv.DictWriter(file, fieldnames=list(row), lineterminator="\n")
                writer.writeheader()
            writer.writerow(row)
            rows += 1
    console.print(f"wrote {rows:,} vehicles to {output}")


@targeting_app.command("vehicle")
def vehicle(vin: str, database_url: DatabaseOption = None) -> None:
    """Every released update judged for one vehicle, and where its ECUs stand."""
    with cli_session(database_url) as session:
        result = service.vehicle_updates(session, vin)
    table = Table("update", "ECU type", "version", "reason", title=f"updates for {result.vin}")
    for verdict in [*result.applicable, *result.not_applicable]:
        table.add_row(
            str(verdict.update.id),
            verdict.update.ecu_type,
            verdict.update.version,
            verdict.reason.value,
        )
    out.print(table)
    ecus = Table("ECU", "serial", "installed", "latest release", "status")
    for ecu in result.ecus:
        ecus.add_row(
            ecu.ecu_type,
            ecu.serial,
            ecu.installed_version,
            ecu.latest_release or "",
            ecu.status.value,
        )
    out.print(ecus)
