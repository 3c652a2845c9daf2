"""Checking a downloaded confidential image: encrypted and wrapped exactly as the server does."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tuf.api.metadata import TargetFile

from otacm.security.encryption import encrypt_stream, new_data_key, wrap_for_vehicle
from otacm.simulator.images import NoDataKey, check_image, key_context
from otacm.simulator.uptane import AttackKind, VerificationFailed, VerifiedImage
from otacm.simulator.wire import Step

PLAINTEXT = os.urandom(200_000)
UPDATE_ID = 7


def delivered(
    tmp_path: Path,
    vehicle: X25519PrivateKey,
    *,
    plaintext_sha256: str | None = None,
    context_update: int = UPDATE_ID,
    wrapped: bool = True,
) -> tuple[VerifiedImage, Path]:
    """An encrypted file on disk and the verified image it should be."""
    data_key = new_data_key()
    ciphertext = b"".join(encrypt_stream([PLAINTEXT], data_key, chunk_size=64 * 1024))
    path = tmp_path / "image.bin"
    path.write_bytes(ciphertext)
    digest = hashlib.sha256(ciphertext).hexdigest()
    key = wrap_for_vehicle(
        data_key,
        vehicle.public_key().public_bytes_raw(),
        context=key_context(context_update),
    )
    step = Step(
        order=1, ecu_serial="BCM-1", ecu_type="BCM", update_id=UPDATE_ID, version="4.2.0",
        target="updates/7/bcm.bin", length=len(ciphertext), sha256=digest, encrypted=True,
        wrapped_key=key if wrapped else None, estimated_install_minutes=None,
    )  # fmt: skip
    image = VerifiedImage(
        step=step,
        target=TargetFile(len(ciphertext), {"sha256": digest}, step.target),
        version="4.2.0",
        release_counter=1,
        encrypted=True,
        plaintext_sha256=plaintext_sha256 or hashlib.sha256(PLAINTEXT).hexdigest(),
        plaintext_length=len(PLAINTEXT),
    )
    return image, path


def test_a_confidential_image_opens_to_the_signed_plaintext(tmp_path: Path) -> None:
    vehicle = X25519PrivateKey.generate()
    image, path = delivered(tmp_path, vehicle)
    check_image(image, path, vehicle)


def test_a_key_wrapped_for_another_vehicle_does_not_open(tmp_path: Path) -> None:
    image, path = delivered(tmp_path, X25519PrivateKey.generate())
    with pytest.raises(VerificationFailed, match="another vehicle's key") as refused:
        check_image(image, path, X25519PrivateKey.generate())
    assert refused.value.kind is AttackKind.DECRYPTION_FAILED


def test_a_key_bound_to_another_update_does_not_open(tmp_path: Path) -> None:
    vehicle = X25519PrivateKey.generate()
    image, path = delivered(tmp_path, vehicle, context_update=8)
    with pytest.raises(VerificationFailed, match="another context") as refused:
        check_image(image, path, vehicle)
    assert refused.value.kind is AttackKind.DECRYPTION_FAILED


def test_a_plaintext_other_than_signed_is_refused(tmp_path: Path) -> None:
    vehicle = X25519PrivateKey.generate()
    image, path = delivered(tmp_path, vehicle, plaintext_sha256="00" * 32)
    with pytest.raises(VerificationFailed, match="decrypted image's SHA-256") as refused:
        check_image(image, path, vehicle)
    assert refused.value.kind is AttackKind.TAMPERED_IMAGE


def test_a_file_other_than_signed_is_refused_before_any_decryption(tmp_path: Path) -> None:
    vehicle = X25519PrivateKey.generate()
    image, path = delivered(tmp_path, vehicle)
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(VerificationFailed, match="not the signed one") as refused:
        check_image(image, path, vehicle)
    assert refused.value.kind is AttackKind.TAMPERED_IMAGE


def test_without_a_key_a_confidential_image_cannot_be_opened(tmp_path: Path) -> None:
    vehicle = X25519PrivateKey.generate()
    image, path = delivered(tmp_path, vehicle)
    with pytest.raises(NoDataKey, match="no encryption key"):
        check_image(image, path, None)
    image, path = delivered(tmp_path, vehicle, wrapped=False)
    with pytest.raises(NoDataKey, match="carries no data key"):
        check_image(image, path, vehicle)
