"""`otacm keys` as an administrator runs it: init, rotate, refresh, status; all audited."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings
from otacm.security import encryption
from otacm.security.keys import KeyStore
from otacm.security.tuf.repository import ImageRepository
from tests.security.helpers import audit_rows, table
from tests.security.tuf.helpers import PASSPHRASE, reading

runner = CliRunner()


def keys_dir(settings: Settings) -> Path:
    return settings.data_dir / "keys"


def otacm_keys(
    settings: Settings, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`otacm keys ARGS` on the test's database and keys directory: (exit code, stdout, all)."""
    result = runner.invoke(
        app,
        [
            "keys",
            *args,
            "--keys-dir",
            str(keys_dir(settings)),
            "--database-url",
            settings.resolved_database_url(),
        ],
        input=stdin,
        env={"COLUMNS": "250", **(env or {})},
    )
    return result.exit_code, result.stdout, result.output


def root_version(engine: Engine, settings: Settings) -> int:
    with reading(engine) as session:
        [root] = [r for r in ImageRepository(settings).status(session) if r.role == "root"]
    return root.version


def test_init_with_a_passphrase(settings: Settings, engine: Engine) -> None:
    code, _, output = otacm_keys(settings, "init", "--root-passphrase", PASSPHRASE)
    assert code == 0, output
    store = KeyStore(keys_dir(settings))
    assert store.root_encrypted()
    assert store.public_key("timestamp").keyid in output
    assert PASSPHRASE not in output
    assert "WITHOUT a passphrase" not in output
    assert root_version(engine, settings) == 1
    [entry] = [r for r in audit_rows(engine) if r["action"] == "tuf.keys.init"]
    assert entry["object_id"] == "image"
    assert entry["after"]["root_encrypted"] is True
    assert entry["after"]["keyids"]["root"] == store.public_key("root").keyid

    # Asked again, it refuses and changes nothing.
    before = {p.name: p.read_bytes() for p in keys_dir(settings).iterdir()}
    code, _, output = otacm_keys(settings, "init", "--root-passphrase", PASSPHRASE)
    assert code == 1
    assert "signing keys already exist" in output
    code, _, output = otacm_keys(settings, "init")  # refused before asking for a passphrase
    assert code == 1
    assert "root key passphrase:" not in output
    assert {p.name: p.read_bytes() for p in keys_dir(settings).iterdir()} == before
    assert len([r for r in audit_rows(engine) if r["action"] == "tuf.keys.init"]) == 1


def test_init_prompts_for_the_passphrase_twice(settings: Settings) -> None:
    code, _, output = otacm_keys(settings, "init", stdin=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert code == 0, output
    assert KeyStore(keys_dir(settings)).root_signer(PASSPHRASE)


def test_init_takes_the_passphrase_from_the_environment(settings: Settings) -> None:
    code, _, output = otacm_keys(settings, "init", env={"OTACM_ROOT_PASSPHRASE": PASSPHRASE})
    assert code == 0, output
    assert KeyStore(keys_dir(settings)).root_signer(PASSPHRASE)


def test_init_without_a_passphrase_warns(settings: Settings, engine: Engine) -> None:
    code, _, output = otacm_keys(settings, "init", "--no-root-passphrase")
    assert code == 0, output
    assert "WITHOUT a passphrase" in output
    assert not KeyStore(keys_dir(settings)).root_encrypted()
    [entry] = [r for r in audit_rows(engine) if r["action"] == "tuf.keys.init"]
    assert entry["after"]["root_encrypted"] is False

    code, _, output = otacm_keys(
        settings, "init", "--no-root-passphrase", "--root-passphrase", PASSPHRASE
    )
    assert code == 2


def test_init_with_a_short_passphrase_leaves_nothing_behind(settings: Settings) -> None:
    code, _, output = otacm_keys(settings, "init", "--root-passphrase", "short")
    assert code == 1
    assert "at least 12 characters" in output
    assert not KeyStore(keys_dir(settings)).initialised()


def test_init_refuses_a_database_that_has_a_repository(settings: Settings, tmp_path: Path) -> None:
    assert otacm_keys(settings, "init", "--no-root-passphrase")[0] == 0
    # Same database, a fresh keys directory (a second server set up by mistake).
    other = settings.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    code, _, output = otacm_keys(other, "init", "--no-root-passphrase")
    assert code == 1
    assert "already has an image repository" in output
    assert not KeyStore(keys_dir(other)).initialised()


def test_init_sets_up_the_server_key_and_keeps_one_already_there(
    settings: Settings, tmp_path: Path
) -> None:
    """The key that confidential updates and webhook secrets are wrapped under: `keys init`
    makes it, so that nothing that only unwraps ever has to (it never does)."""
    assert otacm_keys(settings, "init", "--no-root-passphrase")[0] == 0
    key = encryption.load_server_key(keys_dir(settings))
    assert stat.S_IMODE((keys_dir(settings) / encryption.SERVER_KEY_FILE).stat().st_mode) == 0o600

    # A keys directory whose server key came first (confidential updates made before `keys
    # init` existed) keeps it: data keys are wrapped under it.
    other = settings.model_copy(
        update={"data_dir": tmp_path / "elsewhere", "database_url": f"sqlite:///{tmp_path}/o.db"}
    )
    existing = encryption.load_or_create_server_key(keys_dir(other))
    assert existing != key
    assert otacm_keys(other, "init", "--no-root-passphrase")[0] == 0
    assert encryption.load_server_key(keys_dir(other)) == existing


def test_rotate_with_a_wrong_passphrase_is_refused_and_audited(
    settings: Settings, engine: Engine
) -> None:
    assert otacm_keys(settings, "init", "--root-passphrase", PASSPHRASE)[0] == 0
    store = KeyStore(keys_dir(settings))
    before = store.public_key("timestamp").keyid

    code, _, output = otacm_keys(
        settings, "rotate", "timestamp", "--root-passphrase", "not the passphrase at all"
    )
    assert code == 1
    assert "wrong passphrase" in output
    assert store.public_key("timestamp").keyid == before
    assert root_version(engine, settings) == 1
    [entry] = [r for r in audit_rows(engine) if r["action"] == "tuf.keys.rotate"]
    assert (entry["outcome"], entry["object_id"]) == ("refused", "timestamp")
    assert "not the passphrase" not in str(entry)

    code, _, output = otacm_keys(settings, "rotate", "timestamp", stdin=f"{PASSPHRASE}\n")
    assert code == 0, output
    after = store.public_key("timestamp").keyid
    assert after != before and after in output
    assert root_version(engine, settings) == 2
    entry = [r for r in audit_rows(engine) if r["action"] == "tuf.keys.rotate"][-1]
    assert entry["outcome"] == "success"
    assert (entry["before"], entry["after"]) == (
        {"keyid": before},
        {"keyid": after, "root_version": 2},
    )

    # The director key signs the director root, shared by every vehicle's director repository.
    director_before = store.public_key("director").keyid
    code, _, output = otacm_keys(settings, "rotate", "director", "--root-passphrase", PASSPHRASE)
    assert code == 0, output
    assert store.public_key("director").keyid != director_before
    assert root_version(engine, settings) == 2, "the image root is left as it was"
    code, _, output = otacm_keys(settings, "rotate", "nonsense", "--root-passphrase", PASSPHRASE)
    assert code == 1
    assert "no 'nonsense' key signs the image repository" in output


def test_keys_commands_before_init_name_the_command(settings: Settings) -> None:
    for args in (["rotate", "timestamp"], ["refresh"], ["status"]):
        code, _, output = otacm_keys(settings, *args)
        assert code == 1, args
        assert "otacm keys init" in output, args


def test_refresh_and_status(settings: Settings, engine: Engine) -> None:
    assert otacm_keys(settings, "init", "--root-passphrase", PASSPHRASE)[0] == 0
    code, _, output = otacm_keys(settings, "refresh")
    assert code == 0, output
    assert "nothing was due" in output
    assert not [r for r in audit_rows(engine) if r["action"] == "tuf.metadata.refresh"]

    code, stdout, output = otacm_keys(settings, "status")
    assert code == 0, output
    store = KeyStore(keys_dir(settings))
    tables = ["┏" + t for t in stdout.split("┏")[1:]]
    keys_rows = table(tables[0])
    assert [(r["key"], r["key id"], r["encrypted"], r["in root"]) for r in keys_rows] == [
        ("root", store.public_key("root").keyid, "yes", "yes"),
        ("targets", store.public_key("targets").keyid, "no", "yes"),
        ("snapshot", store.public_key("snapshot").keyid, "no", "yes"),
        ("timestamp", store.public_key("timestamp").keyid, "no", "yes"),
        ("director", store.public_key("director").keyid, "no", ""),
    ]
    metadata_rows = table(tables[1])
    assert [(r["role"], r["version"], r["due"]) for r in metadata_rows] == [
        ("root", "1", ""),
        ("targets", "1", ""),
        ("snapshot", "1", ""),
        ("timestamp", "1", ""),
    ]
    assert all(r["expires"].endswith("Z") for r in metadata_rows)
