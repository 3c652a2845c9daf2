"""Tables of the fleet registry: vehicles, their ECUs, ECU history and fleet imports.

Nothing about a vehicle is ever deleted: vehicles change status, ECUs that leave a vehicle get
`removed_at`, and every superseded ECU state is kept in `ecu_history`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, JSONDocument, UTCDateTime

# SQLite only makes INTEGER PRIMARY KEY columns row ids; PostgreSQL gets 64-bit keys.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class FleetImport(Base):
    __tablename__ = "fleet_imports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_name: Mapped[str] = mapped_column(String(500))
    format: Mapped[str | None] = mapped_column(String(10))
    compressed: Mapped[bool] = mapped_column(default=False)
    strict: Mapped[bool] = mapped_column(default=False)
    # running → completed | failed; "completed" may still have rejected records.
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    counts: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str | None] = mapped_column(String(200))


class FleetImportRejection(Base):
    __tablename__ = "fleet_import_rejections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("fleet_imports.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    vin: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)


class Vehicle(Base):
    __tablename__ = "vehicles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), unique=True)
    engine_number: Mapped[str] = mapped_column(String(64))
    chassis_number: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    model_year: Mapped[int] = mapped_column(Integer)
    fuel_type: Mapped[str] = mapped_column(String(20))
    region: Mapped[str] = mapped_column(String(20))
    country: Mapped[str] = mapped_column(String(2))
    manufactured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The export time of the data held: an older export never overwrites it.
    exported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # active | inactive | scrapped
    status: Mapped[str] = mapped_column(String(20), default="active")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    vehicle_public_key: Mapped[str | None] = mapped_column(Text)
    rxswin: Mapped[str | None] = mapped_column(Text)
    import_id: Mapped[int | None] = mapped_column(ForeignKey("fleet_imports.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_vehicles_model_year", "model", "model_year"),
        Index("ix_vehicles_region_country", "region", "country"),
        Index("ix_vehicles_fuel_type", "fuel_type"),
    )


class Ecu(Base):
    __tablename__ = "ecus"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Not a foreign key, like import_id: the per-row check of 13 million rows would cost the
    # bulk import a quarter of its time. Vehicles are never deleted and ECU rows are written
    # only with an id read from, or reserved for, the vehicles table in the same transaction.
    vehicle_id: Mapped[int] = mapped_column(BigId)
    ecu_type: Mapped[str] = mapped_column(String(32))
    # Compared byte by byte on PostgreSQL too (migration 0014): an identifier, not a word.
    # Unique by an index of its own (migration 0015), which a first load may set aside.
    serial: Mapped[str] = mapped_column(
        String(64).with_variant(String(64, collation="C"), "postgresql")
    )
    hardware_part_number: Mapped[str] = mapped_column(String(64))
    hardware_version: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(16))
    software_part_number: Mapped[str] = mapped_column(String(64))
    software_version: Mapped[str] = mapped_column(String(64))
    calibration_id: Mapped[str | None] = mapped_column(String(64))
    # Where the installed software is known from (import | manifest | update) and as of when:
    # a manufacturing export older than a vehicle's own manifest never overwrites it.
    software_source: Mapped[str] = mapped_column(String(16))
    software_observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The import that last wrote this row (imports are never deleted).
    import_id: Mapped[int | None] = mapped_column(BigId)
    # Set when the ECU left its vehicle (replaced, or dropped from a newer export).
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("uq_ecus_serial", "serial", unique=True),
        Index("ix_ecus_vehicle_id", "vehicle_id"),
        # Targeting and search name the ECU type, then the installed version or the hardware.
        Index("ix_ecus_type_software", "ecu_type", "software_version"),
        Index("ix_ecus_type_hardware", "ecu_type", "hardware_part_number", "hardware_version"),
    )


class EcuHistory(Base):
    """One row per superseded state of an ECU: the state it had, and what replaced it."""

    __tablename__ = "ecu_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ecu_id: Mapped[int] = mapped_column(ForeignKey("ecus.id"), index=True)
    # software | hardware | moved | removed | returned
    change: Mapped[str] = mapped_column(String(16))
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"))
    hardware_part_number: Mapped[str] = mapped_column(String(64))
    hardware_version: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(16))
    software_part_number: Mapped[str] = mapped_column(String(64))
    software_version: Mapped[str] = mapped_column(String(64))
    calibration_id: Mapped[str | None] = mapped_column(String(64))
    software_source: Mapped[str] = mapped_column(String(16))
    software_observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    import_id: Mapped[int | None] = mapped_column(ForeignKey("fleet_imports.id"))
    # The change: which import (or other source) made it, the evidence time, when recorded.
    changed_by_import_id: Mapped[int | None] = mapped_column(ForeignKey("fleet_imports.id"))
    changed_to_vehicle_id: Mapped[int | None] = mapped_column(ForeignKey("vehicles.id"))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdAllocation(Base):
    """SQLite's stand-in for a sequence: the next free id of a table, handed out in blocks.

    The importer plans a batch while the previous one is being written, so it needs vehicle
    ids before that write commits; PostgreSQL uses the table's own sequence instead.
    """

    __tablename__ = "id_allocations"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_id: Mapped[int] = mapped_column(BigInteger)
