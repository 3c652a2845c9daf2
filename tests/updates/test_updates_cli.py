"""`otacm updates` as an engineer runs it at the terminal (on the database directly)."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Engine
from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings, get_settings
from otacm.security import encryption
from otacm.updates import cli as updates_cli
from otacm.updates.storage import LocalStorage
from tests.builders import update_document
from tests.security.helpers import table
from tests.updates.helpers import (
    ARTIFACTS,
    AUDIT,
    UPDATES,
    audit_actions,
    catalog_state,
    mark_released,
    rows,
    set_updated_at,
    stored_bytes,
    stored_files,
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI's settings come from the environment: point its data directory (and so its
    artifact storage) at the test's."""
    monkeypatch.setenv("OTACM_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    yield settings.data_dir
    get_settings.cache_clear()


def otacm(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    """Run `otacm ARGS --database-url ...` with OTACM_* `env`; (exit code, stdout, all output)."""
    get_settings.cache_clear()  # settings are read once per process otherwise
    result = runner.invoke(
        app,
        [*args, "--database-url", settings.resolved_database_url()],
        env={"COLUMNS": "250", **{f"OTACM_{k.upper()}": v for k, v in env.items()}},
    )
    get_settings.cache_clear()
    return result.exit_code, result.stdout, result.output


def document(tmp_path: Path, name: str = "update.json", **overrides: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(update_document(**overrides)))
    return path


def create(settings: Settings, tmp_path: Path, **overrides: Any) -> int:
    code, stdout, output = otacm(
        settings, "updates", "create", str(document(tmp_path, **overrides))
    )
    assert code == 0, output
    return int(stdout.strip())


def firmware(tmp_path: Path, size: int, name: str = "bcm.bin", seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(hashlib.shake_256(seed.to_bytes(4, "big")).digest(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_show_edit_and_list(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    code, stdout, output = otacm(settings, "updates", "create", str(document(tmp_path)))
    assert code == 0, output
    update_id = int(stdout.strip())  # stdout carries the id alone: easy to script
    assert f"created draft update {update_id}: BCM comfort fixes 4.2.0" in output

    code, stdout, output = otacm(settings, "updates", "show", str(update_id))
    assert code == 0, output
    shown = json.loads(stdout)
    assert shown["state"] == "draft" and shown["created_by"] == f"cli:{getpass.getuser()}"
    for name, value in update_document().items():
        if isinstance(value, dict):
            assert value.items() <= shown[name].items(), name
        elif name != "dependencies":
            assert shown[name] == value, name

    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"version": "4.2.1", "install_order": 5}))
    code, _, output = otacm(settings, "updates", "edit", str(update_id), str(changes))
    assert code == 0, output
    assert f"changed install_order, version of update {update_id}" in output
    _, stdout, _ = otacm(settings, "updates", "show", str(update_id))
    assert json.loads(stdout)["version"] == "4.2.1" and json.loads(stdout)["install_order"] == 5

    other = create(
        settings,
        tmp_path,
        name="BMS balancing",
        ecu_type="BMS",
        version="2.10.0",
        dependencies=[],
        compatible_models=["Castellan"],
    )
    code, stdout, output = otacm(settings, "updates", "list")
    assert code == 0, output
    listed = table(stdout)
    assert [(r["id"], r["ecu"], r["version"], r["state"], r["files"]) for r in listed] == [
        (str(update_id), "BCM", "4.2.1", "draft", "0"),
        (str(other), "BMS", "2.10.0", "draft", "0"),
    ]
    _, stdout, _ = otacm(settings, "updates", "list", "--ecu-type", "bms", "--state", "draft")
    assert [r["id"] for r in table(stdout)] == [str(other)]
    _, stdout, _ = otacm(settings, "updates", "list", "--model", "Nordra")
    assert [r["id"] for r in table(stdout)] == [str(update_id)]
    _, stdout, _ = otacm(settings, "updates", "list", "--state", "released")
    assert table(stdout) == []

    cli_entries = [r for r in rows(engine, AUDIT) if r["actor"] == f"cli:{getpass.getuser()}"]
    assert [r["action"] for r in cli_entries] == ["update.create", "update.edit", "update.create"]


def test_invalid_documents_are_refused_naming_the_field(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    create(settings, tmp_path)
    before = catalog_state(engine)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{name: 1")
    a_list = tmp_path / "list.json"
    a_list.write_text("[]")
    for path, code_expected, message in [
        (document(tmp_path, "years.json", model_year_min=2030), 2, "model_year_max"),
        (document(tmp_path, "fuel.json", fuel_types=["steam"]), 2, "fuel_types"),
        (document(tmp_path, "extra.json", colour="red"), 2, "colour"),
        (bad_json, 2, "bad.json"),
        (a_list, 2, "expected a JSON object"),
        (tmp_path / "missing.json", 2, "missing.json"),
        (document(tmp_path, "again.json"), 1, "already is BCM 5Q0937084AC version 4.2.0"),
    ]:
        code, stdout, output = otacm(settings, "updates", "create", str(path))
        assert code == code_expected, output
        assert message in output, output
        assert stdout.strip() == "" or code == 2
    assert catalog_state(engine) == before


def test_edit_refusals(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    update_id = create(settings, tmp_path)
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"model_year_max": 1900}))
    code, _, output = otacm(settings, "updates", "edit", str(update_id), str(changes))
    assert code == 2 and "model_year_max" in output
    changes.write_text(json.dumps({"model_year_max": 2021}))  # below the stored minimum
    code, _, output = otacm(settings, "updates", "edit", str(update_id), str(changes))
    assert code == 1 and "model_year_max 2021 is below model_year_min 2022" in output
    code, _, output = otacm(settings, "updates", "edit", "999", str(changes))
    assert code == 1 and "there is no software update 999" in output
    mark_released(engine, update_id)
    before = catalog_state(engine)
    changes.write_text(json.dumps({"release_notes": "new"}))
    code, _, output = otacm(settings, "updates", "edit", str(update_id), str(changes))
    assert code == 1 and "released updates never change" in output
    assert catalog_state(engine) == before


def test_upload_streams_a_file_into_staging(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    update_id = create(settings, tmp_path)
    path = firmware(tmp_path, 6 * 1024 * 1024 + 5)  # more than one read of the file
    code, _, output = otacm(
        settings, "updates", "upload", str(update_id), str(path), "--sha256", sha256(path)
    )
    assert code == 0, output
    assert f"uploaded bcm.bin to update {update_id}: {path.stat().st_size} bytes" in output
    assert sha256(path) in output

    path2 = firmware(tmp_path, 1000, "local-name.hex", 2)
    code, _, output = otacm(
        settings, "updates", "upload", str(update_id), str(path2), "--name", "calibration.hex"
    )
    assert code == 0, output
    [first, second] = rows(engine, ARTIFACTS)
    assert (first["filename"], second["filename"]) == ("bcm.bin", "calibration.hex")
    assert first["sha256"] == first["plaintext_sha256"] == sha256(path)
    assert first["uploaded_by"] == f"cli:{getpass.getuser()}"
    assert stored_bytes(settings, first["storage_key"]) == path.read_bytes()
    assert stored_files(settings) == sorted([first["storage_key"], second["storage_key"]])
    assert audit_actions(engine, update_id)[-2:] == ["update.artifact.upload"] * 2

    _, stdout, _ = otacm(settings, "updates", "show", str(update_id))
    assert [a["filename"] for a in json.loads(stdout)["artifacts"]] == [
        "bcm.bin",
        "calibration.hex",
    ]


def test_upload_to_a_confidential_update_is_stored_encrypted(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    update_id = create(settings, tmp_path, confidential=True)
    path = firmware(tmp_path, 200_000)
    code, _, output = otacm(settings, "updates", "upload", str(update_id), str(path))
    assert code == 0, output
    assert "(stored encrypted)" in output
    [row] = rows(engine, ARTIFACTS)
    assert row["encrypted"] is True and row["plaintext_sha256"] == sha256(path)
    assert row["length"] == encryption.encrypted_size(200_000)
    stored = stored_bytes(settings, row["storage_key"])
    assert hashlib.sha256(stored).hexdigest() == row["sha256"]


def test_upload_refusals_leave_nothing_behind(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    update_id = create(settings, tmp_path)
    released = create(settings, tmp_path, version="4.1.0")
    mark_released(engine, released)
    path = firmware(tmp_path, 300_000)
    for args, env, message in [
        (["--sha256", "0" * 64], {}, "not the declared"),
        (["--sha256", "xyz"], {}, "64 hexadecimal digits"),
        (["--name", "../../etc/passwd"], {}, "is a path"),
        (["--name", "bcm\x1b.bin"], {}, "control characters"),
        (["--name", ".bcm"], {}, "must start with a letter or digit"),
        ([], {"artifact_max_bytes": "1000"}, "the limit is 1000"),
    ]:
        code, _, output = otacm(
            settings, "updates", "upload", str(update_id), str(path), *args, **env
        )
        assert code == 1, (args, output)
        assert message in output, (args, output)
    code, _, output = otacm(settings, "updates", "upload", str(released), str(path))
    assert code == 1 and "released updates never change" in output
    code, _, output = otacm(settings, "updates", "upload", "999", str(path))
    assert code == 1 and "there is no software update 999" in output
    code, _, output = otacm(settings, "updates", "upload", str(update_id), str(tmp_path / "nope"))
    assert code == 2
    assert rows(engine, ARTIFACTS) == [] and stored_files(settings) == []

    assert otacm(settings, "updates", "upload", str(update_id), str(path))[0] == 0
    before = catalog_state(engine), stored_files(settings)
    code, _, output = otacm(settings, "updates", "upload", str(update_id), str(path))
    assert code == 1 and "already has a file named 'bcm.bin'" in output
    assert (catalog_state(engine), stored_files(settings)) == before


def test_release_of_an_incomplete_draft_says_what_is_missing(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    update_id = create(settings, tmp_path, release_notes="", support={})
    before = catalog_state(engine)
    code, _, output = otacm(settings, "updates", "release", str(update_id))
    assert code == 1, output
    assert "missing: artifacts, release_notes, support.contact" in output
    assert catalog_state(engine) == before
    assert rows(engine, UPDATES)[0]["state"] == "draft"


def test_withdraw(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    update_id = create(settings, tmp_path)
    code, _, output = otacm(settings, "updates", "withdraw", str(update_id), "--reason", "bad")
    assert code == 1 and "only released updates can be withdrawn" in output
    mark_released(engine, update_id)
    code, _, output = otacm(settings, "updates", "withdraw", str(update_id))
    assert code == 2 and "--reason" in output
    code, _, output = otacm(settings, "updates", "withdraw", str(update_id), "--reason", " ")
    assert code == 2 and "reason" in output
    assert rows(engine, UPDATES)[0]["state"] == "released"

    code, _, output = otacm(
        settings, "updates", "withdraw", str(update_id), "--reason", "Bricks hardware B1"
    )
    assert code == 0, output
    [row] = rows(engine, UPDATES)
    assert (row["state"], row["withdrawal_reason"]) == ("withdrawn", "Bricks hardware B1")
    assert row["withdrawn_by"] == f"cli:{getpass.getuser()}"
    assert audit_actions(engine, update_id)[-1] == "update.withdraw"


def test_cleanup_staging(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    abandoned = create(settings, tmp_path, version="4.2.0")
    active = create(settings, tmp_path, version="4.3.0")
    for update_id in (abandoned, active):
        path = firmware(tmp_path, 1000, f"fw-{update_id}.bin")
        assert otacm(settings, "updates", "upload", str(update_id), str(path))[0] == 0
    set_updated_at(engine, abandoned, timedelta(days=8))
    # An upload cut off by a crash: staged, never attached, and old.
    orphan = "staging/0123456789abcdef"
    with LocalStorage(settings.resolved_storage_path()).writer(orphan) as writer:
        writer.write(b"partial")
        writer.commit()
    old = time.time() - 8 * 86400
    os.utime(Path(settings.resolved_storage_path(), *orphan.split("/")), (old, old))

    code, _, output = otacm(settings, "updates", "cleanup-staging")
    assert code == 0, output
    assert "removed 1 staged files of abandoned drafts and 1 unreferenced staged objects" in output
    [kept] = rows(engine, ARTIFACTS)
    assert kept["update_id"] == active
    assert stored_files(settings) == [kept["storage_key"]]

    # The age comes from the settings (OTACM_STAGING_MAX_AGE).
    code, _, output = otacm(settings, "updates", "cleanup-staging", staging_max_age="PT0S")
    assert code == 0 and "removed 1 staged files" in output, output
    assert rows(engine, ARTIFACTS) == [] and stored_files(settings) == []


def test_upload_shows_a_progress_bar_on_a_terminal(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Console(stderr=True, force_terminal=True, force_interactive=True, width=120)
    monkeypatch.setattr(updates_cli, "console", terminal)
    update_id = create(settings, tmp_path)
    path = firmware(tmp_path, 9 * 1024 * 1024)
    code, _, output = otacm(settings, "updates", "upload", str(update_id), str(path))
    assert code == 0, output
    assert "9.4/9.4 MB" in output, output
