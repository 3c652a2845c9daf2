"""Tables of the update catalog: software updates, their artifacts and the release counters.

A software update is a draft until it is released; from then on only its withdrawal may change.
List-valued compatibility fields are JSON arrays (JSONB on PostgreSQL) because they are read as
a whole and filtered with "contains".
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, JSONDocument, UTCDateTime

BigId = BigInteger().with_variant(Integer(), "sqlite")
# `sortable_version` text orders correctly byte by byte; PostgreSQL needs the "C" collation.
VersionSortKey = String(600).with_variant(String(600, collation="C"), "postgresql")


class SoftwareUpdate(Base):
    __tablename__ = "software_updates"
    __table_args__ = (
        UniqueConstraint("ecu_type", "software_part_number", "version"),
        Index("ix_software_updates_catalog", "ecu_type", "version_sort"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    version_sort: Mapped[str] = mapped_column(VersionSortKey, index=True)
    ecu_type: Mapped[str] = mapped_column(String(32))
    software_part_number: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(32))
    # draft → released → withdrawn
    state: Mapped[str] = mapped_column(String(16), index=True)
    confidential: Mapped[bool] = mapped_column(default=False)

    compatible_models: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    model_year_min: Mapped[int | None] = mapped_column(Integer)
    model_year_max: Mapped[int | None] = mapped_column(Integer)
    fuel_types: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    hardware_part_numbers: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    hardware_versions: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    applicable_versions: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    applicable_version_min: Mapped[str | None] = mapped_column(String(100))
    applicable_version_max: Mapped[str | None] = mapped_column(String(100))
    # [{"ecu_type": "GATEWAY", "min_version": "3.2.0", "max_version": null}]
    dependencies: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, default=list)

    release_notes: Mapped[str] = mapped_column(Text, default="")
    support_contact: Mapped[str | None] = mapped_column(String(200))
    documentation_url: Mapped[str | None] = mapped_column(String(2000))
    end_of_support: Mapped[date | None] = mapped_column(Date)
    estimated_install_minutes: Mapped[int | None] = mapped_column(Integer)
    # {"parked": true, "min_battery_percent": 40, "charging": false, "ignition_off": true}
    preconditions: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    install_order: Mapped[int] = mapped_column(Integer, default=0)
    rollback_version: Mapped[str | None] = mapped_column(String(100))
    # The UNECE R156 documentation of the update (purpose, RXSWIN before/after, ...).
    regulatory: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)

    # The per-update data key of a confidential update, wrapped under the server key.
    wrapped_data_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    release_counter: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(200))
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_by: Mapped[str | None] = mapped_column(String(200))
    withdrawal_reason: Mapped[str | None] = mapped_column(Text)


class UpdateArtifact(Base):
    """One file of a software update, as stored (encrypted for confidential updates)."""

    __tablename__ = "update_artifacts"
    __table_args__ = (UniqueConstraint("update_id", "filename"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    update_id: Mapped[int] = mapped_column(ForeignKey("software_updates.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    # Length and SHA-256 of the bytes delivered to vehicles (the ciphertext when encrypted).
    length: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    plaintext_length: Mapped[int] = mapped_column(BigInteger)
    plaintext_sha256: Mapped[str] = mapped_column(String(64))
    encrypted: Mapped[bool] = mapped_column(default=False)
    storage_key: Mapped[str] = mapped_column(String(300))
    # Where the file sits in the TUF image repository once released.
    target_path: Mapped[str | None] = mapped_column(String(600), unique=True)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    uploaded_by: Mapped[str] = mapped_column(String(200))


class ReleaseCounter(Base):
    """The newest release counter handed out per ECU type and hardware part number."""

    __tablename__ = "release_counters"

    ecu_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    hardware_part_number: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
