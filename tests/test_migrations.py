"""The migrations build exactly the schema the models describe, on every engine."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import otacm.models  # noqa: F401  (every table on the metadata)
from otacm.db import Base, current_revision, head_revision, upgrade


def test_migrated_database_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []


def test_serial_unique_index_migration_keeps_the_fleet(engine: Engine) -> None:
    """0015 rebuilds `ecus` on SQLite (history rows refer to it): down to 0014 and up again,
    every row stays, and a serial is still unique."""
    import io

    import pytest
    from alembic import command
    from sqlalchemy import func, select, text
    from sqlalchemy.exc import IntegrityError

    from otacm.config import Settings
    from otacm.db import _alembic_config
    from otacm.fleet.importer import run_import
    from otacm.fleet.models import Ecu, EcuHistory, Vehicle
    from tests.builders import ecu, jsonl, vehicle

    def import_(records: list[dict[str, object]]) -> None:
        settings = Settings(database_url=engine.url.render_as_string(hide_password=False))
        run_import(engine, io.BytesIO(jsonl(records)), settings=settings, source_name="t")

    def contents() -> tuple[object, ...]:
        with engine.connect() as conn:
            return (
                conn.execute(select(Ecu.id, Ecu.serial, Ecu.vehicle_id).order_by(Ecu.id)).all(),
                conn.execute(select(func.count()).select_from(EcuHistory)).scalar_one(),
                conn.execute(select(func.count()).select_from(Vehicle)).scalar_one(),
            )

    command.downgrade(_alembic_config(engine), "0014")
    import_([vehicle(1), vehicle(2)])
    newer = "2025-06-01T00:00:00Z"
    import_([vehicle(2, exported_at=newer, ecus=[ecu("BCM-000001"), ecu("BCM-000002")])])
    before = contents()
    assert before[1] >= 1  # history refers to ECU rows
    upgrade(engine)
    assert contents() == before
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if conn.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        with pytest.raises(IntegrityError):
            conn.execute(
                text(
                    "INSERT INTO ecus (vehicle_id, ecu_type, serial, hardware_part_number, "
                    "hardware_version, protocol, software_part_number, software_version, "
                    "software_source, software_observed_at, updated_at) VALUES (1, 'BCM', "
                    "'BCM-000001', 'p', 'v', 'CAN', 's', '1', 'import', :t, :t)"
                ),
                {"t": "2025-01-01 00:00:00.000000"},
            )
