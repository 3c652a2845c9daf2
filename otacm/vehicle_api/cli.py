"""`otacm vehicles credentials` and `revoke-credentials`: provisioning at the terminal.

A batch is written to a private file (mode 0600) beside the destination and moved into place
only after the credentials are committed: a failed run leaves no file of secrets the server
does not know, and no half-written one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from sqlalchemy import func, select

from otacm.cli import DatabaseOption, cli_actor, cli_session
from otacm.db import utcnow
from otacm.files import write_private_file
from otacm.fleet.models import Vehicle
from otacm.vehicle_api import credentials

console = Console(stderr=True)
BATCH = 1000


def _vins_from(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--vin-file"
        ) from None
    return [line.strip().upper() for line in lines if line.strip() and not line.startswith("#")]


def issue_credentials(
    vin: Annotated[
        str | None, typer.Argument(help="One vehicle; or use --all / --vin-file.")
    ] = None,
    all_vehicles: Annotated[
        bool, typer.Option("--all", help="Every active vehicle of the registry.")
    ] = False,
    vin_file: Annotated[
        Path | None, typer.Option(help="A file with one VIN per line.", show_default=False)
    ] = None,
    keys: Annotated[
        bool,
        typer.Option(help="Also make the vehicle's signing and encryption key pairs."),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the records here (JSON lines; mode 0600)."),
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Issue vehicle credentials (revoking earlier ones): the provisioning records a vehicle
    is loaded with, as JSON (docs/vehicle-api.md). Secrets are shown once; only their hashes
    are kept."""
    chosen = sum([vin is not None, all_vehicles, vin_file is not None])
    if chosen != 1:
        raise typer.BadParameter("name one VIN, or use --all or --vin-file", param_hint="VIN")
    if out is None and vin is None:
        raise typer.BadParameter("a batch needs --out FILE", param_hint="--out")
    actor = cli_actor()
    now = utcnow()
    if vin is not None:
        with cli_session(database_url, write=True) as session:
            record = credentials.provision_vin(session, actor, vin, now, keys=keys)
            text = json.dumps(record.as_json())
            if out is not None:
                # Written before the commit: a file that cannot be written issues nothing.
                try:
                    write_private_file(out, (text + "\n").encode(), replace=True)
                except OSError as exc:
                    raise typer.BadParameter(
                        f"cannot write {out}: {exc.strerror}", param_hint="--out"
                    ) from None
        if out is None:
            typer.echo(text)
        return
    assert out is not None
    wanted = _vins_from(vin_file) if vin_file is not None else None
    written = 0
    tmp = out.with_name(f".{out.name}.partial")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot write {out}: {exc.strerror}", param_hint="--out"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            with cli_session(database_url, write=True) as session:
                query = select(Vehicle).order_by(Vehicle.id)
                if wanted is not None:
                    query = query.where(Vehicle.vin.in_(wanted))
                else:
                    query = query.where(Vehicle.status == "active")
                total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
                if wanted is not None and total != len(set(wanted)):
                    known = set(session.scalars(select(Vehicle.vin).where(Vehicle.vin.in_(wanted))))
                    missing = sorted(set(wanted) - known)
                    raise typer.BadParameter(
                        f"{len(missing)} VINs are not in the registry, e.g. {missing[0]}",
                        param_hint="--vin-file",
                    )
                with Progress(
                    "{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console,
                ) as progress:  # fmt: skip
                    task = progress.add_task("issuing", total=total)
                    last_id = 0
                    while True:
                        chunk = list(
                            session.scalars(query.where(Vehicle.id > last_id).limit(BATCH))
                        )
                        if not chunk:
                            break
                        last_id = chunk[-1].id
                        for record in credentials.provision(session, actor, chunk, now, keys=keys):
                            stream.write(json.dumps(record.as_json()) + "\n")
                            written += 1
                        session.expunge_all()
                        progress.update(task, completed=written)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    console.print(f"{written:,} vehicle credentials issued into {out}")


def revoke_credentials(vin: str, database_url: DatabaseOption = None) -> None:
    """Revoke every credential of a vehicle (it can no longer reach the vehicle API)."""
    with cli_session(database_url, write=True) as session:
        revoked = credentials.revoke(session, cli_actor(), vin, utcnow())
    console.print(f"{vin.upper()}: {revoked} credential(s) revoked")
