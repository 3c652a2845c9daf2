"""Bulk reads and writes for the importer, on each engine's fast path.

PostgreSQL gets `COPY` through psycopg 3 and pipelined `executemany`; SQLite gets plain
`executemany` inside one large transaction. Everything here runs on the caller's connection and
transaction: nothing commits.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
)
from sqlalchemy import exc as sa_exc

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
        if self.postgresql:
            # Straight from psycopg, in binary: tuples as they come, without SQLAlchemy's row
            # objects or text parsing (a re-import reads 12 million ECU rows this way).
            if not self.conn.in_transaction():
                self.conn.begin()  # so that the caller's commit ends what this reads in
            raw = self.conn.connection.driver_connection
            assert raw is not None
            with raw.cursor(binary=True) as cursor:
                cursor.execute(sql, (param,))
                rows: list[tuple[Any, ...]] = cursor.fetchall()
                return rows
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

    def active_ecus_of(self, vehicles: Sequence[StoredVehicle]) -> list[StoredEcu]:
        """The ECUs fitted to `vehicles`: their owners are known, so no join is needed."""
        if not vehicles:
            return []
        by_id = {v.id: v for v in vehicles}
        where, param = self._keys("vehicle_id", list(by_id), "bigint")
        rows = self._rows(
            "SELECT id, serial, vehicle_id, ecu_type, hardware_part_number, hardware_version, "
            "protocol, software_part_number, software_version, calibration_id, "
            "software_source, software_observed_at, import_id FROM ecus "
            f"WHERE {where} AND removed_at IS NULL",
            param,
        )
        when = self._datetime
        ecus = []
        for r in rows:
            owner = by_id[r[2]]
            ecus.append(
                StoredEcu(
                    r[0],
                    r[1],
                    r[2],
                    owner.vin,
                    owner.exported_at,
                    r[3:7],
                    r[7:10],
                    r[10],
                    when(r[11]),
                    r[12],
                    None,
                )
            )
        return ecus

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

    def copy_text(self, table: str, columns: Sequence[str], text: str) -> None:
        """Rows already in COPY's text format (PostgreSQL)."""
        if not text:
            return
        raw = self.conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            copy.write(text)

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


# -- a first load into an empty registry -------------------------------------------------------

# Indexes whose upkeep row by row costs a first load most of its time: every secondary index
# of `ecus`, and the ones of `vehicles` that do not enforce the VIN's uniqueness (which stays,
# so that a VIN repeated across batches stops the load at once). Primary keys and indexes a
# foreign key depends on stay too. On PostgreSQL, at 12.6 million ECU rows, inserting into the
# unique serial index alone costs 135 s against 18 s to build it afterwards.
#
# Two ECU indexes stay up on PostgreSQL: their upkeep (vehicle id: appended, +8 s of server
# time; type and software version: few distinct keys, +36 s) costs about what building them
# at the end would (2.5 + 17 s with both cores), and is spread over the load instead of
# added after its last row.
PG_KEPT_UP_DURING_FIRST_LOAD = ("ix_ecus_vehicle_id", "ix_ecus_type_software")
_PG_DEFERRABLE_INDEXES = """
SELECT x.indexrelid::regclass::text, x.indrelid::regclass::text, pg_get_indexdef(x.indexrelid),
       quote_ident(c.conname), pg_get_constraintdef(c.oid)
FROM pg_index x
LEFT JOIN pg_constraint c
       ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid AND c.contype IN ('u', 'x')
WHERE x.indrelid IN ('ecus'::regclass, 'vehicles'::regclass)
  AND NOT x.indisprimary
  AND (x.indrelid = 'ecus'::regclass OR NOT x.indisunique)
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = x.indexrelid
  )
  AND NOT (x.indexrelid::regclass::text = ANY(%s))
ORDER BY x.indrelid::regclass::text, x.indexrelid::regclass::text
"""


class Registry:
    """What a first load does to the registry as a whole, on the connection it loads on:
    checks it is empty, takes it for itself, and sets its indexes aside until the end.
    Everything runs inside the caller's transaction, DDL included (transactional on both
    engines), so a rollback restores every index as it was."""

    def __init__(self, bulk: BulkIO) -> None:
        self.bulk = bulk
        self.conn = bulk.conn
        self._rebuild: list[str] = []

    def lock(self, timeout_s: float) -> bool:
        """Take `vehicles` and `ecus` for the transaction; False if others hold them longer
        than `timeout_s`. PostgreSQL needs the exclusive lock to drop indexes, and it keeps
        every other reader and writer of the two tables waiting until the load commits.
        On SQLite the transaction holds the database's write lock (BEGIN IMMEDIATE) and
        readers go on seeing the registry as it was."""
        if not self.bulk.postgresql:
            return True
        conn = self.conn
        previous = conn.exec_driver_sql("SHOW lock_timeout").scalar_one()
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'")
        try:
            conn.exec_driver_sql("LOCK TABLE vehicles, ecus IN ACCESS EXCLUSIVE MODE")
        except sa_exc.OperationalError as exc:
            if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                return False
            raise
        conn.exec_driver_sql("SELECT set_config('lock_timeout', %s, true)", (previous,))
        return True

    def is_empty(self) -> bool:
        return not self.conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM vehicles) OR EXISTS (SELECT 1 FROM ecus)"
        ).scalar_one()

    def may_set_indexes_aside(self) -> bool:
        """Whether this database user may drop and create the tables' indexes: only their
        owner may (PostgreSQL). A deployment whose importing user may only read and write
        rows imports batch by batch instead of failing."""
        if not self.bulk.postgresql:
            return True
        return bool(
            self.conn.exec_driver_sql(
                "SELECT bool_and(pg_has_role(current_user, relowner, 'USAGE')) FROM pg_class "
                "WHERE oid IN ('ecus'::regclass, 'vehicles'::regclass)"
            ).scalar_one()
        )

    def set_indexes_aside(self) -> None:
        conn = self.conn
        if self.bulk.postgresql:
            rows = conn.exec_driver_sql(
                _PG_DEFERRABLE_INDEXES, (list(PG_KEPT_UP_DURING_FIRST_LOAD),)
            ).all()
            for index, table, definition, constraint, constraint_definition in rows:
                if constraint:
                    conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
                    self._rebuild.append(
                        f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {constraint_definition}"
                    )
                else:
                    conn.exec_driver_sql(f"DROP INDEX {index}")
                    self._rebuild.append(definition)
            return
        # SQLite: the indexes of UNIQUE constraints (no `sql`) cannot be dropped, and stay.
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name IN ('ecus', 'vehicles') AND sql IS NOT NULL ORDER BY name"
        ).all()
        for name, definition in rows:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
            self._rebuild.append(definition)

    def rebuild_indexes(self, work_mem: str) -> None:
        """Build the indexes set aside, from the loaded rows: one sort each instead of a
        descent per row. Raises IntegrityError if the rows repeat a unique key."""
        conn = self.conn
        if self.bulk.postgresql:
            conn.exec_driver_sql("SELECT set_config('maintenance_work_mem', %s, true)", (work_mem,))
        for statement in self._rebuild:
            conn.exec_driver_sql(statement)
        if self.bulk.postgresql:
            # The planner's statistics for the queries that follow the load, committed with it.
            conn.exec_driver_sql("ANALYZE vehicles, ecus")

    # Vehicle ids: the load hands them out itself, from the first free one, and leaves the
    # next free one for later imports (PostgreSQL: the sequence, whose changes no rollback
    # undoes, so at worst ids are skipped; SQLite: `id_allocations`, within the transaction).

    def first_vehicle_id(self) -> int:
        if self.bulk.postgresql:
            return int(self.conn.exec_driver_sql("SELECT nextval('vehicles_id_seq')").scalar_one())
        return BulkIO._allocate(self.conn, 0)

    def ids_used_below(self, next_id: int) -> None:
        if self.bulk.postgresql:
            self.conn.exec_driver_sql("SELECT setval('vehicles_id_seq', %s, false)", (next_id,))
            return
        self.conn.exec_driver_sql(
            "UPDATE id_allocations SET next_id = ? WHERE name = 'vehicles'", (next_id,)
        )


def is_repeated_key(exc: BaseException) -> bool:
    """Whether `exc` is a unique key (VIN or ECU serial) written twice."""
    if isinstance(exc, sa_exc.IntegrityError):
        exc = exc.orig or exc
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return True
    return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(exc)
