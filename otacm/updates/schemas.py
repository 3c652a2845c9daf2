"""API shapes of the update catalog: what an engineer sends to define an update, what comes back.

`UpdateFields` holds every editable field with its field-level rules; whether a draft is complete
enough to release is a separate check (`otacm.updates.rules.missing_for_release`) because drafts
are filled in over time.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from otacm.fleet.records import FuelType, Protocol
from otacm.updates import versions


class UpdateState(StrEnum):
    DRAFT = "draft"
    RELEASED = "released"
    WITHDRAWN = "withdrawn"


class UpdateCategory(StrEnum):
    SECURITY_PATCH = "security_patch"
    BUG_FIX = "bug_fix"
    FEATURE = "feature"
    RECALL = "recall"
    CALIBRATION = "calibration"
    OTHER = "other"


class SupportStatus(StrEnum):
    SUPPORTED = "supported"
    END_OF_SUPPORT = "end_of_support"


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=20_000)]
Version = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# The pattern is checked before the upper-casing, so it takes lower case too ("bcm" → "BCM").
EcuType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z0-9_]{1,32}$", max_length=32
    ),
]
PartNumber = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
HardwareVersion = Annotated[str, StringConstraints(min_length=1, max_length=32)]


def _check_version(value: str | None) -> None:
    if value is None:
        return
    # Raises ValueError for a number too long to order.
    if not versions.segments(value):
        raise ValueError(f"{value!r} has no digits or letters")


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


class Dependency(BaseModel):
    """Another ECU of the same vehicle must run a version in [min_version, max_version]."""

    model_config = ConfigDict(extra="forbid")

    ecu_type: EcuType
    min_version: Version | None = None
    max_version: Version | None = None

    # Field validators rather than one model validator, so that an error names its field.
    @field_validator("min_version", "max_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        _check_version(value)
        return value

    @field_validator("max_version")
    @classmethod
    def _bounds(cls, value: str | None, info: ValidationInfo) -> str | None:
        low = info.data.get("min_version")
        if low and value and versions.compare(low, value) > 0:
            raise ValueError(f"max_version {value} is below min_version {low}")
        return value


class Preconditions(BaseModel):
    """What the vehicle must be like before it may install."""

    model_config = ConfigDict(extra="forbid")

    parked: bool = True
    min_battery_percent: int | None = Field(default=None, ge=0, le=100)
    charging: bool = Field(default=False, description="Must be connected to a charger")
    ignition_off: bool = True


class SupportDetails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact: Text | None = None
    documentation_url: Annotated[
        str | None, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)
    ] = None
    end_of_support: date | None = None


class Regulatory(BaseModel):
    """The UNECE R156 documentation of a software update."""

    model_config = ConfigDict(extra="forbid")

    purpose: LongText | None = None
    affected_systems: list[Text] = Field(
        default_factory=list, description="Systems and functions the update changes"
    )
    type_approval_affected: bool = Field(
        default=False, description="Whether type-approved systems are touched"
    )
    rxswin_before: Text | None = None
    rxswin_after: Text | None = None
    execution_conditions: LongText | None = Field(
        default=None, description="How and under which conditions the update is executed"
    )
    safety_confirmed: bool = Field(
        default=False, description="Engineering confirms the update is safe and secure"
    )
    verification_reference: Text | None = Field(
        default=None, description="The verification and validation report"
    )


class UpdateFields(BaseModel):
    """Every field of a software update an engineer edits; all optional for a partial change."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    version: Version | None = None
    ecu_type: EcuType | None = None
    software_part_number: PartNumber | None = None
    protocol: Protocol | None = None
    category: UpdateCategory | None = None
    confidential: bool | None = Field(
        default=None, description="Store and deliver the files encrypted (AES-256-GCM)"
    )
    compatible_models: list[Text] | None = None
    model_year_min: int | None = Field(default=None, ge=1980, le=2100)
    model_year_max: int | None = Field(default=None, ge=1980, le=2100)
    fuel_types: list[FuelType] | None = None
    hardware_part_numbers: list[PartNumber] | None = None
    hardware_versions: list[HardwareVersion] | None = None
    applicable_versions: list[Version] | None = Field(
        default=None, description="Installed versions the update applies to"
    )
    applicable_version_min: Version | None = None
    applicable_version_max: Version | None = None
    dependencies: list[Dependency] | None = None
    release_notes: LongText | None = None
    support: SupportDetails | None = None
    estimated_install_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    preconditions: Preconditions | None = None
    install_order: int | None = Field(
        default=None, ge=0, le=1000, description="Lower installs first within one vehicle"
    )
    rollback_version: Version | None = None
    regulatory: Regulatory | None = None

    # Field validators rather than one model validator, so that an error names its field; a
    # bound is checked against the one declared before it (`info.data`).
    @field_validator(
        "version", "applicable_version_min", "applicable_version_max", "rollback_version"
    )
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        _check_version(value)
        return value

    @field_validator("applicable_versions")
    @classmethod
    def _versions(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            _check_version(value)
        return values

    @field_validator("model_year_max")
    @classmethod
    def _years(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("model_year_min")
        if low is not None and value is not None and low > value:
            raise ValueError(f"model_year_max {value} is below model_year_min {low}")
        return value

    @field_validator("applicable_version_max")
    @classmethod
    def _range(cls, value: str | None, info: ValidationInfo) -> str | None:
        low = info.data.get("applicable_version_min")
        if low and value and versions.compare(low, value) > 0:
            raise ValueError(
                f"applicable_version_max {value} is below applicable_version_min {low}"
            )
        return value

    @field_validator("dependencies")
    @classmethod
    def _one_per_ecu(cls, values: list[Dependency] | None) -> list[Dependency] | None:
        seen = [d.ecu_type for d in values or []]
        if len(seen) != len(set(seen)):
            raise ValueError("dependencies name an ECU type more than once")
        return values

    @model_validator(mode="after")
    def _deduplicated(self) -> UpdateFields:
        for name in (
            "compatible_models",
            "fuel_types",
            "hardware_part_numbers",
            "hardware_versions",
            "applicable_versions",
        ):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, _unique(values))
        return self


class UpdateCreate(UpdateFields):
    """A new draft: the identity of the update is required, everything else can follow."""

    name: Text
    version: Version
    ecu_type: EcuType
    software_part_number: PartNumber
    protocol: Protocol
    category: UpdateCategory


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: LongText | None = None


class WithdrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=2000)]


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    filename: str
    length: int = Field(description="Bytes delivered to vehicles (encrypted when confidential)")
    sha256: str
    plaintext_length: int
    plaintext_sha256: str
    encrypted: bool
    target_path: str | None = Field(description="Path in the TUF image repository once released")
    download_url: str | None
    uploaded_at: datetime
    uploaded_by: str


class UpdateOut(BaseModel):
    id: int
    state: UpdateState
    name: str
    version: str
    ecu_type: str
    software_part_number: str
    protocol: Protocol
    category: UpdateCategory
    confidential: bool
    compatible_models: list[str]
    model_year_min: int | None
    model_year_max: int | None
    fuel_types: list[FuelType]
    hardware_part_numbers: list[str]
    hardware_versions: list[str]
    applicable_versions: list[str]
    applicable_version_min: str | None
    applicable_version_max: str | None
    dependencies: list[Dependency]
    release_notes: str
    support: SupportDetails
    support_status: SupportStatus
    estimated_install_minutes: int | None
    preconditions: Preconditions
    install_order: int
    rollback_version: str | None
    regulatory: Regulatory
    release_counter: int | None
    artifacts: list[ArtifactOut]
    created_at: datetime
    created_by: str
    updated_at: datetime
    released_at: datetime | None
    released_by: str | None
    withdrawn_at: datetime | None
    withdrawn_by: str | None
    withdrawal_reason: str | None


class UpdatePage(BaseModel):
    items: list[UpdateOut]
    next_cursor: str | None
