"""The alerts table: raised by the rollout engine, acknowledged by an operator."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, JSONDocument, UTCDateTime
from otacm.fleet.models import BigId


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_open", "acknowledged_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # failure_threshold | timeout_spike | campaign_finished | end_time_reached
    kind: Mapped[str] = mapped_column(String(32))
    # warning | critical | info
    severity: Mapped[str] = mapped_column(String(16))
    campaign_id: Mapped[int | None] = mapped_column(BigId, index=True)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
