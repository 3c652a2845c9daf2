"""`otacm webhooks`: webhook endpoints and the notification outbox at the terminal.

`add` and `rotate` print the new secret on stdout, once, and everything else on stderr, so that
`otacm webhooks add URL > secret.txt` keeps only the secret. `deliver` runs one delivery round
(what `otacm serve` and `otacm worker` do every OTACM_NOTIFICATION_INTERVAL).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from otacm.cli import DatabaseOption, cli_actor, cli_engine, cli_session, settings_with
from otacm.db import make_write_session_factory
from otacm.notifications import delivery, service
from otacm.notifications.outbox import MESSAGE_TYPES, Channel, Status
from otacm.notifications.schemas import DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE, WebhookCreate

webhooks_app = typer.Typer(
    help="Webhook endpoints (signed alert notifications) and their deliveries.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https://…; http only to localhost.")],
    description: Annotated[str, typer.Option(help="What or who receives it.")] = "",
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help=f"A message type to receive (repeatable; none: all): {', '.join(MESSAGE_TYPES)}.",
        ),
    ] = None,
    inactive: Annotated[bool, typer.Option("--inactive", help="Create it switched off.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Add a webhook endpoint; prints its secret, which is never shown again."""
    try:
        data = WebhookCreate(
            url=url, description=description, event_types=event or [], active=not inactive
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = settings_with(database_url)
    with cli_session(database_url, write=True) as session:
        endpoint, secret = service.create(session, cli_actor(), data, settings=settings)
    console.print(f"webhook {endpoint.id} added; its secret (shown only now) follows")
    typer.echo(secret)


@webhooks_app.command("list")
def list_webhooks(database_url: DatabaseOption = None) -> None:
    """Webhook endpoints with their pending and given-up messages (never their secrets)."""
    table = Table("id", "url", "active", "message types", "description", "pending", "failed")
    with cli_session(database_url) as session:
        counts = service.delivery_counts(session)
        for endpoint in service.list_all(session):
            mine = counts.get(endpoint.id, {})
            table.add_row(
                str(endpoint.id),
                endpoint.url,
                "yes" if endpoint.active else "no",
                ", ".join(endpoint.event_types) or "(all)",
                endpoint.description,
                str(mine.get(Status.PENDING.value, 0)),
                str(mine.get(Status.FAILED.value, 0)),
            )
    out.print(table)


@webhooks_app.command("remove")
def remove(webhook_id: int, database_url: DatabaseOption = None) -> None:
    """Remove an endpoint with its secrets and deliveries (pending ones are not sent)."""
    with cli_session(database_url, write=True) as session:
        service.delete(session, cli_actor(), webhook_id)
    console.print(f"webhook {webhook_id} removed")


@webhooks_app.command("rotate")
def rotate(
    webhook_id: int,
    grace_hours: Annotated[
        float,
        typer.Option(
            min=0,
            max=MAX_ROTATION_GRACE.total_seconds() / 3600,
            help="Hours the current secret keeps signing beside the new one (0: stop now).",
        ),
    ] = DEFAULT_ROTATION_GRACE.total_seconds() / 3600,
    database_url: DatabaseOption = None,
) -> None:
    """Give an endpoint a new secret; prints it, once."""
    settings = settings_with(database_url)
    with cli_session(database_url, write=True) as session:
        _, secret, expires = service.rotate_secret(
            session,
            cli_actor(),
            webhook_id,
            grace=timedelta(hours=grace_hours),
            settings=settings,
        )
    until = f"keeps signing until {expires.isoformat(timespec='seconds')}" if expires else "stopped"
    console.print(f"webhook {webhook_id}: new secret (shown only now) follows; the old one {until}")
    typer.echo(secret)


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: int,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    database_url: DatabaseOption = None,
) -> None:
    """An endpoint's latest messages and how their delivery went."""
    table = Table("message", "type", "status", "attempts", "last answer", "next attempt")
    with cli_session(database_url) as session:
        page = service.deliveries(session, webhook_id, limit=limit)
    for item in page.items:
        answer = " ".join(str(p) for p in (item.last_status_code, item.last_error) if p)
        next_at = item.next_attempt_at.isoformat(timespec="seconds") if item.next_attempt_at else ""
        table.add_row(
            item.message_id, item.message_type, item.status, str(item.attempts), answer, next_at
        )
    out.print(table)


@webhooks_app.command("deliver")
def deliver(database_url: DatabaseOption = None) -> None:
    """Run one delivery round now: every due webhook and email message is attempted (those
    this process can send: webhooks need the server key, email its settings)."""
    settings = settings_with(database_url)
    serves = delivery.channels(settings)
    skipped = []
    if Channel.WEBHOOK not in serves:
        skipped.append(f"webhooks (no server key in {settings.resolved_keys_dir()})")
    if Channel.EMAIL not in serves:
        skipped.append("email (not configured here)")
    if skipped:
        console.print(f"[yellow]left pending for another process: {'; '.join(skipped)}")
    with cli_engine(database_url) as engine:
        report = delivery.deliver_round(make_write_session_factory(engine), settings)
    for line in report.errors:
        console.print(f"[yellow]{line}")
    console.print(
        f"{report.delivered} delivered, {report.retrying} to retry, {report.failed} given up"
        + (f", {report.lost} not recorded (taken over or endpoint changed)" if report.lost else "")
    )
