"""The vehicle version manifest: what every ECU runs, signed by the vehicle.

`PUT /vehicle/v1/manifest` takes `{"signed": {...}, "signature": "<base64>"}` where the
signature is Ed25519 over the canonical JSON of `signed` (securesystemslib's
`encode_canonical`: sorted keys, no whitespace, as UTF-8). The server computes the same bytes
from the JSON it receives, so anything the canonical form cannot carry (floats, for one) must
never be put into `signed`. `attacks_detected` lists what the vehicle refused since its last
accepted manifest, one line of text each (at most `MAX_ATTACKS` of `MAX_ATTACK_TEXT` characters
per manifest: the server's limits).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.formats import encode_canonical

MAX_ATTACKS = 50
MAX_ATTACK_TEXT = 500


@dataclass(frozen=True, slots=True)
class EcuReport:
    serial: str
    software_version: str
    image_sha256: str | None  # None: not known (software as built, before any update by us)


def canonical_bytes(signed: Mapping[str, Any]) -> bytes:
    """The bytes a manifest signature covers."""
    encoded = encode_canonical(dict(signed))
    assert encoded is not None  # only None when given an output function to write into
    return encoded.encode("utf-8")


def manifest_body(
    *,
    vin: str,
    report_counter: int,
    ecus: Sequence[EcuReport],
    attacks_detected: Sequence[str] = (),
    signing_key: Ed25519PrivateKey | None,
) -> dict[str, Any]:
    """The request body of `PUT /vehicle/v1/manifest`; unsigned when the vehicle has no key
    (a vehicle provisioned without `--keys`: accepted until a key is registered)."""
    signed: dict[str, Any] = {
        "vin": vin,
        "report_counter": report_counter,
        "ecus": [
            {
                "serial": e.serial,
                "software_version": e.software_version,
                "image_sha256": e.image_sha256,
            }
            for e in ecus
        ],
        "attacks_detected": list(attacks_detected),
    }
    body: dict[str, Any] = {"signed": signed}
    if signing_key is not None:
        signature = signing_key.sign(canonical_bytes(signed))
        body["signature"] = base64.b64encode(signature).decode("ascii")
    return body


def signature_valid(body: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Whether `body` carries a valid signature of its `signed` part by `public_key`."""
    try:
        signature = base64.b64decode(str(body["signature"]), validate=True)
        public_key.verify(signature, canonical_bytes(body["signed"]))
    except (KeyError, binascii.Error, ValueError, InvalidSignature):
        return False
    return True
