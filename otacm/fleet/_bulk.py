"""Bulk reads and writes for the importer, on each engine's fast path.

PostgreSQL gets `COPY` through psycopg 3 and pipelined `executemany`; SQLite gets plain
`executemany` inside one large transaction. Everything here runs on the caller's connection and
transaction: nothing commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
)

from otacm.db import is_postgresql, sqlite_timestamp
from otacm.fleet._diff import StoredEcu, StoredVehicle

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
# Everything but the serial, which identifies the ECU for good.
ECU_UPDATE_COLUMNS = tuple(c for c in ECU_COLUMNS if c != "serial")


# PostgreSQL types of the columns the bulk paths write (text unless named here).
PG_TYPES = {
    "id": "int8",
    "vehicle_id": "int8",
    "ecu_id": "int8",
    "import_id": "int8",
    "changed_by_import_id": "int8",
    "changed_to_vehicle_id": "int8",
    "model_year": "int4",
    "line": "int4",
    "attributes": "jsonb",
    "manufactured_at": "timestamptz",
    "exported_at": "timestamptz",
    "software_observed_at": "timestamptz",
    "removed_at": "timestamptz",
    "changed_at": "timestamptz",
    "recorded_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}


def _unchanged(value: datetime) -> datetime:
    return value


# Vehicle ids an SQLite import reserves at a time.
SQLITE_ID_BLOCK = 50_000


class BulkIO:
    """The importer's window on the database, for one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgresql = is_postgresql(conn.dialect)
        self.mark = "%s" if self.postgresql else "?"
        # PostgreSQL takes datetimes (binary COPY sends them without formatting); SQLite
        # takes the text SQLAlchemy would store.
        self.timestamp: Callable[[datetime], Any] = (
            _unchanged if self.postgresql else sqlite_timestamp
        )
        self.json: Callable[[dict[str, Any]], str] = json.dumps
        self._sqlite_ids: range = range(0)

    # -- reads ---------------------------------------------------------------------------------

    def _keys(self, column: str, keys: Sequence[Any], cast_to: str = "text") -> tuple[str, Any]:
        """`column IN keys` as SQL with one text parameter: split into an array by PostgreSQL,
        read as a JSON array by SQLite. Thousands of parameters, or an array parameter, cost
        the client more to send than the server needs to look them up. Keys never hold a
        newline: VINs, serials and ids are validated printable.
        """
        if self.postgresql:
            return (
                f"{column} = ANY(string_to_array(%s, E'\\n')::{cast_to}[])",
                "\n".join(map(str, keys)),
            )
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(list(keys))

    def _rows(self, sql: str, param: Any) -> list[tuple[Any, ...]]:
        cursor = self.conn.exec_driver_sql(sql, (param,))
        return [tuple(row) for row in cursor.fetchall()]

    def _datetime(self, value: Any) -> Any:
        # psycopg hands out aware datetimes; SQLite stores naive UTC text.
        if value is None or self.postgresql:
            return value
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def stored_vehicles(self, vins: Sequence[str]) -> dict[str, StoredVehicle]:
        if not vins:
            return {}
        where, param = self._keys("vin", vins)
        rows = self._rows(
            "SELECT id, vin, engine_number, chassis_number, model, model_year, fuel_type, "
            "region, country, manufactured_at, vehicle_public_key, rxswin, attributes, "
            f"exported_at FROM vehicles WHERE {where}",
            param,
        )
        when, decode = self._datetime, (lambda a: a) if self.postgresql else json.loads
        return {
            r[1]: StoredVehicle(
                r[0], r[1], (*r[2:9], when(r[9]), r[10], r[11], decode(r[12]) or {}), when(r[13])
            )
            for r in rows
        }

    def _stored_ecus(self, where: str, param: Any) -> list[StoredEcu]:
        rows = self._rows(
            "SELECT e.id, e.serial, e.vehicle_id, v.vin, v.exported_at, e.ecu_type, "
            "e.hardware_part_number, e.hardware_version, e.protocol, e.software_part_number, "
            "e.software_version, e.calibration_id, e.software_source, e.software_observed_at, "
            f"e.import_id, e.removed_at FROM ecus e JOIN vehicles v ON v.id = e.vehicle_id "
            f"WHERE {where}",
            param,
        )
        when = self._datetime
        return [
            StoredEcu(
                r[0],
                r[1],
                r[2],
                r[3],
                when(r[4]),
                r[5:9],
                r[9:12],
                r[12],
                when(r[13]),
                r[14],
                when(r[15]),
            )
            for r in rows
        ]

    def ecus_by_serial(self, serials: Sequence[str]) -> list[StoredEcu]:
        return self._stored_ecus(*self._keys("e.serial", serials)) if serials else []

    def active_ecus_of(self, vehicle_ids: Sequence[int]) -> list[StoredEcu]:
        if not vehicle_ids:
            return []
        where, param = self._keys("e.vehicle_id", vehicle_ids, "bigint")
        return self._stored_ecus(f"{where} AND e.removed_at IS NULL", param)

    # -- ids -----------------------------------------------------------------------------------

    def vehicle_ids(self, count: int, engine: Engine) -> Iterator[int]:
        """At least `count` ids for new vehicles, reserved before their rows are written.

        PostgreSQL draws them from the table's sequence. SQLite has none: ids come in blocks
        from `id_allocations`, reserved in a short write transaction of their own.
        """
        if count == 0:
            return iter(())
        if self.postgresql:
            result = self.conn.exec_driver_sql(
                "SELECT nextval('vehicles_id_seq') FROM generate_series(1, %s)", (count,)
            )
            return iter([row[0] for row in result])
        if len(self._sqlite_ids) < count:
            size = max(count, SQLITE_ID_BLOCK)
            if self.conn.in_transaction():
                # Already the writer (a strict import): allocate inside its transaction.
                start = self._allocate(self.conn, size)
            else:
                immediate = engine.connect().execution_options(sqlite_begin="IMMEDIATE")
                with immediate as conn, conn.begin():
                    start = self._allocate(conn, size)
            self._sqlite_ids = range(start, start + size)
        ids, self._sqlite_ids = self._sqlite_ids[:count], self._sqlite_ids[count:]
        return iter(ids)

    @staticmethod
    def _allocate(conn: Connection, size: int) -> int:
        stored = conn.exec_driver_sql(
            "SELECT next_id FROM id_allocations WHERE name = 'vehicles'"
        ).scalar()
        top = conn.exec_driver_sql("SELECT coalesce(max(id), 0) + 1 FROM vehicles").scalar_one()
        start = max(int(stored or 1), int(top))
        conn.exec_driver_sql(
            "INSERT INTO id_allocations (name, next_id) VALUES ('vehicles', ?) "
            "ON CONFLICT (name) DO UPDATE SET next_id = excluded.next_id",
            (start + size,),
        )
        return start

    # -- writes --------------------------------------------------------------------------------

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.postgresql:
            raw = self.conn.connection.driver_connection
            assert raw is not None
            types = [PG_TYPES.get(c, "text") for c in columns]
            # Binary COPY spares both sides formatting and parsing timestamps and numbers;
            # JSON documents go as text, which the server reads as such.
            binary = "jsonb" not in types
            sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            with (
                raw.cursor() as cursor,
                cursor.copy(sql + (" (FORMAT BINARY)" if binary else "")) as copy,
            ):
                if binary:
                    copy.set_types(types)
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
