"""An import into an empty registry is loaded as one transaction (`importer._FirstLoad`).

It must give exactly what the batch path gives (registry, ECU history, report, rejections),
give way to the batch path when a VIN or serial comes again in a later batch, and leave the
registry empty, with its indexes, when it is interrupted.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text

from otacm.config import Settings
from otacm.db import make_engine
from otacm.fleet import _bulk, importer
from otacm.fleet.generator import write_export
from otacm.fleet.importer import ImportReport, run_import
from otacm.fleet.models import Ecu, EcuHistory, FleetImport, FleetImportRejection, Vehicle
from tests.builders import csv_bytes, ecu, gz, jsonl, vehicle, vin


def run(engine: Engine, settings: Settings, data: bytes, **kwargs: Any) -> ImportReport:
    return run_import(engine, io.BytesIO(data), settings=settings, source_name="test", **kwargs)


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def registry(engine: Engine) -> dict[str, Any]:
    """The registry's contents, keyed by VIN and serial: ids, import ids and the times of
    writing differ from one import to the next by nature."""
    vehicle_columns = [
        c
        for c in Vehicle.__table__.columns
        if c.name not in ("id", "import_id", "created_at", "updated_at")
    ]
    ecu_columns = [
        c
        for c in Ecu.__table__.columns
        if c.name not in ("id", "vehicle_id", "import_id", "updated_at")
    ]
    with engine.connect() as conn:
        vehicles = conn.execute(select(*vehicle_columns).order_by(Vehicle.vin)).all()
        ecus = conn.execute(
            select(Vehicle.vin, *ecu_columns)
            .join(Vehicle, Vehicle.id == Ecu.vehicle_id)
            .order_by(Ecu.serial)
        ).all()
        # The ECUs of each vehicle in the order they were written (the export's order).
        order = conn.execute(
            select(Vehicle.vin, Ecu.serial)
            .join(Vehicle, Vehicle.id == Ecu.vehicle_id)
            .order_by(Vehicle.id, Ecu.id)
        ).all()
        history = conn.execute(select(func.count()).select_from(EcuHistory)).scalar_one()
    return {"vehicles": vehicles, "ecus": ecus, "order": order, "history": history}


def outcome(engine: Engine, report: ImportReport) -> dict[str, Any]:
    with engine.connect() as conn:
        stored = conn.execute(
            select(
                FleetImportRejection.line,
                FleetImportRejection.vin,
                FleetImportRejection.field,
                FleetImportRejection.reason,
            )
            .where(FleetImportRejection.import_id == report.import_id)
            .order_by(FleetImportRejection.id)
        ).all()
        row = conn.execute(
            select(FleetImport.status, FleetImport.counts).where(FleetImport.id == report.import_id)
        ).one()
    return {
        "status": report.status,
        "exit_code": report.exit_code,
        "summary": report.summary(),
        "rejections": [(r.line, r.vin, r.field, r.reason) for r in report.rejections],
        "stored_rejections": [tuple(r) for r in stored],
        "row": (row.status, row.counts),
        "registry": registry(engine),
    }


def empty_registry(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ("ecu_history", "ecus", "vehicles", "id_allocations"):
            conn.execute(text(f"DELETE FROM {table}"))


def indexes(engine: Engine) -> dict[str, Any]:
    found = inspect(engine)
    return {
        table: (
            sorted(
                (i["name"], tuple(i["column_names"]), i["unique"]) for i in found.get_indexes(table)
            ),
            sorted(
                (u["name"], tuple(u["column_names"])) for u in found.get_unique_constraints(table)
            ),
            found.get_pk_constraint(table)["constrained_columns"],
        )
        for table in ("vehicles", "ecus", "ecu_history")
    }


def both_ways(
    engine: Engine,
    settings: Settings,
    data: bytes,
    monkeypatch: pytest.MonkeyPatch,
    **kwargs: Any,
) -> tuple[ImportReport, dict[str, Any], dict[str, Any]]:
    """Import `data` into the empty registry as a first load, then again into the emptied
    registry on the batch path; the first load's report and both outcomes."""
    first = run(engine, settings, data, **kwargs)
    loaded = outcome(engine, first)
    empty_registry(engine)
    with monkeypatch.context() as patch:
        patch.setattr(_bulk.Registry, "is_empty", lambda self: False)
        batched = run(engine, settings, data, **kwargs)
    assert not batched.first_load
    return first, loaded, outcome(engine, batched)


def mixed_records() -> list[dict[str, Any]]:
    """Good and bad records, repeats within the file, unknown fields."""
    return [
        vehicle(1, paint="red"),
        vehicle(2, fuel_type="steam"),  # rejected: enumeration
        vehicle(3, ecus=[ecu("X-1", protocol="USB")]),  # rejected: an ECU's protocol
        vehicle(4),
        vehicle(1, paint="red"),  # identical repeat: restates
        vehicle(4, model="Other"),  # repeat with other data: rejected
        vehicle(5, ecus=[ecu("BCM-000001")]),  # serial of vehicle 1: rejected
        vehicle(6, ecus=[ecu("BCM-000002")]),  # serial of a rejected record: taken
        vehicle(7, ecus=[]),
        vehicle(8, vin="NOT-A-VIN"),
        vehicle(9, exported_at="2025-03-02T00:00:00"),  # no offset: rejected
        *(vehicle(n) for n in range(10, 30)),
    ]


@pytest.mark.parametrize(
    "encode",
    [jsonl, lambda r: csv_bytes(r, extra_columns=["paint"]), lambda r: gz(jsonl(r))],
    ids=["jsonl", "csv", "jsonl.gz"],
)
def test_first_load_gives_what_the_batch_path_gives(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, encode: Any
) -> None:
    data = encode(mixed_records())
    first, loaded, batched = both_ways(engine, settings, data, monkeypatch)
    assert first.first_load
    assert loaded == batched
    # The comparison has something to compare (CSV has no row for the vehicle without ECUs).
    assert first.counts.vehicles_created >= 23 and first.records_rejected == 6
    assert {"paint": "red"} in [v.attributes for v in loaded["registry"]["vehicles"]]


# A first load parsed by worker processes, whatever the file's size.
IN_WORKERS = {"import_parallel_min_bytes": 0, "import_workers": 2}


def awkward_records() -> list[dict[str, Any]]:
    """Values COPY's text format must escape, and a calibration id left out."""
    return [
        vehicle(40, paint="back\\slash\ttab \u00e9", model="A\\B"),
        vehicle(
            41,
            ecus=[
                ecu("BCM-\\41", hardware_version="B\\2"),
                ecu("BMS-000041", "BMS", calibration_id=None),
            ],
        ),
        vehicle(42, rxswin="R\\1", vehicle_public_key="key\\"),
    ]


@pytest.mark.parametrize("encode", [jsonl, lambda r: gz(jsonl(r))], ids=["jsonl", "jsonl.gz"])
def test_first_load_in_worker_processes_gives_what_the_batch_path_gives(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, encode: Any
) -> None:
    # Chunks of 7 lines: the repeats of `mixed_records` fall within the first one.
    settings = settings.model_copy(update={**IN_WORKERS, "import_batch_size": 7})
    records = [*mixed_records(), *awkward_records(), *(vehicle(n) for n in range(50, 70))]
    first, loaded, batched = both_ways(engine, settings, encode(records), monkeypatch)
    assert first.first_load and first.workers == 2 and loaded == batched
    assert first.counts.vehicles_created >= 46 and first.records_rejected == 6
    stored = {v.vin: v for v in loaded["registry"]["vehicles"]}
    assert stored[vin(40)].attributes == {"paint": "back\\slash\ttab \u00e9"}
    assert stored[vin(40)].model == "A\\B" and stored[vin(42)].rxswin == "R\\1"
    serials = {e.serial: e for e in loaded["registry"]["ecus"]}
    assert serials["BCM-\\41"].hardware_version == "B\\2"
    assert serials["BMS-000041"].calibration_id is None


def test_first_load_in_worker_processes_hands_over_on_a_repeat_in_a_later_chunk(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={**IN_WORKERS, "import_batch_size": 2})
    records = [vehicle(1), vehicle(2), vehicle(3, ecus=[ecu("BCM-000001")]), vehicle(4)]
    first, loaded, batched = both_ways(engine, settings, jsonl(records), monkeypatch)
    assert not first.first_load and loaded == batched
    assert len(loaded["registry"]["vehicles"]) == 3


def test_first_load_in_worker_processes_reports_a_cut_gzip(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.model_copy(update={**IN_WORKERS, "import_batch_size": 10})
    data = gz(jsonl([vehicle(i) for i in range(1, 200)]))
    cut = data[: len(data) // 2]
    whole_lines = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    report = run(engine, settings, cut)
    assert report.first_load and report.workers == 2 and report.exit_code == 2
    assert report.rejections[-1].line == whole_lines + 1
    assert "gzip data ends" in report.rejections[-1].reason
    assert report.counts.vehicles_created == count(engine, Vehicle) == whole_lines


def test_strict_first_load_takes_nothing_if_any_record_is_bad(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = indexes(engine)
    first, loaded, batched = both_ways(
        engine, settings, jsonl(mixed_records()), monkeypatch, strict=True
    )
    assert first.first_load and loaded == batched
    assert first.status == "rejected" and loaded["registry"]["vehicles"] == []
    assert indexes(engine) == before


def test_strict_first_load_of_good_records_takes_them_all(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = jsonl([vehicle(n) for n in range(1, 20)])
    first, loaded, batched = both_ways(engine, settings, data, monkeypatch, strict=True)
    assert first.first_load and first.status == "completed" and loaded == batched
    assert len(loaded["registry"]["vehicles"]) == 19


@pytest.mark.parametrize(
    "records",
    [
        [vehicle(1), vehicle(2), vehicle(1)],
        [vehicle(1), vehicle(2), vehicle(1, model="Other")],
        [vehicle(1), vehicle(2), vehicle(3, ecus=[ecu("BCM-000001")])],
        # Rejected within its batch (VIN 3 with other data), the record also names a serial
        # of the first batch: the batch path reports the serial.
        [
            vehicle(1),
            vehicle(2),
            vehicle(3),
            vehicle(3, model="Other", ecus=[ecu("BCM-000001"), ecu("X-3")]),
        ],
    ],
    ids=["same VIN restated", "same VIN other data", "same serial", "rejected, same serial"],
)
def test_a_repeat_across_batches_hands_over_to_the_batch_path(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, records: Any
) -> None:
    settings = settings.model_copy(update={"import_batch_size": 2})
    before = indexes(engine)
    first, loaded, batched = both_ways(engine, settings, jsonl(records), monkeypatch)
    assert not first.first_load
    assert loaded == batched and len(loaded["registry"]["vehicles"]) in (2, 3)
    assert indexes(engine) == before


def test_first_load_keeps_the_indexes_and_the_id_allocation(
    engine: Engine, settings: Settings
) -> None:
    before = indexes(engine)
    report = run(engine, settings, jsonl([vehicle(n) for n in range(1, 11)]))
    assert report.first_load and report.status == "completed"
    assert indexes(engine) == before
    # A later import allocates ids above those the first load used.
    later = run(engine, settings, jsonl([vehicle(n) for n in range(11, 21)]))
    assert not later.first_load and later.counts.vehicles_created == 10
    with engine.connect() as conn:
        ids = conn.execute(select(Vehicle.id)).scalars().all()
    assert len(set(ids)) == 20


def test_a_registry_that_holds_a_vehicle_is_imported_batch_by_batch(
    engine: Engine, settings: Settings
) -> None:
    run(engine, settings, jsonl([vehicle(100)]))
    report = run(engine, settings, jsonl([vehicle(1), vehicle(2)]))
    assert not report.first_load and report.counts.vehicles_created == 2


def test_interrupted_first_load_leaves_the_registry_empty(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.model_copy(update={"import_batch_size": 3})
    before = indexes(engine)

    def stop_after_two_batches(report: ImportReport) -> None:
        if report.records_read >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            engine,
            settings,
            jsonl([vehicle(i) for i in range(1, 10)]),
            on_batch=stop_after_two_batches,
        )
    assert count(engine, Vehicle) == count(engine, Ecu) == 0
    assert count(engine, FleetImportRejection) == 0
    assert indexes(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(FleetImport.status)).scalar() == "failed"
    # The next import finds the registry empty and takes everything.
    report = run(engine, settings, jsonl([vehicle(i) for i in range(1, 10)]))
    assert report.first_load and report.counts.vehicles_created == 9


def test_first_load_failing_at_its_end_leaves_the_registry_empty(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = indexes(engine)

    def lost(self: Any, work_mem: str) -> None:
        raise ConnectionError("connection lost")

    monkeypatch.setattr(_bulk.Registry, "rebuild_indexes", lost)
    with pytest.raises(ConnectionError):
        run(engine, settings, jsonl([vehicle(1), vehicle(2, paint="blue")]))
    assert count(engine, Vehicle) == count(engine, Ecu) == 0
    assert indexes(engine) == before


CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from otacm.config import Settings
    from otacm.db import make_engine
    from otacm.fleet.importer import run_import

    url, path, marker = sys.argv[1:]

    def pause_after_two_batches(report):
        if report.records_read >= 400:
            Path(marker).write_text("loading")
            time.sleep(600)

    with open(path, "rb") as stream:
        run_import(
            make_engine(url), stream, settings=Settings(database_url=url, import_batch_size=200),
            source_name="killed", on_batch=pause_after_two_batches,
        )
    """
)


def test_killed_first_load_leaves_the_registry_empty(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    export = tmp_path / "fleet.jsonl"
    with export.open("w") as out:
        write_export(out, 1000, 5, "jsonl")
    before = indexes(engine)
    marker = tmp_path / "loading"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, settings.resolved_database_url(), str(export), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the first load did not get under way"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert count(engine, Vehicle) == count(engine, Ecu) == 0
    assert indexes(engine) == before
    with export.open("rb") as stream:
        report = run_import(engine, stream, settings=settings, source_name="again")
    assert report.first_load and report.status == "completed"
    assert report.counts.vehicles_created == 1000


def test_first_load_gives_way_to_readers_that_hold_the_tables(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a first load waits a bounded time for the exclusive table lock, then
    imports batch by batch beside the reader (SQLite readers never block its writer)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite readers do not hold table locks")
    monkeypatch.setattr(importer, "FIRST_LOAD_LOCK_TIMEOUT_S", 0.2)
    with engine.connect() as reader:
        reader.execute(select(func.count()).select_from(Vehicle)).scalar_one()
        assert reader.in_transaction()
        report = run(engine, settings, jsonl([vehicle(1), vehicle(2)]))
    assert not report.first_load and report.counts.vehicles_created == 2


def test_readers_see_the_registry_as_it_was_until_a_first_load_commits(
    engine: Engine, settings: Settings
) -> None:
    """No one sees part of a first load: the vehicle count read during it is 0."""
    seen: list[int] = []
    done = threading.Event()

    def look(report: ImportReport) -> None:
        # A reader with a short wait: on PostgreSQL it waits for the table lock, and gives up.
        def read() -> None:
            with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SET lock_timeout = '100ms'"))
                try:
                    seen.append(
                        conn.execute(select(func.count()).select_from(Vehicle)).scalar_one()
                    )
                except Exception:
                    seen.append(-1)  # kept out by the load's lock
            done.set()

        if not done.is_set():
            thread = threading.Thread(target=read)
            thread.start()
            thread.join()

    settings = settings.model_copy(update={"import_batch_size": 2})
    report = run(engine, settings, jsonl([vehicle(i) for i in range(1, 7)]), on_batch=look)
    assert report.first_load and count(engine, Vehicle) == 6
    assert seen == ([-1] if engine.dialect.name == "postgresql" else [0])


def test_a_user_that_does_not_own_the_tables_imports_batch_by_batch(
    engine: Engine, settings: Settings
) -> None:
    """PostgreSQL: only the tables' owner may drop and build their indexes; an importing
    user with row privileges alone gets the batch path, not an error."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no users")
    role = f"otacm_importer_{uuid.uuid4().hex[:8]}"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    url = engine.url.set(username=role).render_as_string(hide_password=False)
    other = make_engine(url)
    try:
        report = run(other, settings, jsonl([vehicle(1), vehicle(2)]))
        assert not report.first_load and report.status == "completed"
        assert count(engine, Vehicle) == 2
    finally:
        other.dispose()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
