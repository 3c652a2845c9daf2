"""Provisioning records: what the factory loads into a vehicle (docs/vehicle-api.md).

One JSON object per vehicle, one per line in a batch file written by `otacm vehicles credentials
--all -o FILE`: the VIN, the bearer credential, the ECUs as built and, when provisioned with
`--keys`, the private halves of the vehicle's Ed25519 signing key and X25519 encryption key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


class InvalidRecord(ValueError):
    """A provisioning record that cannot be used, with the line it came from when known."""


@dataclass(frozen=True, slots=True)
class EcuRecord:
    """One ECU as built."""

    serial: str
    ecu_type: str
    hardware_id: str
    software_version: str


@dataclass(frozen=True, slots=True)
class ProvisioningRecord:
    vin: str
    token: str
    ecus: tuple[EcuRecord, ...]
    signing_key: Ed25519PrivateKey | None = None
    encryption_key: X25519PrivateKey | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProvisioningRecord:
        """Raises InvalidRecord naming the field that is missing or wrong."""
        try:
            vin, token, ecus = str(data["vin"]), str(data["token"]), data["ecus"]
            parsed = tuple(
                EcuRecord(
                    serial=str(e["serial"]),
                    ecu_type=str(e["ecu_type"]),
                    hardware_id=str(e["hardware_id"]),
                    software_version=str(e["software_version"]),
                )
                for e in ecus
            )
        except (KeyError, TypeError) as exc:
            raise InvalidRecord(f"a provisioning record lacks {exc}") from None
        if not vin or not token:
            raise InvalidRecord("a provisioning record needs a vin and a token")
        signing = _raw_key(data, "signing_key")
        encryption = _raw_key(data, "encryption_key")
        return cls(
            vin=vin,
            token=token,
            ecus=parsed,
            signing_key=Ed25519PrivateKey.from_private_bytes(signing) if signing else None,
            encryption_key=X25519PrivateKey.from_private_bytes(encryption) if encryption else None,
        )


def _raw_key(data: Mapping[str, Any], name: str) -> bytes | None:
    text = data.get(name)
    if text is None:
        return None
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRecord(f"{name} is not base64") from None
    if len(raw) != 32:
        raise InvalidRecord(f"{name} must decode to 32 bytes, not {len(raw)}")
    return raw


def read_records(path: Path) -> Iterator[ProvisioningRecord]:
    """The records of a JSON Lines file, in order; blank lines are skipped.

    Raises InvalidRecord naming the line of a record that is not valid.
    """
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield ProvisioningRecord.from_json(json.loads(line))
            except (ValueError, InvalidRecord) as exc:
                raise InvalidRecord(f"{path}:{number}: {exc}") from None
