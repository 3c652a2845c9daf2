"""`otacm users`, `otacm tokens` and `otacm audit`: operator administration at the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from otacm.cli import DatabaseOption, cli_actor, cli_session
from otacm.security import audit, service
from otacm.security.models import User
from otacm.security.permissions import Role

users_app = typer.Typer(help="Operator accounts.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
console = Console(stderr=True)


def _new_password(password: str | None) -> str:
    if password is not None:
        return password
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@users_app.command("create")
def create(
    name: str,
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(Role)}.")],
    password: Annotated[str | None, typer.Option(help="Prompted for when not given.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create an operator account."""
    with cli_session(database_url) as session:
        service.create_user(session, cli_actor(), name, role, _new_password(password))
    console.print(f"created {role} {name!r}; give them a token: otacm tokens create --user {name}")


@users_app.command("list")
def list_users(database_url: DatabaseOption = None) -> None:
    """List operator accounts."""
    table = Table("name", "role", "disabled", "locked", "created")
    with cli_session(database_url) as session:
        for user in session.query(User).order_by(User.name):
            summary = service.user_summary(user)
            table.add_row(
                user.name,
                user.role,
                "yes" if summary["disabled"] else "",
                "yes" if summary["locked"] else "",
                user.created_at.isoformat(),
            )
    Console().print(table)


@users_app.command("disable")
def disable(name: str, database_url: DatabaseOption = None) -> None:
    """Disable an account: its tokens and sessions stop working. Accounts are never deleted."""
    with cli_session(database_url) as session:
        service.update_user(session, cli_actor(), name, disabled=True)
    console.print(f"disabled {name!r}")


@users_app.command("enable")
def enable(name: str, database_url: DatabaseOption = None) -> None:
    """Enable a disabled account again."""
    with cli_session(database_url) as session:
        service.update_user(session, cli_actor(), name, disabled=False)
    console.print(f"enabled {name!r}")


@users_app.command("set-password")
def set_password(
    name: str,
    password: Annotated[str | None, typer.Option(help="Prompted for when not given.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Set an operator's console password."""
    with cli_session(database_url) as session:
        service.set_password(session, cli_actor(), name, _new_password(password))
    console.print(f"password of {name!r} set")


@users_app.command("unlock")
def unlock(name: str, database_url: DatabaseOption = None) -> None:
    """Lift the lockout after repeated failed logins."""
    with cli_session(database_url) as session:
        service.unlock(session, cli_actor(), name)
    console.print(f"unlocked {name!r}")


@tokens_app.command("create")
def create_token(
    user: Annotated[str, typer.Option(help="Whose token.")],
    expires_in: Annotated[str | None, typer.Option(help="e.g. 30d, 12h; default: never.")] = None,
    name: Annotated[str, typer.Option(help="A label to recognise it by.")] = "cli",
    database_url: DatabaseOption = None,
) -> None:
    """Create an API token and print it (once: only its hash is stored)."""
    with cli_session(database_url) as session:
        expires = service.parse_duration(expires_in) if expires_in else None
        new = service.create_token(session, cli_actor(), user, name, expires)
        token_id, expiry = new.token.id, service.expiry_text(new.token.expires_at)
    console.print(f"token {token_id} for {user!r}, expires {expiry}; it is shown only now:")
    typer.echo(new.secret)


@tokens_app.command("list")
def list_tokens(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """List API tokens (never their secrets)."""
    table = Table("id", "user", "name", "starts with", "created", "expires", "revoked", "last used")
    with cli_session(database_url) as session:
        for token, owner in service.list_tokens(session, user):
            table.add_row(
                str(token.id),
                owner,
                token.name,
                token.prefix + "…",
                token.created_at.isoformat(),
                service.expiry_text(token.expires_at),
                token.revoked_at.isoformat() if token.revoked_at else "",
                token.last_used_at.isoformat() if token.last_used_at else "",
            )
    Console().print(table)


@tokens_app.command("revoke")
def revoke(token_id: int, database_url: DatabaseOption = None) -> None:
    """Revoke an API token at once."""
    with cli_session(database_url) as session:
        service.revoke_token(session, cli_actor(), token_id)
    console.print(f"revoked token {token_id}")


@audit_app.command("verify")
def verify(
    anchor: Annotated[
        str | None,
        typer.Option(help="ID:HASH printed by an earlier verification: proves nothing was cut."),
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Recompute the audit log's hash chain; exit 1 naming the first broken entry."""
    expected: tuple[int, str] | None = None
    if anchor:
        entry_id, _, digest = anchor.partition(":")
        if not entry_id.isdigit() or len(digest) != 64:
            raise typer.BadParameter(
                "use ID:HASH as printed by `otacm audit verify`", param_hint="--anchor"
            )
        expected = (int(entry_id), digest)
    with cli_session(database_url) as session:
        checked, broken = audit.verify(session, expected)
        newest = audit.head(session)
    if broken is not None:
        console.print(
            f"[red]audit log broken at entry {broken.entry_id}: {broken.reason} "
            f"({checked} entries before it verified)"
        )
        raise typer.Exit(1)
    console.print(f"audit log intact: {checked} entries verified")
    if newest is not None:
        console.print("anchor for the next verification (keep it outside this database):")
        typer.echo(f"{newest[0]}:{newest[1]}")
