"""`otacm keys`: the TUF signing keys and the image repository's metadata at the terminal.

`init` creates the keys and signs version 1 of the image repository; `rotate` replaces one
role's key under a new root that vehicles holding an older root can follow; `refresh` re-signs
metadata close to expiry (what the server's maintenance job does on its own); `status` shows
keys, versions and expiries. Every change is audited in the transaction that makes it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from otacm.cli import DatabaseOption, cli_actor, cli_engine, cli_session, settings_with
from otacm.config import Settings
from otacm.security import audit
from otacm.security.keys import ROOT, KeyStore, WrongPassphrase
from otacm.security.tuf.repository import (
    IMAGE,
    ImageRepository,
    KeyRotation,
    RepositoryNotInitialised,
)
from otacm.security.tuf.setup import initialise_keys_and_repository, write_lock
from otacm.vehicle_api.director import DIRECTOR, DIRECTOR_KEY, DirectorRoot

keys_app = typer.Typer(
    help="TUF signing keys and the image repository's metadata.", no_args_is_help=True
)
console = Console(stderr=True)

RootPassphraseOption = Annotated[
    str | None,
    typer.Option(
        "--root-passphrase",
        envvar="OTACM_ROOT_PASSPHRASE",
        help="Passphrase of the root key (prompted for when needed and not given).",
        show_default=False,
    ),
]
KeysDirOption = Annotated[
    Path | None, typer.Option("--keys-dir", help="Overrides OTACM_KEYS_DIR.", show_default=False)
]


def _settings(database_url: str | None, keys_dir: Path | None) -> Settings:
    settings = settings_with(database_url)
    if keys_dir is not None:
        settings = settings.model_copy(update={"keys_dir": keys_dir})
    return settings


@keys_app.command("init")
def init(
    root_passphrase: RootPassphraseOption = None,
    no_root_passphrase: Annotated[
        bool,
        typer.Option(
            "--no-root-passphrase",
            help="Store the root key unencrypted: for a demo or development set-up only.",
        ),
    ] = False,
    keys_dir: KeysDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create the signing keys and sign version 1 of the image repository."""
    if no_root_passphrase and root_passphrase is not None:
        raise typer.BadParameter(
            "give either a passphrase or --no-root-passphrase", param_hint="--root-passphrase"
        )
    settings = _settings(database_url, keys_dir)
    if KeyStore.from_settings(settings).initialised():
        # Before asking for a passphrase that could not be used.
        console.print(f"[red]signing keys already exist in {settings.resolved_keys_dir()}")
        raise typer.Exit(1)
    if not no_root_passphrase and root_passphrase is None:
        root_passphrase = str(
            typer.prompt("root key passphrase", hide_input=True, confirmation_prompt=True)
        )
    with cli_engine(database_url) as engine:
        keyids = initialise_keys_and_repository(
            settings, root_passphrase, cli_actor(), engine=engine
        )
    for role, keyid in keyids.items():
        console.print(f"{role:<10} {keyid}")
    console.print(f"keys in {settings.resolved_keys_dir()}; image repository at version 1")
    if root_passphrase is None:
        console.print(
            "[yellow]WARNING: the root key is stored WITHOUT a passphrase: anyone who can read "
            "the keys directory can sign a new root. Use this for a demo or development only."
        )
    else:
        console.print(
            "keep the root key (root.pem) and its passphrase offline; the server needs only "
            "the other keys"
        )


def _root_passphrase(keys: KeyStore, given: str | None) -> str | None:
    if given is None and keys.root_encrypted():
        return str(typer.prompt("root key passphrase", hide_input=True))
    return given


@keys_app.command("rotate")
def rotate(
    role: Annotated[
        str, typer.Argument(help="root, targets, snapshot, timestamp (image) or director.")
    ],
    root_passphrase: RootPassphraseOption = None,
    keys_dir: KeysDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Give ROLE a new key, announced in a new root signed by the current root key."""
    settings = _settings(database_url, keys_dir)
    keys = KeyStore.from_settings(settings)
    rotation: KeyRotation | None = None
    refused = ""
    actor = cli_actor()
    with cli_session(database_url) as session:
        passphrase = _root_passphrase(keys, root_passphrase)  # before the transaction begins
        write_lock(session)
        try:
            # The director key signs only the director repositories (their shared root).
            repository = (
                DirectorRoot(settings) if role == DIRECTOR_KEY else ImageRepository(settings)
            )
            rotation = repository.rotate_key(session, keys, role, passphrase)
        except WrongPassphrase as exc:
            # The attempt itself is worth recording; nothing else changed.
            refused = exc.detail
            audit.record(
                session,
                actor,
                "tuf.keys.rotate",
                object_type="tuf_key",
                object_id=role,
                outcome="refused",
                detail=refused,
            )
        else:
            audit.record(
                session,
                actor,
                "tuf.keys.rotate",
                object_type="tuf_key",
                object_id=role,
                before={"keyid": rotation.old_keyid},
                after={"keyid": rotation.new_keyid, "root_version": rotation.root_version},
            )
    if rotation is None:
        console.print(f"[red]{refused}")
        raise typer.Exit(1)
    console.print(
        f"{role} key rotated: {rotation.old_keyid[:16]}… → {rotation.new_keyid}; "
        f"root now at version {rotation.root_version}"
    )


@keys_app.command("init-director")
def init_director(
    root_passphrase: RootPassphraseOption = None,
    keys_dir: KeysDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Sign the director root, for keys set up before otacm had director repositories."""
    settings = _settings(database_url, keys_dir)
    keys = KeyStore.from_settings(settings)
    repository = DirectorRoot(settings)
    with cli_session(database_url) as session:
        passphrase = _root_passphrase(keys, root_passphrase)
        write_lock(session)
        if repository.exists(session):
            console.print("the director root exists already")
            return
        repository.bootstrap(session, keys, root_passphrase=passphrase)
        audit.record(
            session, cli_actor(), "tuf.director.init", object_type="tuf_repository",
            object_id=DIRECTOR,
        )  # fmt: skip
    console.print("director root signed (version 1)")


@keys_app.command("refresh")
def refresh(
    root_passphrase: Annotated[
        str | None,
        typer.Option(
            "--root-passphrase",
            envvar="OTACM_ROOT_PASSPHRASE",
            help="Also re-sign root when it is due.",
            show_default=False,
        ),
    ] = None,
    keys_dir: KeysDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Re-sign the image repository's metadata that is close to expiry."""
    settings = _settings(database_url, keys_dir)
    keys = KeyStore.from_settings(settings)
    repository = ImageRepository(settings)
    with cli_session(database_url) as session:
        write_lock(session)
        done = repository.refresh(session, keys, root_passphrase=root_passphrase)
        if done:
            audit.record(
                session,
                cli_actor(),
                "tuf.metadata.refresh",
                object_type="tuf_repository",
                object_id=IMAGE,
                after={"resigned": done},
            )
        still_due = repository.due(session)
    console.print(f"re-signed: {', '.join(done)}" if done else "nothing was due")
    if ROOT in still_due:
        console.print(
            "[yellow]root expires soon: re-sign it with `otacm keys refresh --root-passphrase`"
        )


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


@keys_app.command("status")
def status(keys_dir: KeysDirOption = None, database_url: DatabaseOption = None) -> None:
    """Keys, key ids, and the image repository's metadata versions and expiries."""
    settings = _settings(database_url, keys_dir)
    keys = KeyStore.from_settings(settings)
    repository = ImageRepository(settings)
    with cli_session(database_url) as session:
        try:
            roles = repository.status(session)
        except RepositoryNotInitialised:
            roles = []
    listed = {r.role: r.keyids for r in roles}
    key_table = Table("key", "key id", "encrypted", "in root", "retired keys")
    for info in keys.status():
        in_root = ""
        if info.role in listed:
            # NO: a rotation whose transaction rolled back; the listed (retired) key still signs.
            in_root = "yes" if info.keyid in listed[info.role] else "NO"
        key_table.add_row(
            info.role,
            info.keyid,
            "yes" if info.encrypted else "no",
            in_root,
            str(len(info.retired)),
        )
    metadata_table = Table("role", "version", "expires", "due", "key ids")
    for role in roles:
        metadata_table.add_row(
            role.role,
            str(role.version),
            _when(role.expires_at),
            "yes" if role.due else "",
            " ".join(k[:16] for k in role.keyids),
        )
    out = Console()
    if key_table.row_count:
        out.print(key_table)
    else:
        console.print(f"no keys in {keys.directory}: run `otacm keys init`")
    if roles:
        out.print(metadata_table)
    else:
        console.print("the image repository has no metadata yet: run `otacm keys init`")
    if not key_table.row_count or not roles:
        raise typer.Exit(1)
