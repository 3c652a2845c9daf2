"""Fleet export: the registry streamed out in the manufacturing export format.

Every record is stamped with the time of the export, so that re-importing an export never loses
to older data and always yields to newer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text

from otacm.db import is_postgresql, utcnow
from otacm.fleet.models import Ecu, Vehicle
from otacm.fleet.parser import CSV_HEADER
from otacm.fleet.records import OPTIONAL_VEHICLE_FIELDS

EXPORT_PAGE = 2000
EXPORT_FORMATS = ("jsonl", "csv")


def _iso(value: datetime) -> str:
    return value.isoformat()


def _attribute_keys(conn: Connection) -> list[str]:
    if is_postgresql(conn.dialect):
        sql = "SELECT DISTINCT jsonb_object_keys(attributes) AS k FROM vehicles ORDER BY k"
    else:
        sql = "SELECT DISTINCT j.key FROM vehicles, json_each(vehicles.attributes) AS j ORDER BY 1"
    return [row[0] for row in conn.execute(text(sql))]


def _pages(conn: Connection) -> Iterator[list[tuple[Any, list[Any]]]]:
    """Vehicles in id order with their fitted ECUs, a bounded page at a time."""
    last_id = 0
    while True:
        vehicles = conn.execute(
            select(Vehicle.__table__)
            .where(Vehicle.id > last_id)
            .order_by(Vehicle.id)
            .limit(EXPORT_PAGE)
        ).all()
        if not vehicles:
            return
        last_id = vehicles[-1].id
        ecus: dict[int, list[Any]] = {v.id: [] for v in vehicles}
        for ecu in conn.execute(
            select(Ecu.__table__)
            .where(Ecu.vehicle_id.in_(list(ecus)), Ecu.removed_at.is_(None))
            .order_by(Ecu.vehicle_id, Ecu.id)
        ):
            ecus[ecu.vehicle_id].append(ecu)
        yield [(v, ecus[v.id]) for v in vehicles]


def _vehicle_fields(v: Any, exported_at: str) -> dict[str, Any]:
    return {
        "vin": v.vin,
        "engine_number": v.engine_number,
        "chassis_number": v.chassis_number,
        "model": v.model,
        "model_year": v.model_year,
        "fuel_type": v.fuel_type,
        "region": v.region,
        "country": v.country,
        "manufactured_at": _iso(v.manufactured_at),
        "exported_at": exported_at,
    }


def export_jsonl(conn: Connection, exported_at: datetime) -> Iterator[str]:
    stamp = _iso(exported_at)
    for page in _pages(conn):
        lines = []
        for v, ecus in page:
            record = _vehicle_fields(v, stamp)
            for name in OPTIONAL_VEHICLE_FIELDS:
                if getattr(v, name) is not None:
                    record[name] = getattr(v, name)
            record.update(v.attributes or {})
            record["ecus"] = [
                {
                    "ecu_type": e.ecu_type,
                    "serial": e.serial,
                    "hardware_part_number": e.hardware_part_number,
                    "hardware_version": e.hardware_version,
                    "protocol": e.protocol,
                    "software_part_number": e.software_part_number,
                    "software_version": e.software_version,
                    "calibration_id": e.calibration_id,
                }
                for e in ecus
            ]
            lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        yield "\n".join(lines) + "\n"


def _csv_line(values: list[Any]) -> str:
    out = []
    for value in values:
        cell = "" if value is None else str(value)
        if any(c in cell for c in ',"\r\n') or cell != cell.strip():
            cell = '"' + cell.replace('"', '""') + '"'
        out.append(cell)
    return ",".join(out)


def export_csv(conn: Connection, exported_at: datetime) -> Iterator[str]:
    stamp = _iso(exported_at)
    attribute_keys = _attribute_keys(conn)
    yield _csv_line([*CSV_HEADER, *OPTIONAL_VEHICLE_FIELDS, *attribute_keys]) + "\n"
    for page in _pages(conn):
        lines = []
        for v, ecus in page:
            vehicle = list(_vehicle_fields(v, stamp).values())
            extra = [getattr(v, name) for name in OPTIONAL_VEHICLE_FIELDS]
            attributes = v.attributes or {}
            extra += [attributes.get(k) for k in attribute_keys]
            rows = [
                [
                    e.ecu_type,
                    e.serial,
                    e.hardware_part_number,
                    e.hardware_version,
                    e.protocol,
                    e.software_part_number,
                    e.software_version,
                    e.calibration_id,
                ]
                for e in ecus
            ]
            for ecu in rows or [[None] * 8]:
                lines.append(_csv_line([*vehicle, *ecu, *extra]))
        yield "\n".join(lines) + "\n"


def export_fleet(engine: Engine, fmt: str, exported_at: datetime | None = None) -> Iterator[str]:
    """The whole registry as export text chunks; one read transaction for a consistent view."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use jsonl or csv")
    stamp = exported_at or utcnow()
    with engine.connect() as conn:
        if is_postgresql(conn.dialect):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield from (export_jsonl if fmt == "jsonl" else export_csv)(conn, stamp)
