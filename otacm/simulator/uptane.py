"""Uptane full verification of an offer: do the director and the image repository agree?

Pure: no network, no files. The client refreshes both repositories with python-tuf (which
proves each metadata file is signed, fresh and not rolled back), then hands what they say to
`verify_offer`. That is where the Uptane checks happen: python-tuf verifies each repository on
its own; only this module knows that the two must describe the same bytes for the same ECU.

What is checked, in the order of docs/vehicle-api.md ("What the reference client checks"):

1. the director's targets metadata names this vehicle's VIN (`signed.custom.vin`);
2. for each step of the offer, the director has a target for the ECU (`ecu_identifier`, or an
   entry of `ecus` when two ECUs share one file) carrying the offer's deployment id;
3. the image repository has a target at the same path with the same length and hashes;
4. the hardware id is the ECU's own, and one the image lists in `hardware_ids`;
5. the release counter of the image is the director's, and not lower than the ECU runs now;

and once downloaded, the file's length and SHA-256 (`check_file`) and, for a confidential
image, the plaintext's (`check_plaintext`). Every refusal raises `VerificationFailed` with an
`AttackKind` (what goes into the manifest's `attacks_detected`) and a reason for a human.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile, Targets

from otacm.simulator.wire import Offer, Step


class AttackKind(StrEnum):
    """What a refusal suggests someone tried; the `kind` of an `attacks_detected` entry."""

    INVALID_METADATA = "invalid_metadata"  # python-tuf refused a file: forged, replayed, expired
    WRONG_VEHICLE = "wrong_vehicle"  # director metadata made for another vehicle
    MISSING_INSTRUCTION = "missing_instruction"  # offered, but the director does not say so
    METADATA_MISMATCH = "metadata_mismatch"  # director, image repository or offer disagree
    HARDWARE_MISMATCH = "hardware_mismatch"  # an image for other hardware
    ROLLBACK = "rollback"  # a release counter lower than the installed one
    TAMPERED_IMAGE = "tampered_image"  # downloaded bytes that are not the signed ones
    DECRYPTION_FAILED = "decryption_failed"  # a key or ciphertext that does not authenticate


class VerificationFailed(Exception):
    """An update refused by a check; `reason` says which and why, for the `failed` event."""

    def __init__(self, kind: AttackKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DirectorTargets:
    """The director's verified targets metadata for this vehicle."""

    vin: str | None
    targets: Mapping[str, TargetFile]

    @classmethod
    def from_signed(cls, signed: Targets) -> DirectorTargets:
        custom = signed.unrecognized_fields.get("custom")
        vin = custom.get("vin") if isinstance(custom, dict) else None
        return cls(vin=vin if isinstance(vin, str) else None, targets=dict(signed.targets))


@dataclass(frozen=True, slots=True)
class EcuFacts:
    """What the vehicle itself knows of one of its ECUs (never what the server says)."""

    serial: str
    ecu_type: str
    hardware_id: str
    release_counter: int  # of the image it runs; 0 for software as built


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """A step that passed every metadata check: what to download and what to expect."""

    step: Step
    target: TargetFile  # as the image repository signed it
    version: str
    release_counter: int
    encrypted: bool
    plaintext_sha256: str | None
    plaintext_length: int | None

    @property
    def sha256(self) -> str:
        return str(self.target.hashes["sha256"])


def custom_of(target: TargetFile) -> dict[str, Any]:
    custom = target.unrecognized_fields.get("custom")
    return custom if isinstance(custom, dict) else {}


def check_vehicle(director: DirectorTargets, vin: str) -> None:
    if director.vin != vin:
        raise VerificationFailed(
            AttackKind.WRONG_VEHICLE,
            f"the director targets metadata names VIN {director.vin!r}, not this vehicle's {vin}",
        )


def _ecu_entries(custom: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The (ecu_identifier, hardware_id) entries of a director target: `ecus` when two ECUs
    share the file, else the target's own fields."""
    shared = custom.get("ecus")
    if isinstance(shared, list) and shared:
        return [e for e in shared if isinstance(e, Mapping)]
    return [custom]


def director_instruction(
    director: DirectorTargets, step: Step
) -> tuple[TargetFile, Mapping[str, Any], Mapping[str, Any]]:
    """The director's target for the step's file and ECU: the target, its custom fields and
    the ECU's own entry in them."""
    target = director.targets.get(step.target)
    if target is not None:
        custom = custom_of(target)
        for entry in _ecu_entries(custom):
            if entry.get("ecu_identifier") == step.ecu_serial:
                return target, custom, entry
    elsewhere = sorted(
        t.path
        for t in director.targets.values()
        if any(e.get("ecu_identifier") == step.ecu_serial for e in _ecu_entries(custom_of(t)))
    )
    if elsewhere:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"the offer names {step.target} for ECU {step.ecu_serial}, the director "
            f"{', '.join(elsewhere)}",
        )
    raise VerificationFailed(
        AttackKind.MISSING_INSTRUCTION, f"the director lists no image for ECU {step.ecu_serial}"
    )


def _agree(director: TargetFile, image: TargetFile, path: str) -> None:
    if director.length != image.length:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"{path}: the director says {director.length} bytes, the image repository "
            f"{image.length}",
        )
    if "sha256" not in director.hashes or "sha256" not in image.hashes:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH, f"{path}: a SHA-256 is missing from the metadata"
        )
    for algorithm in sorted(set(director.hashes) & set(image.hashes)):
        if director.hashes[algorithm] != image.hashes[algorithm]:
            raise VerificationFailed(
                AttackKind.METADATA_MISMATCH,
                f"{path}: the director's {algorithm} {director.hashes[algorithm]} differs from "
                f"the image repository's {image.hashes[algorithm]}",
            )


def _counter(value: Any, whose: str, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH, f"{path}: {whose} has no release counter"
        )
    return value


def verify_step(
    step: Step,
    *,
    deployment_id: int,
    director: DirectorTargets,
    image_target: TargetFile | None,
    ecu: EcuFacts,
) -> VerifiedImage:
    """Checks 2 to 5 for one step; raises VerificationFailed naming the first that fails."""
    instruction, director_custom, entry = director_instruction(director, step)
    path = instruction.path
    if director_custom.get("deployment_id") != deployment_id:
        raise VerificationFailed(
            AttackKind.MISSING_INSTRUCTION,
            f"the director's image for ECU {step.ecu_serial} belongs to deployment "
            f"{director_custom.get('deployment_id')!r}, not {deployment_id}",
        )
    if image_target is None:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH, f"the image repository has no target {path}"
        )
    _agree(instruction, image_target, path)
    if step.length != image_target.length or step.sha256 != image_target.hashes["sha256"]:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"{path}: the offer's length or SHA-256 differs from the signed metadata",
        )
    image = custom_of(image_target)
    update_ids = {step.update_id, director_custom.get("update_id"), image.get("update_id")}
    if len(update_ids) != 1:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"{path}: the offer, director and image repository name different updates",
        )
    if entry.get("hardware_id") != ecu.hardware_id:
        raise VerificationFailed(
            AttackKind.HARDWARE_MISMATCH,
            f"{path}: the director addresses hardware {entry.get('hardware_id')!r}; ECU "
            f"{ecu.serial} is {ecu.hardware_id}",
        )
    accepted = image.get("hardware_ids")
    if not isinstance(accepted, list) or ecu.hardware_id not in accepted:
        raise VerificationFailed(
            AttackKind.HARDWARE_MISMATCH,
            f"{path}: the image is for hardware {accepted!r}, not ECU {ecu.serial}'s "
            f"{ecu.hardware_id}",
        )
    if image.get("ecu_type") != ecu.ecu_type:
        raise VerificationFailed(
            AttackKind.HARDWARE_MISMATCH,
            f"{path}: the image is for a {image.get('ecu_type')!r}, ECU {ecu.serial} is a "
            f"{ecu.ecu_type}",
        )
    counter = _counter(image.get("release_counter"), "the image repository", path)
    if _counter(director_custom.get("release_counter"), "the director", path) != counter:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"{path}: the director's release counter {director_custom.get('release_counter')} "
            f"differs from the image repository's {counter}",
        )
    if counter < ecu.release_counter:
        raise VerificationFailed(
            AttackKind.ROLLBACK,
            f"{path}: release counter {counter} is lower than the {ecu.release_counter} "
            f"ECU {ecu.serial} runs",
        )
    version = image.get("version")
    if version != step.version:
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH,
            f"{path}: the offer says version {step.version}, the image repository {version!r}",
        )
    encrypted = image.get("encrypted") is True
    plaintext_sha256 = image.get("plaintext_sha256")
    plaintext_length = image.get("plaintext_length")
    if encrypted and not isinstance(plaintext_sha256, str):
        raise VerificationFailed(
            AttackKind.METADATA_MISMATCH, f"{path}: an encrypted image without plaintext_sha256"
        )
    return VerifiedImage(
        step=step,
        target=image_target,
        version=step.version,
        release_counter=counter,
        encrypted=encrypted,
        plaintext_sha256=plaintext_sha256 if encrypted else None,
        plaintext_length=plaintext_length if isinstance(plaintext_length, int) else None,
    )


def verify_offer(
    offer: Offer,
    *,
    vin: str,
    director: DirectorTargets,
    image_targets: Mapping[str, TargetFile | None],
    ecus: Mapping[str, EcuFacts],
) -> list[VerifiedImage]:
    """Every check before download, for every step; the images to fetch, in install order.

    `image_targets` maps each step's target path to the image repository's target (None when
    it has none); `ecus` are the vehicle's own ECUs by serial.
    """
    check_vehicle(director, vin)
    verified: list[VerifiedImage] = []
    for step in offer.steps:
        ecu = ecus.get(step.ecu_serial)
        if ecu is None:
            raise VerificationFailed(
                AttackKind.WRONG_VEHICLE, f"ECU {step.ecu_serial} is not an ECU of this vehicle"
            )
        verified.append(
            verify_step(
                step,
                deployment_id=offer.deployment_id,
                director=director,
                image_target=image_targets.get(step.target),
                ecu=ecu,
            )
        )
    return verified


def check_file(image: VerifiedImage, file: IO[bytes]) -> None:
    """The downloaded file is exactly the signed target (length and every hash)."""
    try:
        image.target.verify_length_and_hashes(file)
    except LengthOrHashMismatchError as exc:
        raise VerificationFailed(
            AttackKind.TAMPERED_IMAGE,
            f"{image.target.path}: the downloaded file is not the signed one: {exc}",
        ) from None


def check_plaintext(image: VerifiedImage, sha256: str, length: int) -> None:
    """A decrypted image is the plaintext the image repository signed."""
    if image.plaintext_length is not None and length != image.plaintext_length:
        raise VerificationFailed(
            AttackKind.TAMPERED_IMAGE,
            f"{image.target.path}: decrypted to {length} bytes, the image repository says "
            f"{image.plaintext_length}",
        )
    if sha256 != image.plaintext_sha256:
        raise VerificationFailed(
            AttackKind.TAMPERED_IMAGE,
            f"{image.target.path}: the decrypted image's SHA-256 {sha256} is not the signed "
            f"{image.plaintext_sha256}",
        )


def sha256_of(file: IO[bytes], chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex SHA-256, length) of a file from its current position to the end."""
    digest, length = hashlib.sha256(), 0
    while block := file.read(chunk):
        digest.update(block)
        length += len(block)
    return digest.hexdigest(), length
