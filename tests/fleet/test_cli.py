"""`otacm fleet` and `otacm vehicles` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings
from tests.builders import jsonl, vehicle, vin

runner = CliRunner()


def otacm(settings: Settings, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--database-url", settings.resolved_database_url()])
    return result.exit_code, result.output


def test_generate_import_export(settings: Settings, tmp_path: Path) -> None:
    export = tmp_path / "fleet.csv.gz"
    result = runner.invoke(
        app,
        [
            "fleet",
            "generate",
            "--vehicles",
            "40",
            "--seed",
            "3",
            "--format",
            "csv",
            "--out",
            str(export),
        ],
    )
    assert result.exit_code == 0, result.output
    code, output = otacm(settings, "fleet", "import", str(export))
    assert code == 0, output
    assert "vehicles created" in output and "40" in output
    out = tmp_path / "registry.jsonl"
    code, output = otacm(settings, "fleet", "export", "--format", "jsonl", "--out", str(out))
    assert code == 0, output
    assert len(out.read_text().splitlines()) == 40


def test_import_with_rejections_exits_2_and_names_the_line(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl([vehicle(1), vehicle(2, country="Germany")]))
    code, output = otacm(settings, "fleet", "import", str(path))
    assert code == 2
    assert "country" in output and "Germany" in output
    code, output = otacm(settings, "fleet", "import", str(path), "--strict")
    assert code == 2 and "nothing was taken" in output


def test_unreadable_file_exits_2_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    code, output = otacm(settings, "fleet", "import", str(path))
    assert code == 2 and "empty" in output
    code, output = otacm(settings, "fleet", "import", str(tmp_path / "missing.csv"))
    assert code != 0 and "missing.csv" in output


def test_vehicle_show_and_status(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(jsonl([vehicle(1)]))
    assert otacm(settings, "fleet", "import", str(path))[0] == 0
    code, output = otacm(settings, "vehicles", "show", vin(1))
    assert code == 0 and json.loads(output)["vin"] == vin(1)
    code, output = otacm(settings, "vehicles", "set-status", vin(1), "scrapped")
    assert code == 0 and "active → scrapped" in output
    code, output = otacm(settings, "vehicles", "show", "WXA00000000000000")
    assert code == 1 and "no vehicle" in output
