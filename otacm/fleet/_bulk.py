"""Bulk reads and writes for the importer, on each engine's fast path.

PostgreSQL gets `COPY` through psycopg 3 and pipelined `executemany`; SQLite gets plain
`executemany` inside one large transaction. Everything here runs on the caller's connection and
transaction: nothing commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    String,
    and_,
    any_,
    bindparam,
    func,
    literal_column,
    select,
)

from otacm.db import is_postgresql, sqlite_timestamp
from otacm.fleet.models import Ecu, Vehicle

VEHICLE_COLUMNS = (
    "id",
    "vin",
    "engine_number",
    "chassis_number",
    "model",
    "model_year",
    "fuel_type",
    "region",
    "country",
    "manufactured_at",
    "exported_at",
    "status",
    "attributes",
    "vehicle_public_key",
    "rxswin",
    "import_id",
    "created_at",
    "updated_at",
)
ECU_COLUMNS = (
    "vehicle_id",
    "ecu_type",
    "serial",
    "hardware_part_number",
    "hardware_version",
    "protocol",
    "software_part_number",
    "software_version",
    "calibration_id",
    "software_source",
    "software_observed_at",
    "import_id",
    "removed_at",
    "updated_at",
)
HISTORY_COLUMNS = (
    "ecu_id",
    "change",
    "vehicle_id",
    "hardware_part_number",
    "hardware_version",
    "protocol",
    "software_part_number",
    "software_version",
    "calibration_id",
    "software_source",
    "software_observed_at",
    "import_id",
    "changed_by_import_id",
    "changed_to_vehicle_id",
    "changed_at",
    "recorded_at",
)
VEHICLE_UPDATE_COLUMNS = VEHICLE_COLUMNS[2:11] + (
    "attributes",
    "vehicle_public_key",
    "rxswin",
    "import_id",
    "updated_at",
)
ECU_UPDATE_COLUMNS = (
    "vehicle_id",
    "ecu_type",
    "hardware_part_number",
    "hardware_version",
    "protocol",
    "software_part_number",
    "software_version",
    "calibration_id",
    "software_source",
    "software_observed_at",
    "import_id",
    "removed_at",
    "updated_at",
)


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

    def _keys_in(self, column: Any, keys: Sequence[Any]) -> ColumnElement[bool]:
        """`column IN keys` as one bound parameter: an array on PostgreSQL, a JSON array read
        by json_each on SQLite. Thousands of separate parameters cost more to send than to look up.
        """
        condition: ColumnElement[bool]
        if self.postgresql:
            condition = column == any_(bindparam("keys", list(keys), type_=ARRAY(column.type)))
            return condition
        condition = column.in_(
            select(literal_column("value")).select_from(
                func.json_each(bindparam("keys", json.dumps(list(keys)), type_=String()))
            )
        )
        return condition

    def vehicles_by_vin(self, vins: Sequence[str]) -> list[Any]:
        if not vins:
            return []
        query = select(Vehicle.__table__).where(self._keys_in(Vehicle.vin, vins))
        return list(self.conn.execute(query))

    def _ecus_where(self, condition: ColumnElement[bool]) -> list[Any]:
        query = select(
            Ecu.__table__,
            Vehicle.vin.label("owner_vin"),
            Vehicle.exported_at.label("owner_exported_at"),
        ).join(Vehicle, Vehicle.id == Ecu.vehicle_id)
        return list(self.conn.execute(query.where(condition)))

    def ecus_by_serial(self, serials: Sequence[str]) -> list[Any]:
        return self._ecus_where(self._keys_in(Ecu.serial, serials)) if serials else []

    def active_ecus_of(self, vehicle_ids: Sequence[int]) -> list[Any]:
        if not vehicle_ids:
            return []
        return self._ecus_where(
            and_(self._keys_in(Ecu.vehicle_id, vehicle_ids), Ecu.removed_at.is_(None))
        )

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
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
            ):
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
        self.conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS import_seen_vins "
            "(vin VARCHAR(17) PRIMARY KEY, line INTEGER NOT NULL)"
        )

    def drop_seen_tables(self) -> None:
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS import_seen_vins")

    def seen_vins(self, vins: Sequence[str]) -> dict[str, int]:
        """VINs taken earlier in the same file, with the line that took them."""
        if not vins:
            return {}
        param: list[str] | str
        if self.postgresql:
            sql, param = "= ANY(%s)", list(vins)
        else:
            sql, param = "IN (SELECT value FROM json_each(?))", json.dumps(list(vins))
        rows = self.conn.exec_driver_sql(
            f"SELECT vin, line FROM import_seen_vins WHERE vin {sql}", (param,)
        )
        return {vin: line for vin, line in rows}

    def remember(self, vins: list[tuple[str, int]]) -> None:
        """Record VINs taken from this file; the caller passes only ones not seen before."""
        self.insert("import_seen_vins", ("vin", "line"), vins)
