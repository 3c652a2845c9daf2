"""Uptane full verification: director and image metadata built by hand, every attack refused."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tuf.api.metadata import TargetFile, Targets

from otacm.simulator.uptane import (
    AttackKind,
    DirectorTargets,
    EcuFacts,
    VerificationFailed,
    check_file,
    check_plaintext,
    verify_offer,
)
from otacm.simulator.wire import Offer, parse_offer

VIN = "WVWZZZ1KZ6W000001"
PATH = "updates/7/bcm-4.2.0.bin"
CONTENT = b"BCM firmware 4.2.0 " * 1000
SHA256 = hashlib.sha256(CONTENT).hexdigest()
BCM = EcuFacts("BCM-7F3A21", "BCM", "5Q0937084", release_counter=2)
DEPLOYMENT = 4711


@dataclass
class Case:
    """One vehicle's view of an offer: what each party says, each open to tampering."""

    vin: str = VIN
    director_vin: str | None = VIN
    director_custom: dict[str, Any] = field(
        default_factory=lambda: {
            "ecu_identifier": BCM.serial,
            "hardware_id": BCM.hardware_id,
            "release_counter": 3,
            "deployment_id": DEPLOYMENT,
            "update_id": 7,
            "ecu_type": "BCM",
        }
    )
    director_path: str = PATH
    director_length: int = len(CONTENT)
    director_sha256: str = SHA256
    image_custom: dict[str, Any] = field(
        default_factory=lambda: {
            "update_id": 7,
            "ecu_type": "BCM",
            "hardware_ids": [BCM.hardware_id, "5Q0937085"],
            "hardware_versions": ["B2"],
            "version": "4.2.0",
            "release_counter": 3,
            "encrypted": False,
        }
    )
    image_length: int = len(CONTENT)
    image_sha256: str = SHA256
    image_present: bool = True
    offer_step: dict[str, Any] = field(
        default_factory=lambda: {
            "order": 1,
            "ecu_serial": BCM.serial,
            "ecu_type": "BCM",
            "update_id": 7,
            "version": "4.2.0",
            "from_version": "4.1.0",
            "target": PATH,
            "length": len(CONTENT),
            "sha256": SHA256,
            "encrypted": False,
            "estimated_install_minutes": 10,
        }
    )
    ecu: EcuFacts = BCM

    def offer(self) -> Offer:
        return parse_offer(
            {
                "deployment_id": DEPLOYMENT,
                "attempt": 1,
                "state": "offered",
                "campaign": {"id": 3, "name": "BCM 4.2.0", "urgency": "immediate"},
                "consent_required": True,
                "preconditions": {"parked": True, "min_battery_percent": 40},
                "maintenance_window": None,
                "steps": [self.offer_step],
            }
        )

    def director(self) -> DirectorTargets:
        target = TargetFile(
            self.director_length,
            {"sha256": self.director_sha256},
            self.director_path,
            {"custom": self.director_custom},
        )
        return DirectorTargets(vin=self.director_vin, targets={self.director_path: target})

    def image_target(self) -> TargetFile:
        return TargetFile(
            self.image_length, {"sha256": self.image_sha256}, PATH, {"custom": self.image_custom}
        )

    def verify(self) -> list[Any]:
        return verify_offer(
            self.offer(),
            vin=self.vin,
            director=self.director(),
            image_targets={PATH: self.image_target() if self.image_present else None},
            ecus={self.ecu.serial: self.ecu},
        )


def test_agreeing_metadata_passes_and_says_what_to_install() -> None:
    [image] = Case().verify()
    assert image.sha256 == SHA256
    assert image.target.length == len(CONTENT)
    assert (image.version, image.release_counter, image.encrypted) == ("4.2.0", 3, False)
    assert image.step.ecu_serial == BCM.serial


def test_the_same_release_counter_as_installed_is_not_a_rollback() -> None:
    assert Case(ecu=replace(BCM, release_counter=3)).verify()


def _set(**changes: Any) -> Callable[[Case], None]:
    def change(case: Case) -> None:
        for name, value in changes.items():
            setattr(case, name, value)

    return change


def _custom(which: str, **changes: Any) -> Callable[[Case], None]:
    def change(case: Case) -> None:
        getattr(case, which).update(changes)

    return change


OTHER_SHA = hashlib.sha256(b"something else").hexdigest()

ATTACKS = {
    "tampered hash in the image repository": (
        _set(image_sha256=OTHER_SHA),
        AttackKind.METADATA_MISMATCH,
        rf"the director's sha256 {SHA256} differs from the image repository's {OTHER_SHA}",
    ),
    "tampered hash in the director": (
        _set(director_sha256=OTHER_SHA),
        AttackKind.METADATA_MISMATCH,
        "differs from the image repository's",
    ),
    "length mismatch": (
        _set(image_length=len(CONTENT) + 1),
        AttackKind.METADATA_MISMATCH,
        rf"the director says {len(CONTENT)} bytes, the image repository {len(CONTENT) + 1}",
    ),
    "offer disagrees with the signed metadata": (
        _custom("offer_step", sha256=OTHER_SHA),
        AttackKind.METADATA_MISMATCH,
        "the offer's length or SHA-256 differs",
    ),
    "image for other hardware": (
        _custom("image_custom", hardware_ids=["5Q0937099"]),
        AttackKind.HARDWARE_MISMATCH,
        r"the image is for hardware \['5Q0937099'\], not ECU BCM-7F3A21's 5Q0937084",
    ),
    "director addresses other hardware": (
        _custom("director_custom", hardware_id="5Q0937085"),
        AttackKind.HARDWARE_MISMATCH,
        "the director addresses hardware '5Q0937085'; ECU BCM-7F3A21 is 5Q0937084",
    ),
    "image for another ECU type": (
        _custom("image_custom", ecu_type="BMS"),
        AttackKind.HARDWARE_MISMATCH,
        "the image is for a 'BMS'",
    ),
    "lower release counter": (
        _set(ecu=replace(BCM, release_counter=4)),
        AttackKind.ROLLBACK,
        "release counter 3 is lower than the 4 ECU BCM-7F3A21 runs",
    ),
    "release counters disagree": (
        _custom("director_custom", release_counter=9),
        AttackKind.METADATA_MISMATCH,
        "the director's release counter 9 differs from the image repository's 3",
    ),
    "no release counter": (
        _custom("image_custom", release_counter=None),
        AttackKind.METADATA_MISMATCH,
        "the image repository has no release counter",
    ),
    "wrong VIN": (
        _set(director_vin="WVWZZZ1KZ6W000002"),
        AttackKind.WRONG_VEHICLE,
        "names VIN 'WVWZZZ1KZ6W000002', not this vehicle's WVWZZZ1KZ6W000001",
    ),
    "no VIN at all": (
        _set(director_vin=None),
        AttackKind.WRONG_VEHICLE,
        "names VIN None",
    ),
    "missing ECU entry": (
        _custom("director_custom", ecu_identifier="ESP-000001"),
        AttackKind.MISSING_INSTRUCTION,
        "the director lists no image for ECU BCM-7F3A21",
    ),
    "director names another file for the ECU": (
        _set(director_path="updates/8/bcm-4.3.0.bin"),
        AttackKind.METADATA_MISMATCH,
        "the offer names updates/7/bcm-4.2.0.bin for ECU BCM-7F3A21, the director "
        "updates/8/bcm-4.3.0.bin",
    ),
    "another deployment's instruction": (
        _custom("director_custom", deployment_id=4712),
        AttackKind.MISSING_INSTRUCTION,
        "belongs to deployment 4712, not 4711",
    ),
    "image repository lacks the target": (
        _set(image_present=False),
        AttackKind.METADATA_MISMATCH,
        f"the image repository has no target {PATH}",
    ),
    "another update's image": (
        _custom("image_custom", update_id=8),
        AttackKind.METADATA_MISMATCH,
        "name different updates",
    ),
    "another version than offered": (
        _custom("image_custom", version="4.0.0"),
        AttackKind.METADATA_MISMATCH,
        "the offer says version 4.2.0, the image repository '4.0.0'",
    ),
    "an ECU this vehicle does not have": (
        _custom("offer_step", ecu_serial="BCM-999999"),
        AttackKind.WRONG_VEHICLE,
        "ECU BCM-999999 is not an ECU of this vehicle",
    ),
    "encrypted image without its plaintext hash": (
        _custom("image_custom", encrypted=True),
        AttackKind.METADATA_MISMATCH,
        "an encrypted image without plaintext_sha256",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_is_refused_with_its_reason(attack: str) -> None:
    tamper, kind, reason = ATTACKS[attack]
    case = Case()
    tamper(case)
    with pytest.raises(VerificationFailed, match=reason) as refused:
        case.verify()
    assert refused.value.kind is kind
    assert refused.value.reason == str(refused.value)


def test_two_ecus_sharing_one_file_each_find_their_entry() -> None:
    second = EcuFacts("BCM-7F3A22", "BCM", "5Q0937085", release_counter=0)
    case = Case()
    case.director_custom["ecus"] = [
        {"ecu_identifier": BCM.serial, "hardware_id": BCM.hardware_id},
        {"ecu_identifier": second.serial, "hardware_id": second.hardware_id},
    ]
    offer = case.offer()
    both = replace(offer, steps=(*offer.steps, replace(offer.steps[0], ecu_serial=second.serial)))
    images = verify_offer(
        both,
        vin=VIN,
        director=case.director(),
        image_targets={PATH: case.image_target()},
        ecus={BCM.serial: BCM, second.serial: second},
    )
    assert [i.step.ecu_serial for i in images] == [BCM.serial, second.serial]
    # The shared entry lists only these two: a third ECU is not addressed by it.
    third = replace(offer.steps[0], ecu_serial="BCM-7F3A23")
    with pytest.raises(VerificationFailed, match="no image for ECU BCM-7F3A23"):
        verify_offer(
            replace(offer, steps=(third,)),
            vin=VIN,
            director=case.director(),
            image_targets={PATH: case.image_target()},
            ecus={"BCM-7F3A23": replace(BCM, serial="BCM-7F3A23")},
        )


def test_the_downloaded_file_must_be_the_signed_one() -> None:
    [image] = Case().verify()
    check_file(image, io.BytesIO(CONTENT))
    tampered = bytearray(CONTENT)
    tampered[100] ^= 1
    with pytest.raises(VerificationFailed, match="not the signed one") as refused:
        check_file(image, io.BytesIO(bytes(tampered)))
    assert refused.value.kind is AttackKind.TAMPERED_IMAGE
    with pytest.raises(VerificationFailed, match="length"):
        check_file(image, io.BytesIO(CONTENT[:-1]))


def test_a_decrypted_image_must_be_the_signed_plaintext() -> None:
    plaintext = b"the image inside"
    digest = hashlib.sha256(plaintext).hexdigest()
    case = Case()
    case.image_custom.update(
        encrypted=True, plaintext_sha256=digest, plaintext_length=len(plaintext)
    )
    [image] = case.verify()
    assert (image.encrypted, image.plaintext_sha256) == (True, digest)
    check_plaintext(image, digest, len(plaintext))
    with pytest.raises(VerificationFailed, match="decrypted to 15 bytes") as refused:
        check_plaintext(image, digest, 15)
    assert refused.value.kind is AttackKind.TAMPERED_IMAGE
    with pytest.raises(VerificationFailed, match="is not the signed"):
        check_plaintext(image, OTHER_SHA, len(plaintext))


def test_director_targets_read_the_vin_from_the_signed_custom_field() -> None:
    signed = Targets(
        version=4,
        expires=datetime.now(UTC) + timedelta(days=1),
        targets={PATH: Case().director().targets[PATH]},
        unrecognized_fields={"custom": {"vin": VIN, "deployments": [DEPLOYMENT]}},
    )
    director = DirectorTargets.from_signed(signed)
    assert director.vin == VIN
    assert list(director.targets) == [PATH]
    no_custom = Targets(version=1, expires=datetime.now(UTC) + timedelta(days=1))
    assert DirectorTargets.from_signed(no_custom).vin is None
