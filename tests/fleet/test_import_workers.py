"""Imports into a registry that holds vehicles, planned by worker processes
(`importer._import_in_workers`, PostgreSQL): each chunk is planned against the committed
registry, and the importing process plans it again itself when an earlier chunk wrote what
the plan read or took a VIN it depends on. The outcome must be the in-process batch path's.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Engine, select

from otacm.config import Settings
from otacm.db import is_postgresql
from otacm.fleet.models import Ecu, EcuHistory
from tests.builders import ecu, jsonl, vehicle
from tests.fleet.test_first_load import IN_WORKERS, empty_registry, outcome, run

NEWER = "2025-06-01T00:00:00Z"
LATEST = "2025-09-01T00:00:00Z"

SCENARIOS: dict[str, list[dict[str, Any]]] = {
    # Everything restated: nothing written.
    "unchanged": [vehicle(n) for n in range(1, 21)],
    # Updates, and an ECU moved to another vehicle, chunk after chunk: later chunks read
    # what earlier ones write while those are still in flight.
    "moves": [
        vehicle(1, model="Renamed", exported_at=NEWER),
        vehicle(2, exported_at=NEWER, ecus=[ecu("BCM-000002"), ecu("BCM-000005")]),
        vehicle(5, exported_at=NEWER, ecus=[ecu("BMS-000005", "BMS")]),
        vehicle(6, exported_at=NEWER, ecus=[ecu("BCM-000005")]),  # newer owner? no: same export
        vehicle(7, exported_at=LATEST, ecus=[ecu("BCM-000002"), ecu("BCM-000007")]),
        vehicle(2, exported_at=LATEST, ecus=[ecu("BCM-000005")]),
        *(vehicle(n, exported_at=NEWER) for n in range(30, 40)),
    ],
    # VINs and serials repeated across chunks, new vehicles among stored ones.
    "repeats": [
        vehicle(40),
        vehicle(41),
        vehicle(40),
        vehicle(42, ecus=[ecu("BCM-000041")]),
        vehicle(41, model="Other"),
        vehicle(3),
        vehicle(43, ecus=[ecu("BCM-000003")]),
        vehicle(44, fuel_type="steam"),
        *(vehicle(n) for n in range(45, 60)),
    ],
}


def stored_fleet() -> bytes:
    return jsonl([vehicle(n) for n in range(1, 21)])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("batch_size", [2, 3])
def test_planned_in_workers_as_in_process(
    engine: Engine, settings: Settings, scenario: str, batch_size: int
) -> None:
    data = jsonl(SCENARIOS[scenario])
    in_process = settings.model_copy(update={"import_batch_size": batch_size})
    in_workers = in_process.model_copy(update=IN_WORKERS)
    outcomes = []
    for chosen in (in_process, in_workers):
        empty_registry(engine)
        assert run(engine, chosen, stored_fleet()).first_load
        report = run(engine, chosen, data)
        assert not report.first_load
        assert report.workers == (2 if chosen is in_workers and is_postgresql(engine) else 0)
        outcomes.append(outcome(engine, report))
    assert outcomes[0] == outcomes[1]
    if scenario == "unchanged":
        assert outcomes[0]["summary"]["vehicles_unchanged"] == 20


def test_a_batch_waits_for_the_removal_of_an_ecu_it_names(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 drops an ECU from vehicle 1 (its records do not name the serial), batch 2 fits
    it to vehicle 2 while batch 1 is still being written: batch 2 must see the removal, as two
    imports one after the other do (the ECU returns; it is not moved from vehicle 1)."""
    from otacm.fleet import importer

    records = [
        vehicle(
            1,
            exported_at=NEWER,
            ecus=[ecu("BMS-000001", "BMS", protocol="CAN_FD", software_version="2.0.0")],
        ),
        vehicle(2, exported_at=NEWER, ecus=[ecu("BCM-000002"), ecu("BCM-000001")]),
    ]
    settings = settings.model_copy(update={"import_batch_size": 1})
    empty_registry(engine)
    run(engine, settings, stored_fleet())
    for record in records:
        run(engine, settings, jsonl([record]))
    expected = history_kinds(engine)

    write_batch = importer._Writer._write_batch

    def slow_write(self: Any, *args: Any) -> None:
        time.sleep(0.3)  # batch 2 is planned while batch 1 is still being written
        write_batch(self, *args)

    monkeypatch.setattr(importer._Writer, "_write_batch", slow_write)
    empty_registry(engine)
    run(engine, settings, stored_fleet())
    run(engine, settings, jsonl(records))
    assert history_kinds(engine) == expected
    assert expected[:2] == [("BCM-000001", "removed"), ("BCM-000001", "returned")]


def history_kinds(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Ecu.serial, EcuHistory.change)
            .join(Ecu, Ecu.id == EcuHistory.ecu_id)
            .order_by(EcuHistory.id)
        ).all()
    return [(serial, change) for serial, change in rows]
