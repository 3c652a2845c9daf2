"""A fleet import killed mid-way leaves whole vehicles only, on every engine."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, func, select

from otacm.config import Settings
from otacm.fleet.generator import write_export
from otacm.fleet.importer import run_import
from otacm.fleet.models import Ecu, FleetImport, Vehicle
from otacm.fleet.parser import open_export
from otacm.fleet.records import validate_record
from tests.builders import jsonl, vehicle


def test_killed_import_keeps_whole_vehicles(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    export = tmp_path / "fleet.jsonl"
    with export.open("w") as out:
        write_export(out, 6000, 11, "jsonl")
    expected = {
        r.vin: len(r.ecus)
        for raw in open_export(io.BytesIO(export.read_bytes()), 1 << 20).records
        if (r := validate_record(raw, settings.vin_check_digit)) is not None
    }
    # A registry that holds a vehicle is imported into batch by batch (an empty one is loaded
    # in one transaction: tests/fleet/test_first_load.py).
    seed = vehicle(1)
    run_import(engine, io.BytesIO(jsonl([seed])), settings=settings, source_name="seed")
    expected[seed["vin"]] = len(seed["ecus"])
    env = {**os.environ, "OTACM_IMPORT_BATCH_SIZE": "200"}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otacm.bench._import_child",
            settings.resolved_database_url(),
            str(export),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(Vehicle)).scalar_one() > 400:
                    break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Vehicle.vin, func.count(Ecu.id))
            .outerjoin(Ecu, Ecu.vehicle_id == Vehicle.id)  # a vehicle without ECUs counts 0
            .group_by(Vehicle.vin)
        )
        stored = {vin: ecus for vin, ecus in rows}
    assert 1 + 400 <= len(stored) < len(expected), "the import was not cut off mid-way"
    assert all(stored[vin] == expected[vin] for vin in stored), "a vehicle was half written"

    # The next import finds the registry consistent and finishes the job.
    with export.open("rb") as stream:
        report = run_import(engine, stream, settings=settings, source_name="again")
    assert report.status == "completed"
    assert report.counts.vehicles_created == len(expected) - len(stored)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            statuses = conn.execute(select(FleetImport.status).order_by(FleetImport.id))
            assert list(statuses.scalars()) == ["completed", "interrupted", "completed"]


def test_two_imports_at_once_both_finish_and_agree(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Two server processes importing at the same time (here: two threads, two connections
    each) must not collide: PostgreSQL serialises them with an advisory lock, SQLite with its
    write lock and the id allocation table."""
    import threading

    settings = settings.model_copy(update={"import_batch_size": 100})
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # The same export twice: every VIN and serial in both files, so that imports planned side
    # by side would both create the same vehicles.
    with first.open("w") as out:
        write_export(out, 1500, 21, "jsonl")
    second.write_bytes(first.read_bytes())
    reports: dict[str, object] = {}

    def load(path: Path) -> None:
        with path.open("rb") as stream:
            reports[path.name] = run_import(
                engine, stream, settings=settings, source_name=path.name
            )

    threads = [threading.Thread(target=load, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert {name: getattr(r, "status", r) for name, r in reports.items()} == {
        "a.jsonl": "completed",
        "b.jsonl": "completed",
    }
    with engine.connect() as conn:
        vehicles = conn.execute(select(func.count()).select_from(Vehicle)).scalar_one()
        ids = conn.execute(select(func.count(func.distinct(Vehicle.id)))).scalar_one()
    assert vehicles == ids == 1500
    created = sum(r.counts.vehicles_created for r in reports.values())
    assert created == 1500
