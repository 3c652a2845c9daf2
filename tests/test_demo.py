"""`otacm demo`, the README's first command, runs end to end on a small fleet."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from otacm.cli import app


def test_demo_imports_a_fleet_releases_an_update_and_a_tuf_client_verifies_it(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--vehicles", "40", "--data-dir", str(tmp_path / "demo"), "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "vehicles_created" in output or "40" in output
    assert "released update 1: BCM 4.2.0" in output
    assert "(identical to the upload)" in output
    assert "API token: otacm_" in output
    # A second run starts afresh rather than tripping over the first run's keys.
    again = CliRunner().invoke(
        app, ["demo", "--vehicles", "10", "--data-dir", str(tmp_path / "demo"), "--port", "0"]
    )
    assert again.exit_code == 0, again.output
