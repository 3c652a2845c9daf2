"""An ECU serial's uniqueness is a unique index (`uq_ecus_serial`), no longer a constraint of
the `ecus` table.

SQLite cannot drop the index behind a table's UNIQUE constraint, so a first load into an empty
registry had to keep it up row by row: with 12 million random serials the index outgrows
the page cache and its upkeep was most of the load's time. A named unique index can be
dropped at the start of a first load and built from the loaded rows at its end, as on
PostgreSQL. The rule is the same: no two ECUs share a serial.

SQLite changes a table's constraints only by rebuilding it: copy the rows into a table of the
new shape, drop the old one, rename, and recreate the indexes (the procedure of SQLite's
documentation, "Making Other Kinds Of Table Schema Changes"). `ecu_history.ecu_id` refers to
`ecus.id`: foreign keys are off while the table is rebuilt, in a transaction of its own, and
checked before it commits.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COLUMNS = (
    "id, vehicle_id, ecu_type, serial, hardware_part_number, hardware_version, protocol, "
    "software_part_number, software_version, calibration_id, software_source, "
    "software_observed_at, import_id, removed_at, updated_at"
)
_SQLITE_TABLE = """
CREATE TABLE ecus_rebuilt (
    id INTEGER NOT NULL,
    vehicle_id INTEGER NOT NULL,
    ecu_type VARCHAR(32) NOT NULL,
    serial VARCHAR(64) NOT NULL,
    hardware_part_number VARCHAR(64) NOT NULL,
    hardware_version VARCHAR(32) NOT NULL,
    protocol VARCHAR(16) NOT NULL,
    software_part_number VARCHAR(64) NOT NULL,
    software_version VARCHAR(64) NOT NULL,
    calibration_id VARCHAR(64),
    software_source VARCHAR(16) NOT NULL,
    software_observed_at DATETIME NOT NULL,
    import_id INTEGER,
    removed_at DATETIME,
    updated_at DATETIME NOT NULL,
    CONSTRAINT pk_ecus PRIMARY KEY (id){unique}
)
"""
_SQLITE_INDEXES = (
    "CREATE INDEX ix_ecus_type_software ON ecus (ecu_type, software_version)",
    "CREATE INDEX ix_ecus_type_hardware ON ecus (ecu_type, hardware_part_number, hardware_version)",
    "CREATE INDEX ix_ecus_vehicle_id ON ecus (vehicle_id)",
)


def _rebuild_sqlite_ecus(*, unique_constraint: bool) -> None:
    # PRAGMA foreign_keys takes effect only outside a transaction, and the connection begins
    # one as soon as the migration runs: end it, rebuild in a transaction of its own with the
    # foreign keys off, then begin another for the migrations that follow.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    if driver.in_transaction:
        driver.execute("COMMIT")
    driver.execute("PRAGMA foreign_keys=OFF")
    driver.execute("BEGIN")
    try:
        unique = ",\n    CONSTRAINT uq_ecus_serial UNIQUE (serial)" if unique_constraint else ""
        driver.execute(_SQLITE_TABLE.format(unique=unique))
        driver.execute(f"INSERT INTO ecus_rebuilt ({_COLUMNS}) SELECT {_COLUMNS} FROM ecus")
        driver.execute("DROP TABLE ecus")
        driver.execute("ALTER TABLE ecus_rebuilt RENAME TO ecus")
        for statement in _SQLITE_INDEXES:
            driver.execute(statement)
        if not unique_constraint:
            driver.execute("CREATE UNIQUE INDEX uq_ecus_serial ON ecus (serial)")
        broken = driver.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"rebuilding ecus broke foreign keys: {broken[:5]}")
    except BaseException:
        driver.execute("ROLLBACK")
        raise
    else:
        driver.execute("COMMIT")
    finally:
        driver.execute("PRAGMA foreign_keys=ON")
        driver.execute("BEGIN")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_ecus(unique_constraint=False)
        return
    op.execute("ALTER TABLE ecus DROP CONSTRAINT uq_ecus_serial")
    op.execute("CREATE UNIQUE INDEX uq_ecus_serial ON ecus (serial)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_ecus(unique_constraint=True)
        return
    op.execute("DROP INDEX uq_ecus_serial")
    op.execute("ALTER TABLE ecus ADD CONSTRAINT uq_ecus_serial UNIQUE (serial)")
