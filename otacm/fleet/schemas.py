"""API shapes of the fleet registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EcuHistoryEntry(BaseModel):
    change: str = Field(description="software | hardware | moved | returned | removed")
    vehicle_vin: str | None = Field(description="The vehicle the ECU was in at the time")
    moved_to_vin: str | None = None
    hardware_part_number: str
    hardware_version: str
    protocol: str
    software_part_number: str
    software_version: str
    calibration_id: str | None
    software_source: str
    software_observed_at: datetime
    import_id: int | None = Field(description="The import the superseded state came from")
    changed_by_import_id: int | None
    changed_at: datetime
    recorded_at: datetime


class EcuOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ecu_type: str
    serial: str
    hardware_part_number: str
    hardware_version: str
    protocol: str
    software_part_number: str
    software_version: str
    calibration_id: str | None
    software_source: str = Field(description="import | manifest | update")
    software_observed_at: datetime
    import_id: int | None
    removed_at: datetime | None
    history: list[EcuHistoryEntry] = Field(
        default_factory=list, description="Superseded states, oldest first"
    )


class VehicleSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    vin: str
    engine_number: str
    chassis_number: str
    model: str
    model_year: int
    fuel_type: str
    region: str
    country: str
    manufactured_at: datetime
    exported_at: datetime
    status: str
    attributes: dict[str, Any]
    rxswin: str | None
    import_id: int | None
    created_at: datetime
    updated_at: datetime


class VehicleDetail(VehicleSummary):
    vehicle_public_key: str | None
    ecus: list[EcuOut]


class VehiclePage(BaseModel):
    items: list[VehicleSummary]
    next_cursor: str | None


class VehicleStatusChange(BaseModel):
    status: Literal["active", "inactive", "scrapped"]
    reason: str = Field(min_length=1, max_length=1000)


class RejectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    line: int
    vin: str | None
    field: str | None
    reason: str


class ImportCounts(BaseModel):
    records_read: int = 0
    records_rejected: int = 0
    vehicles_created: int = 0
    vehicles_updated: int = 0
    vehicles_unchanged: int = 0
    vehicles_stale: int = 0
    ecus_created: int = 0
    ecus_updated: int = 0
    ecus_replaced: int = 0
    ecus_removed: int = 0
    ecus_unchanged: int = 0


class ImportReportOut(BaseModel):
    id: int
    source_name: str
    format: str | None
    compressed: bool
    strict: bool
    status: str = Field(
        description="running | completed | completed_with_rejections | rejected | failed "
        "| interrupted"
    )
    started_at: datetime
    finished_at: datetime | None
    started_by: str | None
    error: str | None
    counts: ImportCounts
    rejections: list[RejectionOut] = Field(
        default_factory=list, description="The first rejected records; all are at .../rejections"
    )


class ImportPage(BaseModel):
    items: list[ImportReportOut]
    next_cursor: str | None


class RejectionPage(BaseModel):
    items: list[RejectionOut]
    next_cursor: str | None
