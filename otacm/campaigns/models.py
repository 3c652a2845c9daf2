"""Tables of campaigns: what a campaign carries, whom it targets, how it rolls out, who approved.

The selection, region rules, user notice and rollout policy (waves, retries, timeouts,
maintenance windows) are JSON documents validated by their schemas (`otacm.targeting.selection`,
`otacm.campaigns.policy`, `otacm.campaigns.schemas`): they are read and written whole.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, JSONDocument, UTCDateTime
from otacm.fleet.models import BigId


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_state_priority", "state", "priority"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    category: Mapped[str] = mapped_column(String(32))
    # immediate | scheduled
    urgency: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    priority: Mapped[int] = mapped_column(Integer)
    # draft → pending_approval → approved (→ launched later); pending_approval → rejected → draft
    state: Mapped[str] = mapped_column(String(24))
    selection: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    regions: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    consent_required: Mapped[bool] = mapped_column(default=True)
    # {"en": {"purpose": ..., "what_changes": ..., ...}, "de": {...}}
    user_notice: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    rollout: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    # The vehicle count the submitter saw in the preview: launching checks it again.
    expected_vehicles: Mapped[int | None] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    # normal | retry | rollback
    kind: Mapped[str] = mapped_column(String(16), default="normal")

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decision_comment: Mapped[str | None] = mapped_column(Text)
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    launched_by: Mapped[str | None] = mapped_column(String(200))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A dynamic campaign: when the engine last let newly eligible vehicles join.
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The engine's bookmarks: the time something is next due (a timeout, a retry, the soak
    # time's end; None: look at once) and the newest tally it has seen (a newer one means a
    # deployment moved). A tick passes over a campaign with neither.
    wake_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tallies_seen: Mapped[int | None] = mapped_column(BigInteger)


class CampaignWave(Base):
    """One wave of a launched campaign: its size is fixed at launch (wave 0 is the canary)."""

    __tablename__ = "campaign_waves"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the wave first met its success threshold: the soak time runs from here.
    threshold_met_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The wave's counts when an operator resumed it: failures before that were accepted.
    resumed_with: Mapped[dict[str, int] | None] = mapped_column(JSONDocument)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Deployment(Base):
    """One vehicle in one campaign; its state follows `otacm.campaigns.states`."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("campaign_id", "vehicle_id"),
        # The engine's timeout sweep reads in-flight deployments by how long they have waited.
        Index("ix_deployments_campaign_state", "campaign_id", "state", "state_entered_at"),
        Index("ix_deployments_campaign_wave", "campaign_id", "wave"),
        Index("ix_deployments_vehicle_state", "vehicle_id", "state"),
        # The few with a retry planned: counted for progress and wave verdicts, and the engine's
        # next retry time, without reading a campaign's other deployments.
        Index(
            "ix_deployments_retry_planned",
            "campaign_id",
            "next_attempt_at",
            postgresql_where=text("next_attempt_at IS NOT NULL"),
            sqlite_where=text("next_attempt_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigId)
    # Not foreign keys, like ECUs: a launch writes up to millions of rows at once.
    vehicle_id: Mapped[int] = mapped_column(BigId)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state_entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_detail: Mapped[str | None] = mapped_column(Text)
    # Per ECU serial: {"ecu_type", "before", "after"}: the software when it was offered and when
    # the vehicle's manifest confirmed the update (the R156 record, `report.py`).
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentEventRecord(Base):
    """One applied move of a deployment: its history (`ledger.py`)."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(BigId)
    campaign_id: Mapped[int] = mapped_column(BigId)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(24))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    failure_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    # vehicle | engine | operator
    source: Mapped[str] = mapped_column(String(16))


class DeploymentTally(Base):
    """A change in how many deployments of a campaign's wave are in a state (with a failure
    code): progress is the sum, so reading it never scans the deployments (`ledger.py`)."""

    __tablename__ = "deployment_tallies"
    # The newest per campaign is one index probe (the engine's tick asks it of every campaign).
    # Ids only grow, also on SQLite after `compact` deletes the newest rows: the engine's
    # bookmark compares them.
    __table_args__ = (
        Index("ix_deployment_tallies_campaign", "campaign_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigId)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    delta: Mapped[int] = mapped_column(BigInteger)


class CampaignUpdate(Base):
    """A released update a campaign carries (one per ECU type)."""

    __tablename__ = "campaign_updates"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    update_id: Mapped[int] = mapped_column(ForeignKey("software_updates.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
