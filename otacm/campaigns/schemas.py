"""API shapes of campaigns: definition, approval decisions, what comes back."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from otacm.campaigns.policy import RolloutPolicy
from otacm.targeting.schemas import RegionRestriction
from otacm.targeting.selection import TargetSelection


class CampaignState(StrEnum):
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class CampaignCategory(StrEnum):
    SECURITY_PATCH = "security_patch"
    BUG_FIX = "bug_fix"
    FEATURE = "feature"
    RECALL = "recall"
    CALIBRATION = "calibration"
    OTHER = "other"


class Urgency(StrEnum):
    IMMEDIATE = "immediate"
    SCHEDULED = "scheduled"


# Categories whose immediate campaigns may install without the owner's consent.
SAFETY_CATEGORIES = frozenset({CampaignCategory.SECURITY_PATCH, CampaignCategory.RECALL})

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=200)]
NoticeText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


class UserNotice(BaseModel):
    """What the vehicle's screen and the owner app tell the customer, in one language."""

    model_config = ConfigDict(extra="forbid")

    purpose: NoticeText
    what_changes: NoticeText
    expected_duration_minutes: int = Field(ge=1, le=24 * 60)
    functions_unavailable: list[NoticeText] = Field(default_factory=list)
    instructions: NoticeText


class CampaignFields(BaseModel):
    """Every field of a campaign a manager edits; all optional for a partial change."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    category: CampaignCategory | None = None
    urgency: Urgency | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    priority: int | None = Field(default=None, ge=1, le=1000, description="Higher goes first")
    update_ids: list[int] | None = Field(default=None, min_length=1, max_length=20)
    selection: TargetSelection | None = None
    regions: RegionRestriction | None = None
    consent_required: bool | None = None
    user_notice: dict[Language, UserNotice] | None = None
    rollout: RolloutPolicy | None = Field(
        default=None, description="Waves, retries, timeouts, maintenance windows"
    )

    @model_validator(mode="after")
    def _times(self) -> CampaignFields:
        for name in ("starts_at", "ends_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone offset")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class CampaignCreate(CampaignFields):
    name: Name
    category: CampaignCategory
    urgency: Urgency
    update_ids: list[int] = Field(min_length=1, max_length=20)
    user_notice: dict[Language, UserNotice] = Field(min_length=1)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] = ""


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=4000)]


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_vehicles: int = Field(
        ge=0,
        description="The eligible vehicle count the preview showed; a launch that would "
        "reach a different number (beyond the configured margin) is refused",
    )


class WaveOut(BaseModel):
    number: int
    size: int
    opened_at: datetime | None
    completed_at: datetime | None
    states: dict[str, int] = Field(default_factory=dict, description="Deployments per state")


class Operation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] = ""


class ProgressOut(BaseModel):
    finished: int = Field(description="Succeeded, or failed with no retry to come")
    withdrawn: int = Field(description="Declined, cancelled or expired: no verdict on the software")
    remaining: int = Field(description="Not yet finished (failures awaiting a retry included)")
    success_rate: float | None = Field(description="Succeeded, of those finished")
    failure_rate: float | None = Field(
        description="Failed for good, of those finished (the engine's failure share)"
    )
    throughput_per_hour: float | None = Field(
        description="Deployments finished or withdrawn per hour, on average since the start"
    )
    eta: datetime | None = Field(description="When the remaining would end at that rate")


class RetryRequest(Operation):
    failure_code: str | None = Field(
        default=None, max_length=64, description="Only the vehicles that failed with this code"
    )


class CampaignOut(BaseModel):
    id: int
    name: str
    state: CampaignState
    category: CampaignCategory
    urgency: Urgency
    starts_at: datetime | None
    ends_at: datetime | None
    priority: int
    update_ids: list[int]
    selection: TargetSelection
    regions: RegionRestriction
    consent_required: bool
    user_notice: dict[str, UserNotice]
    rollout: RolloutPolicy
    kind: str
    parent_id: int | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    submitted_at: datetime | None
    submitted_by: str | None
    decided_at: datetime | None
    decided_by: str | None
    decision_comment: str | None
    launched_at: datetime | None = None
    launched_by: str | None = None
    deployments: int = 0
    states: dict[str, int] = Field(default_factory=dict, description="Deployments per state")
    failure_codes: dict[str, int] = Field(default_factory=dict)
    waves: list[WaveOut] = Field(default_factory=list)
    progress: ProgressOut | None = None


class CampaignPage(BaseModel):
    items: list[CampaignOut]
    next_cursor: str | None


class DeploymentOut(BaseModel):
    id: int
    vin: str
    model: str
    region: str
    wave: int
    state: str
    attempts: int
    state_entered_at: datetime
    next_attempt_at: datetime | None
    failure_code: str | None
    failure_detail: str | None


class DeploymentEventOut(BaseModel):
    at: datetime
    event: str
    from_state: str
    to_state: str
    attempt: int
    failure_code: str | None
    detail: str | None
    source: str = Field(description="vehicle, engine or operator")


class DeploymentDetail(DeploymentOut):
    campaign_id: int
    versions: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per targeted ECU serial: its ECU type, the version before the offer and "
        "the version the manifest confirmed after",
    )
    events: list[DeploymentEventOut] = Field(description="Its history, oldest first")


class DeploymentPage(BaseModel):
    items: list[DeploymentOut]
    next_cursor: str | None
