"""Setting up the image repository: keys created and version 1 signed, in one step.

Kept apart from the `otacm keys` commands so that the demo and the benchmarks can call it
without importing the command-line layer.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.db import engine_from_settings, make_session_factory, unit_of_work, upgrade
from otacm.security import audit, encryption
from otacm.security.audit import SYSTEM, Actor
from otacm.security.keys import KeysAlreadyInitialised, KeyStore
from otacm.security.tuf.repository import IMAGE, ImageRepository, RepositoryExists
from otacm.vehicle_api.director import DirectorRoot


def write_lock(session: Session) -> None:
    # On SQLite, BEGIN IMMEDIATE: the repository is read, then written, in one transaction.
    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


def initialise_keys_and_repository(
    settings: Settings,
    root_passphrase: str | None,
    actor: Actor = SYSTEM,
    *,
    engine: Engine | None = None,
) -> dict[str, str]:
    """Create every role's key and the server key, and sign version 1 of the image repository
    and of the director root;
    returns the key ids by role. `root_passphrase=None` stores the root key unencrypted: for a
    demo, a development set-up or a benchmark only. Without an `engine`, one is made from
    `settings` (the embedded SQLite database migrated first) and disposed of at the end.

    If the database part fails, the signing keys just created are removed again, so that the
    command can simply be repeated (a server key stays: it is used again).

    Raises:
        KeysAlreadyInitialised: the keys directory already has keys.
        RepositoryExists: the database already has an image repository.
        PassphraseRequired: the passphrase is too short.
        KeyFileInvalid: a server key file is there but is not a usable key.
    """
    keys = KeyStore.from_settings(settings)
    repository = ImageRepository(settings)
    own_engine = engine is None
    if engine is None:
        engine = engine_from_settings(settings)
    created = False
    try:
        if own_engine and engine.dialect.name == "sqlite":
            upgrade(engine)
        with unit_of_work(make_session_factory(engine)) as session:
            write_lock(session)
            if keys.initialised():
                raise KeysAlreadyInitialised(
                    f"signing keys already exist in {keys.directory}; refusing to overwrite them"
                )
            if repository.exists(session):
                raise RepositoryExists(
                    "the database already has an image repository, signed with keys kept "
                    "elsewhere; refusing to start another"
                )
            public = keys.init(root_passphrase, allow_unencrypted_root=root_passphrase is None)
            created = True
            # The key of confidential updates and webhook secrets: made here, or (keys set up
            # before it was) when something is first wrapped; never when unwrapping.
            encryption.load_or_create_server_key(keys.directory)
            repository.bootstrap(session, keys, root_passphrase=root_passphrase)
            # The director root every vehicle's director repository shares.
            DirectorRoot(settings).bootstrap(session, keys, root_passphrase=root_passphrase)
            keyids = {role: key.keyid for role, key in public.items()}
            audit.record(
                session,
                actor,
                "tuf.keys.init",
                object_type="tuf_repository",
                object_id=IMAGE,
                after={"keyids": keyids, "root_encrypted": root_passphrase is not None},
            )
        return keyids
    except BaseException:
        if created:
            keys.discard()
        raise
    finally:
        if own_engine:
            engine.dispose()
