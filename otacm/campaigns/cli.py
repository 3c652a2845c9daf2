"""`otacm campaigns`: campaigns at the terminal (works on the database directly)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns import children, operations, service
from otacm.campaigns import launch as launching
from otacm.campaigns import report as reporting
from otacm.campaigns.models import Campaign
from otacm.campaigns.schemas import CampaignCreate
from otacm.cli import DatabaseOption, cli_actor, cli_engine, cli_session, settings_with
from otacm.db import make_session_factory
from otacm.errors import OtacmError

campaigns_app = typer.Typer(
    help="Campaigns: define, approve, launch, operate.", no_args_is_help=True
)
console = Console(stderr=True)
out = Console()
CommentOption = Annotated[str, typer.Option(help="Kept in the audit log.")]


def _in_session(database_url: str | None, work: Callable[[Session], Campaign]) -> Campaign:
    with cli_session(database_url, write=True) as session:
        campaign = work(session)
    console.print(f"campaign {campaign.id} ({campaign.name}) is {campaign.state}")
    return campaign


@campaigns_app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="JSON document: the body of POST /campaigns.")],
    database_url: DatabaseOption = None,
) -> None:
    """Define a campaign (a draft) from a JSON document."""
    try:
        document: Any = json.loads(file.read_text())
        data = CampaignCreate.model_validate(document)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{file}: {exc}") from None
    except (ValidationError, OtacmError) as exc:
        raise typer.BadParameter(f"{file}: {exc}") from None
    campaign = _in_session(database_url, lambda s: service.create(s, cli_actor(), data))
    out.print(campaign.id)


@campaigns_app.command("list")
def list_campaigns(database_url: DatabaseOption = None) -> None:
    """Campaigns, newest first."""
    table = Table("id", "name", "state", "category", "priority", "launched")
    with cli_session(database_url) as session:
        for c in session.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(200)):
            launched = c.launched_at.isoformat(timespec="minutes") if c.launched_at else ""
            table.add_row(str(c.id), c.name, c.state, c.category, str(c.priority), launched)
    out.print(table)


@campaigns_app.command("show")
def show(campaign_id: int, database_url: DatabaseOption = None) -> None:
    """One campaign as JSON."""
    with cli_session(database_url) as session:
        campaign = service.get(session, campaign_id)
        body = service.out(campaign, service.update_ids_of(session, [campaign_id])[campaign_id])
    out.print_json(body.model_dump_json())


@campaigns_app.command("submit")
def submit(campaign_id: int, database_url: DatabaseOption = None) -> None:
    """Ask another campaign manager to approve it."""
    _in_session(database_url, lambda s: service.submit(s, cli_actor(), campaign_id))


def _decide(campaign_id: int, approve: bool, comment: str, database_url: str | None) -> None:
    four_eyes = settings_with(database_url).campaign_four_eyes
    _in_session(
        database_url,
        lambda s: service.decide(
            s, cli_actor(), campaign_id, approve=approve, comment=comment, four_eyes=four_eyes
        ),
    )


@campaigns_app.command("approve")
def approve(
    campaign_id: int, comment: CommentOption = "", database_url: DatabaseOption = None
) -> None:
    """Approve a submitted campaign (not one's own, under the four-eyes rule)."""
    _decide(campaign_id, True, comment, database_url)


@campaigns_app.command("reject")
def reject(
    campaign_id: int,
    comment: Annotated[str, typer.Option(help="Why; shown to the submitter.")],
    database_url: DatabaseOption = None,
) -> None:
    """Send a submitted campaign back."""
    _decide(campaign_id, False, comment, database_url)


@campaigns_app.command("launch")
def launch(
    campaign_id: int,
    expected_vehicles: Annotated[int, typer.Option(help="The count the preview showed.")],
    database_url: DatabaseOption = None,
) -> None:
    """Create the deployments of an approved campaign, in waves, and start it."""
    margin = settings_with(database_url).campaign_launch_margin
    _in_session(
        database_url,
        lambda s: launching.launch(
            s, cli_actor(), campaign_id, expected_vehicles=expected_vehicles, margin=margin
        ),
    )


def _operation(name: str, help_text: str) -> None:
    def command(
        campaign_id: int, comment: CommentOption = "", database_url: DatabaseOption = None
    ) -> None:
        operate = getattr(operations, name.replace("-", "_"))

        def work(session: Session) -> Campaign:
            result = operate(session, cli_actor(), campaign_id, comment)
            return result[0] if isinstance(result, tuple) else result  # type: ignore[no-any-return]

        _in_session(database_url, work)

    command.__doc__ = help_text
    campaigns_app.command(name)(command)


_operation("pause", "Stop opening waves; deployments under way go on.")
_operation("resume", "Go on; failures seen so far no longer count against the threshold.")
_operation("next-wave", "Close the open wave and open the next one now.")
_operation("cancel", "End it: offers not yet taken up are cancelled, accepted ones finish.")


@campaigns_app.command("retry-failed")
def retry_failed(
    campaign_id: int,
    failure_code: Annotated[
        str | None, typer.Option(help="Only the vehicles that failed with this code.")
    ] = None,
    comment: CommentOption = "",
    database_url: DatabaseOption = None,
) -> None:
    """Draft a child campaign for the vehicles whose deployment failed for good."""
    _in_session(
        database_url,
        lambda s: children.retry_failed(
            s, cli_actor(), campaign_id, failure_code=failure_code, comment=comment
        ),
    )


@campaigns_app.command("rollback")
def rollback(
    campaign_id: int, comment: CommentOption = "", database_url: DatabaseOption = None
) -> None:
    """Draft a child campaign taking the vehicles that succeeded back to the rollback versions."""
    _in_session(database_url, lambda s: children.rollback(s, cli_actor(), campaign_id, comment))


@campaigns_app.command("report")
def report(
    campaign_id: int,
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    format: Annotated[str, typer.Option(help="csv or jsonl.")] = "csv",
    database_url: DatabaseOption = None,
) -> None:
    """Write the campaign report: per vehicle and ECU, the versions before and after."""
    if format not in reporting.FORMATS:
        raise typer.BadParameter(f"{format!r} is not csv or jsonl", param_hint="--format")
    with cli_engine(database_url) as engine:
        with make_session_factory(engine)() as session:
            service.get(session, campaign_id)
        try:
            with output.open("w", encoding="utf-8", newline="") as target:
                for chunk in reporting.export(engine, campaign_id, format):
                    target.write(chunk)
        except OSError as error:
            raise typer.BadParameter(
                f"cannot write {output}: {error.strerror}", param_hint="--output"
            ) from error
    console.print(f"campaign {campaign_id}'s report is in {output}")
