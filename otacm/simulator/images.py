"""A downloaded image, checked before it goes anywhere near an ECU.

The file must be exactly the target the image repository signed (length and every hash). A
confidential image is then opened: its data key, wrapped to this vehicle's X25519 key and bound
to the update (`otacm-update:<update_id>`), is unwrapped, the file decrypted chunk by chunk and
the plaintext's length and SHA-256 compared with the signed `plaintext_length` and
`plaintext_sha256`. The plaintext is hashed as it streams by; the simulator keeps no bytes of
it (a real Primary would stream it into the ECU's inactive bank instead).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from otacm.security.encryption import (
    DecryptionFailed,
    KeyUnwrapFailed,
    decrypt_stream,
    unwrap_for_vehicle,
)
from otacm.simulator.uptane import (
    AttackKind,
    VerificationFailed,
    VerifiedImage,
    check_file,
    check_plaintext,
)

READ_SIZE = 1 << 20  # bytes read from the file at a time


class NoDataKey(Exception):
    """A confidential image this vehicle cannot open: no key of its own, or none offered. Not
    an attack (reported as `failed`, code `no_decryption_key`)."""


def key_context(update_id: int) -> bytes:
    """What a data key wrapped for a vehicle is bound to (docs/vehicle-api.md)."""
    return f"otacm-update:{update_id}".encode()


def check_image(image: VerifiedImage, path: Path, encryption_key: X25519PrivateKey | None) -> None:
    """The file at `path` is the signed image and, if confidential, opens to the signed
    plaintext. CPU work: callers in an event loop run it in a thread.

    Raises:
        VerificationFailed: the bytes, the key or the plaintext are not what was signed.
        NoDataKey: a confidential image without a key to open it.
    """
    with path.open("rb") as file:
        check_file(image, file)
    if not image.encrypted:
        return
    step = image.step
    if encryption_key is None:
        raise NoDataKey("this vehicle has no encryption key")
    if step.wrapped_key is None:
        raise NoDataKey(
            f"the offer carries no data key for {step.target} (the vehicle's public key may "
            "not be registered)"
        )
    try:
        data_key = unwrap_for_vehicle(
            step.wrapped_key, encryption_key, context=key_context(step.update_id)
        )
    except KeyUnwrapFailed as exc:
        raise VerificationFailed(
            AttackKind.DECRYPTION_FAILED, f"{step.target}: {exc.detail}"
        ) from None
    digest, length = hashlib.sha256(), 0
    with path.open("rb") as file:
        try:
            for piece in decrypt_stream(iter(lambda: file.read(READ_SIZE), b""), data_key):
                digest.update(piece)
                length += len(piece)
        except DecryptionFailed as exc:
            raise VerificationFailed(
                AttackKind.DECRYPTION_FAILED, f"{step.target}: {exc.detail}"
            ) from None
    check_plaintext(image, digest.hexdigest(), length)
