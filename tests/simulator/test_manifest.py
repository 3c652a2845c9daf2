"""Manifest signing: the canonical form, and a signature others can verify independently."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.exceptions import FormatError
from securesystemslib.signer import Signature, SSlibKey

from otacm.simulator.manifest import EcuReport, canonical_bytes, manifest_body, signature_valid

VIN = "WVWZZZ1KZ6W000001"
ECUS = [
    EcuReport("BCM-7F3A21", "4.2.0", "ab" * 32),
    EcuReport("ESP-0001", "1.0", None),
]


def test_the_canonical_form_sorts_keys_and_has_no_whitespace() -> None:
    signed = {
        "vin": VIN,
        "report_counter": 12,
        "ecus": [{"serial": "B", "software_version": "4.2.0", "image_sha256": None}],
        "attacks_detected": ["tampered_image: bad"],
    }
    assert canonical_bytes(signed) == (
        b'{"attacks_detected":["tampered_image: bad"],"ecus":[{"image_sha256":null,'
        b'"serial":"B","software_version":"4.2.0"}],"report_counter":12,'
        b'"vin":"WVWZZZ1KZ6W000001"}'
    )
    # Key order of the input never matters; it is the same bytes either way round.
    assert canonical_bytes(dict(reversed(list(signed.items())))) == canonical_bytes(signed)


def test_floats_have_no_canonical_form() -> None:
    with pytest.raises(FormatError):
        canonical_bytes({"report_counter": 1.5})


def test_the_signature_verifies_with_securesystemslib_over_the_json_as_sent() -> None:
    key = Ed25519PrivateKey.generate()
    body = manifest_body(
        vin=VIN, report_counter=7, ecus=ECUS, attacks_detected=["rollback: x"], signing_key=key
    )
    # What the server receives: the JSON text, parsed again.
    received = json.loads(json.dumps(body))
    assert received["signed"] == {
        "vin": VIN,
        "report_counter": 7,
        "ecus": [
            {"serial": "BCM-7F3A21", "software_version": "4.2.0", "image_sha256": "ab" * 32},
            {"serial": "ESP-0001", "software_version": "1.0", "image_sha256": None},
        ],
        "attacks_detected": ["rollback: x"],
    }
    public = SSlibKey.from_crypto(key.public_key())
    signature = base64.b64decode(received["signature"])
    public.verify_signature(
        Signature(public.keyid, signature.hex()), canonical_bytes(received["signed"])
    )
    assert signature_valid(received, key.public_key())


def test_any_change_to_the_signed_part_breaks_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    body = manifest_body(vin=VIN, report_counter=7, ecus=ECUS, signing_key=key)
    for change in (
        lambda s: s.update(report_counter=8),
        lambda s: s.update(vin="WVWZZZ1KZ6W000002"),
        lambda s: s["ecus"][0].update(software_version="4.1.0"),
        lambda s: s["attacks_detected"].append("hidden"),
    ):
        forged = copy.deepcopy(body)
        change(forged["signed"])
        assert not signature_valid(forged, key.public_key())
    assert not signature_valid(body, Ed25519PrivateKey.generate().public_key())
    assert signature_valid(body, key.public_key())


def test_a_vehicle_without_a_key_sends_its_manifest_unsigned() -> None:
    body = manifest_body(vin=VIN, report_counter=1, ecus=ECUS, signing_key=None)
    assert "signature" not in body
    assert body["signed"]["attacks_detected"] == []
    assert not signature_valid(body, Ed25519PrivateKey.generate().public_key())
