"""The fleet runner on its own: its knobs, and each way a run ends (no otacm server needed)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from otacm.simulator.cli import simulate
from otacm.simulator.client import Tally
from otacm.simulator.fleet import Fleet, FleetOptions, FleetResult, run_fleet, sum_tallies
from otacm.simulator.records import EcuRecord, ProvisioningRecord
from tests.simulator.file_server import serving

RECORDS = [
    ProvisioningRecord(
        vin=f"WVWZZZ1KZ6W00000{n}",
        token=f"otv_{n}",
        ecus=(EcuRecord(f"BCM-{n}", "BCM", "5Q0937084", "4.1.0"),),
    )
    for n in range(4)
]


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def quiet(tmp_path: Path, **changes: object) -> FleetOptions:
    return FleetOptions(work_dir=tmp_path, live=False, start_rate=None, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"failure_rate": 1.5},
        {"offline_rate": -0.1},
        {"postpone_rate": 0.7, "decline_rate": 0.5},
        {"time_scale": 0.0},
        {"install_s": (10.0, 1.0)},
        {"offline_s": (5.0, 1.0)},
        {"cpu_slots": 0},
        {"start_rate": 0.0},
    ],
)
def test_knobs_that_make_no_sense_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FleetOptions(**changes)


def test_tallies_add_up_counts_and_leave_the_rest() -> None:
    total = sum_tallies([Tally(installs=2, retries=1, last_error="a"), Tally(installs=3)])
    assert (total.installs, total.retries, total.last_error) == (5, 1, "")


def test_a_run_ends_after_its_duration_even_when_the_server_never_answers(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = run_fleet(RECORDS, closed_port(), quiet(tmp_path, duration_s=0.5))
    assert time.monotonic() - started < 5
    assert result.stopped_because == "ran for 0.5 s"
    # The factory step (fetching the trusted roots) never succeeded: nothing ran.
    assert set(result.crashed) == {r.vin for r in RECORDS}
    assert all(why.startswith("not provisioned: ") for why in result.crashed.values())
    assert result.vehicles == {}


def test_a_run_ends_when_every_vehicle_has_ended(tmp_path: Path) -> None:
    # Every request answers 401: a refused credential ends a vehicle for good.
    with serving({}) as server:
        server.faults.required_header = ("Authorization", "Bearer nobody")
        result = run_fleet(RECORDS[:2], server.url, quiet(tmp_path, duration_s=30.0))
    assert result.stopped_because == "every vehicle ended"
    assert all("401" in why for why in result.crashed.values()), result.crashed


def test_stop_when_is_asked_with_the_progress(tmp_path: Path) -> None:
    seen: list[int] = []

    def enough(progress: object) -> bool:
        seen.append(getattr(progress, "vehicles", -1))
        return len(seen) == 2

    result = run_fleet(RECORDS, closed_port(), quiet(tmp_path, duration_s=30.0), stop_when=enough)
    assert result.stopped_because == "the stop condition was met"
    assert seen == [len(RECORDS), len(RECORDS)]


def test_stop_from_another_thread_ends_the_run(tmp_path: Path) -> None:
    fleet = Fleet(RECORDS, closed_port(), quiet(tmp_path, vehicles=3))
    results: list[FleetResult] = []
    runner = threading.Thread(target=lambda: results.append(asyncio.run(fleet.run())))
    runner.start()
    time.sleep(0.3)
    assert fleet.progress().vehicles == 3  # the first three records only
    fleet.stop("enough")
    runner.join(timeout=15)
    assert not runner.is_alive()
    assert results[0].stopped_because == "enough"


def write_records(path: Path, records: list[ProvisioningRecord]) -> Path:
    lines = [
        json.dumps({"vin": r.vin, "token": r.token, "ecus": [asdict(e) for e in r.ecus]})
        for r in records
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_cli_runs_the_fleet_and_writes_the_ground_truth(tmp_path: Path) -> None:
    credentials = write_records(tmp_path / "vehicles.jsonl", RECORDS)
    report = tmp_path / "truth.json"
    result = CliRunner().invoke(
        cli_app(),
        [
            "simulate", str(credentials), "--server", closed_port(), "--vehicles", "2",
            "--duration", "0.5", "--work-dir", str(tmp_path / "fleet"), "--report", str(report),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stopped: ran for 0.5 s" in result.output
    truth = json.loads(report.read_text())
    assert truth["stopped_because"] == "ran for 0.5 s"
    assert sorted(truth["crashed"]) == [r.vin for r in RECORDS[:2]]
    assert truth["vehicles"] == {}


def test_the_cli_splits_the_fleet_over_processes_and_merges_the_ground_truth(
    tmp_path: Path,
) -> None:
    credentials = write_records(tmp_path / "vehicles.jsonl", RECORDS)
    report = tmp_path / "truth.json"
    result = CliRunner().invoke(
        cli_app(),
        [
            "simulate", str(credentials), "--server", closed_port(), "--vehicles", "2",
            "--processes", "2", "--duration", "0.5", "--work-dir", str(tmp_path / "fleet"),
            "--report", str(report),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    truth = json.loads(report.read_text())
    # One vehicle in each process; both are reported, each by the process that ran it.
    assert truth["stopped_because"] == "ran for 0.5 s"
    assert sorted(truth["crashed"]) == sorted(r.vin for r in RECORDS[:2])
    assert truth["cpu_s"] is not None and truth["cpu_s"] > 0


def test_the_cli_refuses_a_bad_credentials_file_naming_the_line(tmp_path: Path) -> None:
    credentials = write_records(tmp_path / "vehicles.jsonl", RECORDS[:1])
    with credentials.open("a") as out:
        out.write('{"vin": "X"}\n')
    result = CliRunner().invoke(
        cli_app(), ["simulate", str(credentials), "--server", closed_port()]
    )
    assert result.exit_code == 2
    assert "vehicles.jsonl:2" in " ".join(result.output.split())


def cli_app() -> typer.Typer:
    """`otacm simulate` on its own: the command as `otacm.cli` registers it."""
    app = typer.Typer()
    app.command()(simulate)

    @app.callback()
    def main() -> None:  # a group, so that the command is called by name as under `otacm`
        pass

    return app


def test_a_stop_condition_that_fails_ends_the_run_saying_why(tmp_path: Path) -> None:
    def broken(progress: object) -> bool:
        raise LookupError("no such campaign")

    result = run_fleet(RECORDS, closed_port(), quiet(tmp_path, duration_s=30.0), stop_when=broken)
    assert result.stopped_because == "the stop condition failed: LookupError: no such campaign"
