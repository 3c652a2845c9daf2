"""API shapes of targeting: the preview request and answer, a vehicle's updates, compliance."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from otacm.fleet.records import Region
from otacm.targeting.eligibility import Reason
from otacm.targeting.selection import TargetSelection

Country = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")
]


class RegionRestriction(BaseModel):
    """Where the updates may go: empty lists allow every region and country."""

    model_config = ConfigDict(extra="forbid")

    allowed_regions: list[Region] = Field(default_factory=list)
    excluded_regions: list[Region] = Field(default_factory=list)
    allowed_countries: list[Country] = Field(default_factory=list)
    excluded_countries: list[Country] = Field(default_factory=list)


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    update_ids: list[int] = Field(min_length=1, max_length=20, description="Released updates")
    selection: TargetSelection = Field(default_factory=TargetSelection)
    regions: RegionRestriction = Field(default_factory=RegionRestriction)
    allow_downgrade: bool = Field(
        default=False, description="Only for an explicit rollback: installing an older version"
    )
    sample_size: int = Field(default=5, ge=0, le=100, description="Sample VINs per reason")


class ReasonCount(BaseModel):
    reason: Reason
    vehicles: int
    sample_vins: list[str]


class UpdateBrief(BaseModel):
    id: int
    name: str
    ecu_type: str
    version: str
    release_counter: int | None


class InstalledVersions(BaseModel):
    update_id: int
    ecu_type: str
    versions: dict[str, dict[Reason, int]] = Field(
        description="Installed version of the update's ECU type → vehicles per reason (vehicles"
        " whose model and fuel type fit the update; the ECU that got furthest)"
    )


class PreviewOut(BaseModel):
    updates: list[UpdateBrief]
    vehicles_selected: int
    vehicles_eligible: int
    ecus_eligible: int = Field(description="ECU updates: one per eligible vehicle and update")
    reasons: list[ReasonCount] = Field(description="Every reason with at least one vehicle")
    breakdowns: dict[str, dict[str, dict[Reason, int]]] = Field(
        description="model, model_year, fuel_type, region → value → vehicles per reason"
    )
    installed_versions: list[InstalledVersions]
    install_order: list[int] = Field(description="Update ids in the order a vehicle installs")


class UpdateVerdict(BaseModel):
    update: UpdateBrief
    reason: Reason
    ecu_serials: list[str] = Field(description="The ECUs that would take it (when eligible)")


class EcuCompliance(StrEnum):
    ON_LATEST = "on_latest"
    UPDATE_AVAILABLE = "update_available"
    BEHIND = "behind"
    IN_PROGRESS = "in_progress"
    NO_RELEASE = "no_release"


class EcuStatus(BaseModel):
    ecu_type: str
    serial: str
    hardware_part_number: str
    hardware_version: str
    installed_version: str
    latest_release: str | None = Field(description="Newest released version for its hardware")
    status: EcuCompliance


class VehicleUpdatesOut(BaseModel):
    vin: str
    applicable: list[UpdateVerdict]
    not_applicable: list[UpdateVerdict]
    ecus: list[EcuStatus]


class ComplianceRow(BaseModel):
    ecu_type: str
    model: str
    on_latest: int
    behind: int
    in_progress: int
    no_release: int


class ComplianceOut(BaseModel):
    rows: list[ComplianceRow]
