"""`otacm bench fleet` at a size the test suite can afford: the same code path as the
10,000-vehicle run (fleet import, `otacm serve` in its own process, a release, a campaign in
waves, the simulated fleet split over two processes, the checks of the server's records
against the vehicles' truth), with many answers lost so that events really are resent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from otacm.bench import fleet_sim
from otacm.cli import app
from otacm.simulator.fleet import FleetProgress, FleetResult, merge_progress, merge_results
from tests.conftest import BACKENDS, POSTGRES_ADMIN_URL

CHECKS = {
    "no acknowledged event lost",
    "no event recorded that no vehicle sent",
    "each event applied at most once",
    "resent events counted once",
    "tallies equal the deployment rows",
    "campaign completed, nothing left unfinished",
    "deployment states equal the vehicles' truth",
    "ECU versions equal the vehicles' truth",
    "no simulated vehicle crashed",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_simulated_fleet_completes_a_campaign_with_every_event_counted_once(
    backend: str, tmp_path: Path
) -> None:
    options = fleet_sim.BenchOptions(
        vehicles=30,
        processes=2,
        # Several workers claim the engine's work with row locks, which SQLite has not.
        workers=2 if backend == "postgresql" else 1,
        postgres_url=POSTGRES_ADMIN_URL if backend == "postgresql" else None,
        work_dir=tmp_path / "bench",
        timeout_s=120,
        poll_idle_s=1.0,
        poll_active_s=0.5,
        # One answer in eight lost: a few dozen events reach the server twice.
        lost_answer_rate=0.12,
        failure_rate=0.1,
    )
    bench = fleet_sim.run(options, "test")
    failed = [f"{c.name}: {c.detail}" for c in bench.checks if not c.ok]
    assert not failed, failed
    assert {c.name for c in bench.checks} == CHECKS
    assert bench.passed
    facts = bench.report.facts
    sent, resent, recorded = (
        int(n.replace(",", ""))
        for n in facts["events: sent / resent / recorded"].split(" (")[0].split(" / ")
    )
    assert resent > 0 and sent == recorded > 0, facts
    assert "deployments" in bench.report.markdown()
    assert list((tmp_path / "bench").iterdir()) == []  # the run's directory is removed


def test_the_bench_command_records_its_table_and_fails_on_a_timeout(tmp_path: Path) -> None:
    """A campaign that cannot complete in time (one second) is a failed check and exit 1,
    and the table is recorded all the same."""
    record = tmp_path / "results.md"
    result = CliRunner().invoke(
        app,
        [
            "bench", "fleet", "--vehicles", "12", "--processes", "1",
            "--timeout", "10", "--poll-idle", "30", "--work-dir", str(tmp_path / "w"),
            "--record", str(record),
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    text = record.read_text()
    assert "### Fleet simulation: 12 vehicles" in text
    assert "(SQLite, 1 server worker(s), 1 simulator process(es))" in text  # SQLite: 1 worker
    assert "campaign completed, nothing left unfinished: FAILED" in text


def test_results_of_several_processes_merge_into_one_fleet() -> None:
    from otacm.simulator.client import Tally, VehicleReport

    def part(vin: str, polls: int, cpu: float | None) -> FleetResult:
        tally = Tally(polls=polls, events_resent=1)
        report = VehicleReport(vin, "idle", {}, {}, tally)
        return FleetResult({vin: report}, tally, polls / 10, "stop", {}, cpu)

    merged = merge_results([part("A", 10, 1.5), part("B", 30, 2.0)])
    assert set(merged.vehicles) == {"A", "B"}
    assert (merged.totals.polls, merged.totals.events_resent) == (40, 2)
    assert merged.elapsed_s == 3.0 and merged.cpu_s == 3.5
    assert merged.stopped_because == "stop"
    assert merge_results([part("A", 1, None), part("B", 1, 1.0)]).cpu_s is None
    looks = merge_progress(
        [
            FleetProgress(1.0, 5, {"idle": 4, "offline": 1}, Tally(polls=3), 0),
            FleetProgress(2.0, 6, {"idle": 6}, Tally(polls=4), 1),
        ]
    )
    assert (looks.vehicles, looks.phases, looks.totals.polls, looks.crashed) == (
        11, {"idle": 10, "offline": 1}, 7, 1,
    )  # fmt: skip
