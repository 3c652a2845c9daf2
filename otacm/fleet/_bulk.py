"""Bulk reads and writes for the importer, on each engine's fast path.

PostgreSQL gets `COPY` through psycopg 3 and pipelined `executemany`; SQLite gets plain
`executemany` inside one large transaction. Everything here runs on the caller's connection and
transaction: nothing commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from otacm.db import is_postgresql, sqlite_timestamp
from otacm.fleet.models import Ecu, Vehicle

# Bound parameters per statement: well below SQLite's 32,766 and PostgreSQL's 65,535.
_CHUNK = 10_000

VEHICLE_COLUMNS = (
    "id", "vin", "engine_number", "chassis_number", "model", "model_year", "fuel_type",
    "region", "country", "manufactured_at", "exported_at", "status", "attributes",
    "vehicle_public_key", "rxswin", "import_id", "created_at", "updated_at",
)
ECU_COLUMNS = (
    "vehicle_id", "ecu_type", "serial", "hardware_part_number", "hardware_version", "protocol",
    "software_part_number", "software_version", "calibration_id", "software_source",
    "software_observed_at", "import_id", "removed_at", "updated_at",
)
HISTORY_COLUMNS = (
    "ecu_id", "change", "vehicle_id", "hardware_part_number", "hardware_version", "protocol",
    "software_part_number", "software_version", "calibration_id", "software_source",
    "software_observed_at", "import_id", "changed_by_import_id", "changed_to_vehicle_id",
    "changed_at", "recorded_at",
)
VEHICLE_UPDATE_COLUMNS = VEHICLE_COLUMNS[2:11] + ("attributes", "vehicle_public_key", "rxswin",
                                                 "import_id", "updated_at")
ECU_UPDATE_COLUMNS = (
    "vehicle_id", "ecu_type", "hardware_part_number", "hardware_version", "protocol",
    "software_part_number", "software_version", "calibration_id", "software_source",
    "software_observed_at", "import_id", "removed_at", "updated_at",
)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class BulkIO:
    """The importer's window on the database, for one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgresql = is_postgresql(conn.dialect)
        self.mark = "%s" if self.postgresql else "?"
        self.timestamp: Callable[[datetime], Any] = (
            (lambda value: value) if self.postgresql else sqlite_timestamp
        )
        self.json: Callable[[dict[str, Any]], str] = json.dumps

    # -- reads ---------------------------------------------------------------------------------

    def vehicles_by_vin(self, vins: Sequence[str]) -> list[Any]:
        rows: list[Any] = []
        for chunk in _chunks(vins):
            rows.extend(self.conn.execute(select(Vehicle.__table__).where(Vehicle.vin.in_(chunk))))
        return rows

    def ecus_by_serial(self, serials: Sequence[str]) -> list[Any]:
        rows: list[Any] = []
        query = select(Ecu.__table__, Vehicle.vin.label("owner_vin"),
                       Vehicle.exported_at.label("owner_exported_at")).join(
            Vehicle, Vehicle.id == Ecu.vehicle_id
        )
        for chunk in _chunks(serials):
            rows.extend(self.conn.execute(query.where(Ecu.serial.in_(chunk))))
        return rows

    def active_ecus_of(self, vehicle_ids: Sequence[int]) -> list[Any]:
        rows: list[Any] = []
        query = select(Ecu.__table__, Vehicle.vin.label("owner_vin"),
                       Vehicle.exported_at.label("owner_exported_at")).join(
            Vehicle, Vehicle.id == Ecu.vehicle_id
        )
        for start in range(0, len(vehicle_ids), _CHUNK):
            chunk = vehicle_ids[start : start + _CHUNK]
            rows.extend(
                self.conn.execute(
                    query.where(Ecu.vehicle_id.in_(chunk), Ecu.removed_at.is_(None))
                )
            )
        return rows

    # -- ids -----------------------------------------------------------------------------------

    def reserve_vehicle_ids(self, count: int) -> list[int]:
        """Ids for `count` new vehicles, so that their ECUs can be written in the same pass."""
        if count == 0:
            return []
        if self.postgresql:
            result = self.conn.exec_driver_sql(
                "SELECT nextval('vehicles_id_seq') FROM generate_series(1, %s)", (count,)
            )
            return [row[0] for row in result]
        # SQLite: the import holds the write lock (BEGIN IMMEDIATE), so max(id) is stable.
        top = self.conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM vehicles").scalar()
        return list(range(int(top or 0) + 1, int(top or 0) + 1 + count))

    # -- writes --------------------------------------------------------------------------------

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.postgresql:
            raw = self.conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor, cursor.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join("?" for _ in columns)
        self.conn.exec_driver_sql(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
        )

    def update_by_id(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Rows are the values of `columns` followed by the id."""
        if not rows:
            return
        assignments = ", ".join(f"{c} = {self.mark}" for c in columns)
        sql = f"UPDATE {table} SET {assignments} WHERE id = {self.mark}"
        if self.postgresql and "attributes" in columns:
            sql = sql.replace("attributes = %s", "attributes = %s::jsonb")
        self.conn.exec_driver_sql(sql, rows)

    # -- keys seen earlier in the same file ----------------------------------------------------

    def create_seen_tables(self) -> None:
        prefix = "CREATE TEMPORARY TABLE IF NOT EXISTS"
        self.conn.exec_driver_sql(
            f"{prefix} import_seen_vins (vin VARCHAR(17) PRIMARY KEY, line INTEGER NOT NULL)"
        )
        self.conn.exec_driver_sql(
            f"{prefix} import_seen_serials (serial VARCHAR(64) PRIMARY KEY, "
            "vin VARCHAR(17) NOT NULL, line INTEGER NOT NULL)"
        )

    def drop_seen_tables(self) -> None:
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS import_seen_vins")
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS import_seen_serials")

    def seen_vins(self, vins: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(vins):
            marks = ", ".join(self.mark for _ in chunk)
            rows = self.conn.exec_driver_sql(
                f"SELECT vin, line FROM import_seen_vins WHERE vin IN ({marks})", tuple(chunk)
            )
            found.update((vin, line) for vin, line in rows)
        return found

    def seen_serials(self, serials: Sequence[str]) -> dict[str, tuple[str, int]]:
        found: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(serials):
            marks = ", ".join(self.mark for _ in chunk)
            for serial, vin, line in self.conn.exec_driver_sql(
                f"SELECT serial, vin, line FROM import_seen_serials WHERE serial IN ({marks})",
                tuple(chunk),
            ):
                found[serial] = (vin, line)
        return found

    def remember(self, vins: list[tuple[str, int]], serials: list[tuple[str, str, int]]) -> None:
        """Record keys accepted from this file; a key already present keeps its first line."""
        if self.postgresql:
            self.insert("import_seen_vins", ("vin", "line"), [v for v in vins])
            self.insert("import_seen_serials", ("serial", "vin", "line"), serials)
            return
        self.conn.exec_driver_sql(
            "INSERT OR IGNORE INTO import_seen_vins (vin, line) VALUES (?, ?)", vins
        )
        self.conn.exec_driver_sql(
            "INSERT OR IGNORE INTO import_seen_serials (serial, vin, line) VALUES (?, ?, ?)",
            serials,
        )
