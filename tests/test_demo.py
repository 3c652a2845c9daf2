"""`otacm demo`, the README's first command, runs end to end on a small fleet."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from otacm.cli import app
from otacm.db import make_engine
from otacm.fleet.models import Vehicle


def test_demo_imports_a_fleet_releases_an_update_and_a_tuf_client_verifies_it(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--vehicles", "40", "--data-dir", str(tmp_path / "demo"), "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    # The import's own report (its table), not the generator's "generated 40 vehicles" line.
    assert "fleet import 1: completed" in output
    assert re.search(r"vehicles created\W+40\W", output), output
    assert re.search(r"records rejected\W+0\W", output), output
    assert vehicles_in(tmp_path / "demo") == 40
    assert "released update 1: BCM 4.2.0" in output
    assert "(identical to the upload)" in output
    assert "API token: otacm_" in output
    # A second run starts afresh rather than tripping over the first run's keys.
    again = CliRunner().invoke(
        app, ["demo", "--vehicles", "10", "--data-dir", str(tmp_path / "demo"), "--port", "0"]
    )
    assert again.exit_code == 0, again.output
    assert vehicles_in(tmp_path / "demo") == 10


def vehicles_in(data_dir: Path) -> int:
    """How many vehicles the demo's database holds."""
    demo_db = make_engine(f"sqlite:///{data_dir / 'otacm.db'}")
    try:
        with demo_db.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Vehicle)) or 0)
    finally:
        demo_db.dispose()
