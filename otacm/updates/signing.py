"""Released files into the TUF image repository: the target entries vehicles verify against.

Each target's length and hashes describe the bytes as delivered (the ciphertext of a
confidential update); its custom fields carry what a vehicle and the director need to match an
image to an ECU: hardware identifiers, ECU type, release counter, update id and, for encrypted
files, the plaintext's length and hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.updates.models import SoftwareUpdate, UpdateArtifact


def target_custom(update: SoftwareUpdate, artifact: UpdateArtifact) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "update_id": update.id,
        "ecu_type": update.ecu_type,
        "hardware_ids": list(update.hardware_part_numbers),
        "hardware_versions": list(update.hardware_versions),
        "software_part_number": update.software_part_number,
        "version": update.version,
        "release_counter": update.release_counter,
        "encrypted": artifact.encrypted,
    }
    if artifact.encrypted:
        custom["plaintext_length"] = artifact.plaintext_length
        custom["plaintext_sha256"] = artifact.plaintext_sha256
    return custom


def hashed_target_path(artifact: UpdateArtifact) -> str:
    """The consistent-snapshot file name a TUF client asks for: `<dir>/<sha256>.<name>`."""
    assert artifact.target_path is not None
    directory, _, name = artifact.target_path.rpartition("/")
    return f"{directory}/{artifact.sha256}.{name}" if directory else f"{artifact.sha256}.{name}"


def sign_release(
    session: Session,
    settings: Settings,
    update: SoftwareUpdate,
    artifacts: Sequence[UpdateArtifact],
    now: datetime,
) -> None:
    """Add the update's files to the image repository in the caller's transaction."""
    from otacm.security.keys import KeyStore
    from otacm.security.tuf.repository import ImageRepository, TargetSpec

    targets = [
        TargetSpec(
            path=a.target_path or "",
            length=a.length,
            sha256=a.sha256,
            custom=target_custom(update, a),
        )
        for a in artifacts
    ]
    ImageRepository(settings).add_targets(session, KeyStore.from_settings(settings), targets, now)
