"""The `otacm` command: the server, the demo, schema migrations and each domain's commands."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings, get_settings
from otacm.db import (
    current_revision,
    engine_from_settings,
    head_revision,
    make_session_factory,
    make_write_session_factory,
    unit_of_work,
    upgrade,
)
from otacm.errors import OtacmError
from otacm.security.audit import Actor

app = typer.Typer(
    help="otacm: over-the-air update campaigns for vehicle fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)


def settings_with(database_url: str | None) -> Settings:
    """The process's settings (`OTACM_*`), with `--database-url` when given. A setting that is
    not valid ends the command, naming it, with exit code 2."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "OTACM_" + "_".join(str(part) for part in error["loc"]).upper()
            detail = error["msg"].removeprefix("Value error, ")
            console.print(f"[red]{detail if detail.startswith(name) else f'{name}: {detail}'}")
        raise typer.Exit(2) from None
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


def cli_actor() -> Actor:
    """The operator at this terminal: the CLI works on the database directly, so what it does
    is audited under the operating-system account that ran it."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor(f"cli:{name}", "cli", "local")


@contextmanager
def cli_engine(database_url: str | None) -> Iterator[Engine]:
    """The database of one CLI command. The embedded database is brought up to date first; a
    domain error ends the command with its message and exit code 1."""
    engine = engine_from_settings(settings_with(database_url))
    if engine.dialect.name == "sqlite":
        upgrade(engine)
    try:
        yield engine
    except OtacmError as exc:
        console.print(f"[red]{exc.detail}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@contextmanager
def cli_session(database_url: str | None, *, write: bool = False) -> Iterator[Session]:
    """One CLI command's unit of work: committed at the end, nothing stored on an error. With
    `write`, for commands that read, then write: SQLite's write lock is taken at BEGIN."""
    with cli_engine(database_url) as engine:
        factory = make_write_session_factory(engine) if write else make_session_factory(engine)
        with unit_of_work(factory) as session:
            yield session


DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="Overrides OTACM_DATABASE_URL.")
]


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOption = None) -> None:
    """Bring the database schema to the version this otacm needs."""
    engine = engine_from_settings(settings_with(database_url))
    upgrade(engine)
    console.print(f"schema at {current_revision(engine)}")


@db_app.command("current")
def db_current(database_url: DatabaseOption = None) -> None:
    """Show the schema version of the database and the one this otacm needs."""
    engine = engine_from_settings(settings_with(database_url))
    typer.echo(f"database: {current_revision(engine)}  needed: {head_revision(engine)}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    database_url: DatabaseOption = None,
) -> None:
    """Run the HTTP server (operator API, vehicle API, console)."""
    import os

    import uvicorn

    settings = settings_with(database_url)
    engine = engine_from_settings(settings)
    if engine.dialect.name == "sqlite":
        # The embedded database is ours to keep current; PostgreSQL is migrated on purpose.
        upgrade(engine)
    elif current_revision(engine) != head_revision(engine):
        console.print("[yellow]the database schema is not current: run `otacm db upgrade`")
    if current_revision(engine) == head_revision(engine):
        from otacm.security.service import any_users

        with unit_of_work(make_session_factory(engine)) as session:
            if not any_users(session):
                console.print(
                    "[yellow]no operator account exists yet: operator requests are refused "
                    "until you run `otacm users create NAME --role admin` and "
                    "`otacm tokens create --user NAME`"
                )
    engine.dispose()
    if database_url:
        os.environ["OTACM_DATABASE_URL"] = database_url
    uvicorn.run(
        "otacm.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level,
    )


@app.command()
def worker(database_url: DatabaseOption = None) -> None:
    """Run the rollout engine and the notification delivery on their own (without serving
    HTTP): a tick every OTACM_ENGINE_INTERVAL, a delivery round every
    OTACM_NOTIFICATION_INTERVAL. Any number of workers and servers may share one PostgreSQL."""
    import asyncio

    from otacm.campaigns import engine as rollout
    from otacm.notifications import delivery

    settings = settings_with(database_url)
    interval = settings.engine_interval.total_seconds() or 10.0
    notify_every = settings.notification_interval.total_seconds() or 10.0

    async def run(factory: sessionmaker[Session]) -> None:
        await asyncio.gather(
            rollout.run_periodically(factory, interval, settings),
            delivery.run_periodically(factory, settings, notify_every),
        )

    with cli_engine(database_url) as db:
        console.print(
            f"rollout engine: a tick every {interval:g} s; notifications: a round every "
            f"{notify_every:g} s; Ctrl-C stops it"
        )
        with suppress(KeyboardInterrupt):
            asyncio.run(run(make_write_session_factory(db)))


def _register() -> None:
    from otacm.bench.cli import app as bench_app
    from otacm.campaigns.cli import campaigns_app
    from otacm.demo import demo
    from otacm.fleet.cli import fleet_app, vehicles_app
    from otacm.notifications.cli import webhooks_app
    from otacm.security.cli import audit_app, tokens_app, users_app
    from otacm.security.tuf.cli import keys_app
    from otacm.simulator.cli import simulate
    from otacm.targeting.cli import targeting_app
    from otacm.updates.cli import updates_app

    app.add_typer(fleet_app, name="fleet")
    app.add_typer(vehicles_app, name="vehicles")
    app.add_typer(bench_app, name="bench")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    app.add_typer(updates_app, name="updates")
    app.add_typer(targeting_app, name="targeting")
    app.add_typer(campaigns_app, name="campaigns")
    app.add_typer(webhooks_app, name="webhooks")
    app.command()(demo)
    app.command()(simulate)


_register()


def main() -> None:
    app()


__all__ = ["app", "main", "Path"]
