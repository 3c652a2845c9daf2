"""Tables of the vehicle side: credentials, what a vehicle last reported, security events,
the receipts that make vehicle events idempotent, and the notices sent to the customer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, JSONDocument, UTCDateTime
from otacm.fleet.models import BigId


class VehicleCredential(Base):
    """A vehicle's bearer credential, kept only as the SHA-256 of the token."""

    __tablename__ = "vehicle_credentials"
    __table_args__ = (
        Index("ix_vehicle_credentials_vehicle", "vehicle_id"),
        # The idle-poll index reads what was issued or revoked since its last look, each second
        # (`idle.py`); the second index holds only the revoked rows.
        Index("ix_vehicle_credentials_issued", "issued_at"),
        Index(
            "ix_vehicle_credentials_revoked",
            "revoked_at",
            postgresql_where=text("revoked_at IS NOT NULL"),
            sqlite_where=text("revoked_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(BigId)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    issued_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class VehicleOtaState(Base):
    """What the vehicle side knows of a vehicle beyond the registry: the key its manifests are
    signed with, and the counter of the last manifest accepted (a replay never is)."""

    __tablename__ = "vehicle_ota_state"

    vehicle_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Ed25519, base64 of the 32 raw bytes; None: manifests are accepted unsigned.
    signing_public_key: Mapped[str | None] = mapped_column(Text)
    report_counter: Mapped[int | None] = mapped_column(BigInteger)
    manifest_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class VehicleSecurityEvent(Base):
    """Something refused that may be an attack: a forged or replayed manifest, a revoked
    credential in use, or what the vehicle itself refused (`attacks_detected`)."""

    __tablename__ = "vehicle_security_events"
    __table_args__ = (Index("ix_vehicle_security_events_vehicle", "vehicle_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(BigId)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(48))
    detail: Mapped[str] = mapped_column(Text)


class VehicleEventReceipt(Base):
    """One event a vehicle sent, by the id it gave it: a second copy is acknowledged, never
    applied again."""

    __tablename__ = "vehicle_event_receipts"

    deployment_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(24))
    outcome: Mapped[str] = mapped_column(String(16))
    # The vehicle's clock, as it reported; `received_at` is the server's.
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomerNotice(Base):
    """A notice about a deployment for the customer (vehicle screen, owner app, CRM):
    scheduled, available, completed or failed, with the text as it was sent."""

    __tablename__ = "customer_notices"
    __table_args__ = (Index("ix_customer_notices_deployment", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(BigId)
    vehicle_id: Mapped[int] = mapped_column(BigId)
    campaign_id: Mapped[int] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    content: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
