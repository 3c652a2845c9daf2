"""`otacm updates`: the update catalog at the terminal (works on the database directly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from otacm.cli import DatabaseOption, cli_actor, cli_engine, settings_with
from otacm.db import make_session_factory, make_write_session_factory, unit_of_work, utcnow
from otacm.updates import artifacts, repository, service
from otacm.updates.schemas import UpdateCreate, UpdateFields, UpdateState, WithdrawRequest
from otacm.updates.storage import storage_from_settings

updates_app = typer.Typer(help="Software updates: drafts, files, release.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

READ_CHUNK = 4 << 20


def _document(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: expected a JSON object of update fields")
    return data


FieldsT = TypeVar("FieldsT", bound=UpdateFields)


def _fields(model: type[FieldsT], path: Path) -> FieldsT:
    try:
        return model.model_validate(_document(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise typer.BadParameter(f"{path}: {where}: {first['msg']}") from None


def _show(update_id: int, database_url: str | None) -> None:
    with cli_engine(database_url) as engine, unit_of_work(make_session_factory(engine)) as session:
        update = service.get_update(session, update_id)
        files = repository.artifacts_of(session, [update_id])[update_id]
        body = service.update_out(update, files, utcnow().date(), None)
    out.print_json(body.model_dump_json())


@updates_app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="JSON document with the update's fields.")],
    database_url: DatabaseOption = None,
) -> None:
    """Define a draft update from a JSON document (the same fields as POST /api/v1/updates)."""
    data = _fields(UpdateCreate, file)
    settings = settings_with(database_url)
    with cli_engine(database_url) as engine:
        with unit_of_work(make_write_session_factory(engine)) as session:
            update = service.create_draft(session, cli_actor(), data, settings)
        console.print(f"created draft update {update.id}: {update.name} {update.version}")
    out.print(update.id)


@updates_app.command("edit")
def edit(
    update_id: int,
    file: Annotated[Path, typer.Argument(help="JSON document with the fields to change.")],
    database_url: DatabaseOption = None,
) -> None:
    """Change fields of a draft (the same fields as PATCH /api/v1/updates/ID)."""
    changes = _fields(UpdateFields, file)
    settings = settings_with(database_url)
    with (
        cli_engine(database_url) as engine,
        unit_of_work(make_write_session_factory(engine)) as session,
    ):
        service.edit_draft(session, cli_actor(), update_id, changes, settings)
    console.print(f"changed {', '.join(sorted(changes.model_fields_set))} of update {update_id}")


@updates_app.command("show")
def show(update_id: int, database_url: DatabaseOption = None) -> None:
    """Print one update with its files as JSON."""
    _show(update_id, database_url)


@updates_app.command("list")
def list_updates(
    state: Annotated[list[UpdateState] | None, typer.Option(help="Repeatable.")] = None,
    ecu_type: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    model: Annotated[str | None, typer.Option(help="Compatible vehicle model.")] = None,
    limit: int = 100,
    database_url: DatabaseOption = None,
) -> None:
    """The catalog, newest version first."""
    f = repository.CatalogFilter(
        states=[s.value for s in state or []],
        ecu_types=ecu_type or [],
        models=[model] if model else [],
    )
    table = Table("id", "ecu", "version", "name", "state", "counter", "category", "files")
    with cli_engine(database_url) as engine, unit_of_work(make_session_factory(engine)) as session:
        rows, _ = repository.search_updates(
            session, f, today=utcnow().date(), limit=limit, cursor=None
        )
        files = repository.artifacts_of(session, [u.id for u in rows])
        for u in rows:
            table.add_row(
                str(u.id), u.ecu_type, u.version, u.name, u.state,
                str(u.release_counter or ""), u.category, str(len(files[u.id])),
            )  # fmt: skip
    out.print(table)


@updates_app.command("upload")
def upload(
    update_id: int,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="File name in the update.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected SHA-256; refused if not.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Upload a file to a draft, streamed into staging storage with a progress bar."""
    settings = settings_with(database_url)
    storage = storage_from_settings(settings)
    filename = name or file.name
    actor = cli_actor()
    with cli_engine(database_url) as engine:
        with unit_of_work(make_session_factory(engine)) as session:
            update = artifacts.check_upload_allowed(session, update_id, filename)
            data_key = service.data_key_of(update, settings)
        size = file.stat().st_size
        receiver = artifacts.ArtifactReceiver(
            storage,
            max_bytes=settings.artifact_max_bytes,
            data_key=data_key,
            expected_length=size,
            declared_sha256=sha256,
        )
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        with (
            receiver,
            file.open("rb") as source,
            Progress(*columns, console=console, transient=True) as progress,
        ):
            task = progress.add_task(filename, total=size)
            while chunk := source.read(READ_CHUNK):
                receiver.feed(chunk)
                progress.advance(task, len(chunk))
            received = receiver.finish()
        artifacts.attach_or_discard(
            make_write_session_factory(engine),
            storage,
            actor,
            update_id,
            filename,
            received,
            settings=settings,
        )
    stored = " (stored encrypted)" if received.encrypted else ""
    console.print(
        f"uploaded {filename} to update {update_id}: {received.plaintext_length} bytes, "
        f"sha256 {received.plaintext_sha256}{stored}"
    )


@updates_app.command("release")
def release(update_id: int, database_url: DatabaseOption = None) -> None:
    """Release a complete draft: freeze it and sign its files into the image repository."""
    settings = settings_with(database_url)
    storage = storage_from_settings(settings)
    with cli_engine(database_url) as engine:
        update = service.release(
            make_write_session_factory(engine),
            cli_actor(),
            update_id,
            settings=settings,
            storage=storage,
        )
    console.print(
        f"released update {update_id} ({update.ecu_type} {update.version}), "
        f"release counter {update.release_counter}"
    )


@updates_app.command("withdraw")
def withdraw(
    update_id: int,
    reason: Annotated[str, typer.Option(help="Why; shown to campaign managers.")],
    database_url: DatabaseOption = None,
) -> None:
    """Take a released update out of use for new campaigns."""
    try:
        reason = WithdrawRequest(reason=reason).reason  # the rules the API applies
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"], param_hint="--reason") from None
    with (
        cli_engine(database_url) as engine,
        unit_of_work(make_write_session_factory(engine)) as session,
    ):
        service.withdraw(session, cli_actor(), update_id, reason)
    console.print(f"withdrew update {update_id}")


@updates_app.command("cleanup-staging")
def cleanup_staging(database_url: DatabaseOption = None) -> None:
    """Remove staged files of abandoned drafts now (`otacm serve` does it periodically)."""
    settings = settings_with(database_url)
    storage = storage_from_settings(settings)
    with cli_engine(database_url) as engine:
        report = artifacts.cleanup_staging(
            make_write_session_factory(engine), storage, max_age=settings.staging_max_age
        )
    console.print(
        f"removed {report.abandoned_artifacts} staged files of abandoned drafts and "
        f"{report.orphaned_objects} unreferenced staged objects"
    )
