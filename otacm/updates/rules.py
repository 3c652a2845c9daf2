"""Pure rules of the update catalog: file names, completeness for release, support status."""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from otacm.errors import ValidationFailed
from otacm.updates import versions
from otacm.updates.models import SoftwareUpdate
from otacm.updates.schemas import SupportStatus

MAX_FILENAME_LENGTH = 255
# Vehicles and TUF target paths see this name; keep it to characters every file system takes.
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")


class InvalidFilename(ValidationFailed):
    code = "invalid_filename"


def check_filename(filename: str) -> str:
    """The artifact file name, or InvalidFilename saying what is wrong with it."""
    if not filename:
        raise InvalidFilename("filename is empty", field="filename")
    if len(filename) > MAX_FILENAME_LENGTH:
        raise InvalidFilename(
            f"filename is longer than {MAX_FILENAME_LENGTH} characters", field="filename"
        )
    if any(unicodedata.category(c)[0] == "C" for c in filename):
        raise InvalidFilename("filename contains control characters", field="filename")
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise InvalidFilename(
            f"filename {filename!r} is a path; send the bare file name", field="filename"
        )
    if not _FILENAME.match(filename):
        raise InvalidFilename(
            f"filename {filename!r} may only contain letters, digits and . _ + ~ -, "
            "and must start with a letter or digit",
            field="filename",
        )
    return filename


def check_ranges(update: SoftwareUpdate) -> None:
    """Raise ValidationFailed naming the upper bound when a range of the (edited) update is
    upside down: a partial edit can move one bound past the other one stored before."""
    low_year, high_year = update.model_year_min, update.model_year_max
    if low_year is not None and high_year is not None and low_year > high_year:
        raise ValidationFailed(
            f"model_year_max {high_year} is below model_year_min {low_year}",
            field="model_year_max",
        )
    low, high = update.applicable_version_min, update.applicable_version_max
    if low and high and versions.compare(low, high) > 0:
        raise ValidationFailed(
            f"applicable_version_max {high} is below applicable_version_min {low}",
            field="applicable_version_max",
        )


def missing_for_release(update: SoftwareUpdate, artifact_count: int) -> list[str]:
    """The fields a draft still lacks before it may be released, in a stable order."""
    missing: list[str] = []
    if artifact_count == 0:
        missing.append("artifacts")
    for name in ("compatible_models", "fuel_types", "hardware_part_numbers", "hardware_versions"):
        if not getattr(update, name):
            missing.append(name)
    if not update.release_notes.strip():
        missing.append("release_notes")
    if update.estimated_install_minutes is None:
        missing.append("estimated_install_minutes")
    if not update.support_contact:
        missing.append("support.contact")
    regulatory = update.regulatory or {}
    for name in ("purpose", "affected_systems", "execution_conditions", "verification_reference"):
        if not regulatory.get(name):
            missing.append(f"regulatory.{name}")
    if regulatory.get("type_approval_affected"):
        for name in ("rxswin_before", "rxswin_after"):
            if not regulatory.get(name):
                missing.append(f"regulatory.{name}")
    if not regulatory.get("safety_confirmed"):
        missing.append("regulatory.safety_confirmed")
    return missing


def support_status(update: SoftwareUpdate, today: date) -> SupportStatus:
    if update.end_of_support is not None and update.end_of_support < today:
        return SupportStatus.END_OF_SUPPORT
    return SupportStatus.SUPPORTED


def target_path(update_id: int, filename: str) -> str:
    """Where a released file sits in the image repository (under /tuf/image/targets/)."""
    return f"updates/{update_id}/{filename}"
