"""The fleet importer against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import zlib
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from otacm.config import Settings
from otacm.fleet.exporter import export_fleet
from otacm.fleet.importer import ImportReport, run_import
from otacm.fleet.models import Ecu, EcuHistory, FleetImport, FleetImportRejection, Vehicle
from otacm.fleet.parser import ImportFileError
from tests.builders import csv_bytes, ecu, gz, jsonl, vehicle, vin


def run(engine: Engine, settings: Settings, data: bytes, **kwargs: Any) -> ImportReport:
    return run_import(engine, io.BytesIO(data), settings=settings, source_name="test", **kwargs)


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything the registry holds, for before/after comparisons."""
    with engine.connect() as conn:
        return {
            "vehicles": conn.execute(select(Vehicle.__table__).order_by(Vehicle.id)).all(),
            "ecus": conn.execute(select(Ecu.__table__).order_by(Ecu.id)).all(),
            "history": conn.execute(select(EcuHistory.__table__).order_by(EcuHistory.id)).all(),
        }


def ecu_row(engine: Engine, serial: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(Ecu.__table__, Vehicle.vin)
            .join(Vehicle, Vehicle.id == Ecu.vehicle_id)
            .where(Ecu.serial == serial)
        ).one()


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize(
    "encode",
    [jsonl, csv_bytes, lambda r: gz(jsonl(r)), lambda r: gz(csv_bytes(r))],
    ids=["jsonl", "csv", "jsonl.gz", "csv.gz"],
)
def test_import_creates_vehicles_and_ecus(engine: Engine, settings: Settings, encode: Any) -> None:
    report = run(engine, settings, encode([vehicle(i) for i in range(1, 11)]))
    assert report.status == "completed" and report.exit_code == 0
    assert report.counts.vehicles_created == 10 and report.counts.ecus_created == 20
    assert count(engine, Vehicle) == 10 and count(engine, Ecu) == 20
    row = ecu_row(engine, "BMS-000003")
    assert row.vin == vin(3) and row.protocol == "CAN_FD" and row.software_source == "import"


def test_reimport_of_the_same_file_changes_nothing(engine: Engine, settings: Settings) -> None:
    data = jsonl([vehicle(i) for i in range(1, 6)])
    run(engine, settings, data)
    before = snapshot(engine)
    report = run(engine, settings, data)
    assert report.counts.vehicles_unchanged == 5 and report.counts.ecus_unchanged == 10
    assert report.counts.vehicles_created == report.counts.vehicles_updated == 0
    after = snapshot(engine)
    assert after["ecus"] == before["ecus"] and after["history"] == before["history"] == []
    assert [v.updated_at for v in after["vehicles"]] == [v.updated_at for v in before["vehicles"]]


def test_newer_export_updates_software_and_keeps_history(
    engine: Engine, settings: Settings
) -> None:
    run(engine, settings, jsonl([vehicle(1)]))
    newer = vehicle(
        1,
        exported_at="2025-06-01T00:00:00+02:00",
        model="Aurora X",
        ecus=[
            ecu("BCM-000001", software_version="4.2.0"),
            ecu("BMS-000001", "BMS", protocol="CAN_FD", software_version="2.0.0"),
        ],
    )
    report = run(engine, settings, jsonl([newer]))
    assert report.counts.vehicles_updated == 1
    assert report.counts.ecus_updated == 1 and report.counts.ecus_unchanged == 1
    row = ecu_row(engine, "BCM-000001")
    assert row.software_version == "4.2.0"
    assert row.software_observed_at.isoformat() == "2025-05-31T22:00:00+00:00"
    with engine.connect() as conn:
        history = conn.execute(select(EcuHistory.__table__)).all()
        model = conn.execute(select(Vehicle.model)).scalar_one()
    assert model == "Aurora X"
    assert [(h.change, h.software_version, h.changed_by_import_id) for h in history] == [
        ("software", "4.1.0", report.import_id)
    ]


def test_older_export_never_overwrites_newer_data(engine: Engine, settings: Settings) -> None:
    run(engine, settings, jsonl([vehicle(1, exported_at="2025-06-01T00:00:00Z")]))
    before = snapshot(engine)
    older = vehicle(
        1,
        exported_at="2025-05-01T00:00:00Z",
        model="Old",
        ecus=[ecu("BCM-000001", software_version="1.0.0")],
    )
    report = run(engine, settings, jsonl([older]))
    assert report.counts.vehicles_stale == 1 and report.status == "completed"
    assert snapshot(engine) == before


def test_ecu_moved_to_another_vehicle_by_a_newer_export_is_a_replacement(
    engine: Engine, settings: Settings
) -> None:
    run(engine, settings, jsonl([vehicle(1), vehicle(2)]))
    # The BCM of vehicle 1 is fitted to vehicle 2, whose own BCM leaves it.
    moved = vehicle(
        2,
        exported_at="2025-07-01T00:00:00Z",
        ecus=[
            ecu("BCM-000001"),
            ecu("BMS-000002", "BMS", protocol="CAN_FD", software_version="2.0.0"),
        ],
    )
    report = run(engine, settings, jsonl([moved]))
    assert report.counts.ecus_replaced == 1 and report.counts.ecus_removed == 1
    assert ecu_row(engine, "BCM-000001").vin == vin(2)
    old = ecu_row(engine, "BCM-000002")
    assert old.vin == vin(2) and old.removed_at is not None
    with engine.connect() as conn:
        changes = sorted(conn.execute(select(EcuHistory.change)).scalars())
    assert changes == ["moved", "removed"]


def test_ecu_claimed_by_an_older_export_is_rejected(engine: Engine, settings: Settings) -> None:
    run(engine, settings, jsonl([vehicle(1, exported_at="2025-07-01T00:00:00Z")]))
    claim = vehicle(2, exported_at="2025-06-01T00:00:00Z", ecus=[ecu("BCM-000001")])
    report = run(engine, settings, jsonl([claim]))
    assert report.records_rejected == 1 and report.exit_code == 2
    assert report.rejections[0].field == "ecus[0].serial"
    assert vin(1) in report.rejections[0].reason
    assert ecu_row(engine, "BCM-000001").vin == vin(1)


@pytest.mark.parametrize("batch_size", [1000, 1], ids=["same-batch", "across-batches"])
def test_same_serial_twice_in_one_file_is_rejected(
    engine: Engine, settings: Settings, batch_size: int
) -> None:
    settings = settings.model_copy(update={"import_batch_size": batch_size})
    records = [vehicle(1), vehicle(2, ecus=[ecu("BCM-000001", "BCM")]), vehicle(3)]
    report = run(engine, settings, jsonl(records))
    assert report.counts.vehicles_created == 2 and report.records_rejected == 1
    rejection = report.rejections[0]
    assert (rejection.line, rejection.vin, rejection.field) == (2, vin(2), "ecus[0].serial")
    assert "line 1" in rejection.reason
    assert ecu_row(engine, "BCM-000001").vin == vin(1)


@pytest.mark.parametrize("batch_size", [1000, 1], ids=["same-batch", "across-batches"])
def test_repeated_vin_in_one_file(engine: Engine, settings: Settings, batch_size: int) -> None:
    settings = settings.model_copy(update={"import_batch_size": batch_size})
    records = [vehicle(1), vehicle(2), vehicle(1), vehicle(2, model="Other")]
    report = run(engine, settings, jsonl(records))
    # An identical repeat restates the record; a conflicting one is rejected.
    assert report.records_rejected == 1
    assert (report.rejections[0].line, report.rejections[0].field) == (4, "vin")
    assert "line 2" in report.rejections[0].reason
    with engine.connect() as conn:
        assert conn.execute(select(Vehicle.model).where(Vehicle.vin == vin(2))).scalar() == "Aurora"


def test_bad_records_are_reported_and_good_ones_taken(engine: Engine, settings: Settings) -> None:
    records = [
        vehicle(1),
        vehicle(2, fuel_type="steam"),
        vehicle(3),
        vehicle(4, ecus=[ecu("X-1", protocol="USB")]),
    ]
    report = run(engine, settings, jsonl(records))
    assert report.status == "completed_with_rejections" and report.exit_code == 2
    assert report.counts.vehicles_created == 2 and report.records_rejected == 2
    assert [(r.line, r.field) for r in report.rejections] == [
        (2, "fuel_type"),
        (4, "ecus[0].protocol"),
    ]
    with engine.connect() as conn:
        stored = (
            conn.execute(select(FleetImportRejection.line).order_by(FleetImportRejection.line))
            .scalars()
            .all()
        )
        assert stored == [2, 4]
        assert conn.execute(select(FleetImport.status)).scalar() == "completed_with_rejections"


def test_csv_rejection_names_the_ecu_row_and_column(engine: Engine, settings: Settings) -> None:
    records = [vehicle(1), vehicle(2, ecus=[ecu("A-1"), ecu("A-2", hardware_version="")])]
    report = run(engine, settings, csv_bytes(records))
    # Header is line 1; vehicle 1 has lines 2-3, vehicle 2 lines 4-5.
    assert [(r.line, r.field) for r in report.rejections] == [(5, "hardware_version")]
    assert report.counts.vehicles_created == 1


def test_strict_import_takes_nothing_if_any_record_is_bad(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.model_copy(update={"import_batch_size": 2})
    run(engine, settings, jsonl([vehicle(100)]))
    before = snapshot(engine)
    records = [vehicle(i) for i in range(1, 6)] + [vehicle(6, vin="NOT-A-VIN")]
    report = run(engine, settings, jsonl(records), strict=True)
    assert report.status == "rejected" and report.exit_code == 2
    assert report.records_rejected == 1 and report.counts.vehicles_created == 0
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(FleetImportRejection.line)).scalars().all() == [6]


def test_strict_import_of_good_records_takes_them_all(engine: Engine, settings: Settings) -> None:
    settings = settings.model_copy(update={"import_batch_size": 2})
    report = run(engine, settings, jsonl([vehicle(i) for i in range(1, 6)]), strict=True)
    assert report.status == "completed" and count(engine, Vehicle) == 5


def test_interrupted_import_keeps_whole_batches_only(engine: Engine, settings: Settings) -> None:
    # A registry that holds a vehicle is imported into batch by batch (an empty one is loaded
    # in one transaction: tests/fleet/test_first_load.py).
    run(engine, settings, jsonl([vehicle(100)]))
    settings = settings.model_copy(update={"import_batch_size": 3})

    def stop_after_first_batch(report: ImportReport) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            engine,
            settings,
            jsonl([vehicle(i) for i in range(1, 10)]),
            on_batch=stop_after_first_batch,
        )
    assert count(engine, Vehicle) == 1 + 3 and count(engine, Ecu) == 2 + 6
    with engine.connect() as conn:
        statuses = conn.execute(select(FleetImport.status).order_by(FleetImport.id)).scalars()
        assert list(statuses) == ["completed", "failed"]


def test_failure_inside_a_batch_leaves_no_half_vehicle(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otacm.fleet import _bulk

    # Rows go through `insert`, or `copy_text` for a first load on PostgreSQL.
    for method in ("insert", "copy_text"):
        original = getattr(_bulk.BulkIO, method)

        def broken(
            self: Any, table: str, columns: Any, rows: Any, original: Any = original
        ) -> None:
            if table == "ecus":
                raise ConnectionError("connection lost")
            original(self, table, columns, rows)

        monkeypatch.setattr(_bulk.BulkIO, method, broken)
    with pytest.raises(ConnectionError):
        run(engine, settings, jsonl([vehicle(1), vehicle(2)]))
    assert count(engine, Vehicle) == 0 and count(engine, Ecu) == 0


def test_empty_file_is_refused_and_recorded(engine: Engine, settings: Settings) -> None:
    with pytest.raises(ImportFileError, match="empty"):
        run(engine, settings, b"  \n")
    with engine.connect() as conn:
        assert conn.execute(select(FleetImport.status)).scalar() == "failed"


def test_truncated_gzip_keeps_what_came_before(engine: Engine, settings: Settings) -> None:
    data = gz(jsonl([vehicle(i) for i in range(1, 200)]))
    cut = data[: len(data) // 2]
    whole_lines = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    report = run(engine, settings, cut)
    assert report.exit_code == 2 and report.rejections[-1].field is None
    assert "gzip data ends" in report.rejections[-1].reason
    assert report.rejections[-1].line == whole_lines + 1
    assert report.counts.vehicles_created == whole_lines


def test_unknown_fields_become_attributes(engine: Engine, settings: Settings) -> None:
    report = run(
        engine, settings, csv_bytes([{**vehicle(1), "paint": "red"}], extra_columns=["paint"])
    )
    assert report.status == "completed"
    with engine.connect() as conn:
        assert conn.execute(select(Vehicle.attributes)).scalar() == {"paint": "red"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_import_export_round_trip(
    engine: Engine, settings: Settings, fmt: str, tmp_path: Any
) -> None:
    from datetime import UTC, datetime

    from otacm.db import make_engine, upgrade

    records = [vehicle(i, color="blue" if i % 2 else "green") for i in range(1, 30)]
    records.append(vehicle(40, vehicle_public_key="bXkta2V5", rxswin="R156-EU-1"))
    run(engine, settings, jsonl(records))
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    first = "".join(export_fleet(engine, fmt, stamp))

    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other)
    report = run_import(other, io.BytesIO(first.encode()), settings=settings, source_name="rt")
    assert report.status == "completed" and report.counts.vehicles_created == 30
    assert "".join(export_fleet(other, fmt, stamp)) == first
    other.dispose()


BAD_EXPORTS = {
    "malformed JSON": b'{"vin": "WXA' + b"\n",
    "JSON array instead of object": b"[1, 2, 3]\n{}\n",
    "CSV with a broken quote": csv_bytes([vehicle(1)]).replace(b"Aurora", b'Aur"ora', 1),
    "UTF-16 file": csv_bytes([vehicle(1)]).decode().encode("utf-16"),
    "Latin-1 bytes in a record": (
        json.dumps(vehicle(1, model="Crète"), ensure_ascii=False) + "\n"
    ).encode("latin-1"),
    "huge field": jsonl([vehicle(1, model="X" * 2_000_000)]),
    "cut off mid-record": jsonl([vehicle(1)])[:-40],
    "unknown enum": jsonl([vehicle(1, fuel_type="steam")]),
    "missing required field": jsonl([{k: v for k, v in vehicle(1).items() if k != "model"}]),
    "duplicate ECU serial in a vehicle": jsonl([vehicle(1, ecus=[ecu("S-1"), ecu("S-1")])]),
    "timestamp without offset": jsonl([vehicle(1, exported_at="2025-03-02T00:00:00")]),
    "malformed VIN": jsonl([vehicle(1, vin="WXA-NOT-A-VIN")]),
    "North American VIN with a wrong check digit": jsonl(
        [
            vehicle(
                1,
                vin=vin(1, "1XA")[:8]
                + ("0" if vin(1, "1XA")[8] != "0" else "1")
                + vin(1, "1XA")[9:],
            )
        ]
    ),
}


@pytest.mark.parametrize("name", list(BAD_EXPORTS))
def test_bad_exports_change_nothing(engine: Engine, settings: Settings, name: str) -> None:
    """Each defect is reported (file refused, or the record rejected) and nothing changes."""
    run(engine, settings, jsonl([vehicle(500)]))
    before = snapshot(engine)
    try:
        report = run(engine, settings, BAD_EXPORTS[name])
    except ImportFileError as exc:
        assert exc.detail
    else:
        assert report.exit_code == 2 and report.records_rejected >= 1
        assert report.rejections and all(r.reason for r in report.rejections)
        assert report.counts.vehicles_created == 0
    assert snapshot(engine) == before
