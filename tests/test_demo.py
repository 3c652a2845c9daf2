"""`otacm demo`, the README's first command, runs the whole mission on a small fleet."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from otacm.campaigns.models import Deployment
from otacm.cli import app
from otacm.db import make_engine
from otacm.fleet.models import Vehicle


def test_the_demo_imports_releases_launches_and_a_simulated_fleet_updates_over_the_air(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--vehicles", "400", "--data-dir", str(tmp_path / "demo"), "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    # The import's own report (its table), not the generator's "generated N vehicles" line.
    assert "fleet import 1: completed" in output
    assert re.search(r"vehicles created\W+400\W", output), output
    assert "update 1: BCM 4.2.0" in output
    assert "approved by demo-approver (four eyes)" in output
    succeeded = int(re.search(r"succeeded\W+(\d+)", output).group(1))  # type: ignore[union-attr]
    assert succeeded > 0, output
    simulated = re.search(r"ground truth: (\d+) of (\d+) simulated vehicles", output)
    assert simulated is not None and simulated.group(1) == simulated.group(2), output
    assert "DIFFERENT" not in output
    assert re.search(rf"counts {succeeded} deployments succeeded; {succeeded} simulated", output)
    assert "API token: otacm_" in output
    engine = make_engine(f"sqlite:///{tmp_path / 'demo' / 'otacm.db'}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Vehicle)) == 400
            done = conn.scalar(select(func.count()).where(Deployment.state == "succeeded"))
    finally:
        engine.dispose()
    assert done == succeeded
