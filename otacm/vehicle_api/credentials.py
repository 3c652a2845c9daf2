"""Vehicle credentials and keys: issued at provisioning, checked on every vehicle request.

A credential is `otv_<vehicle id>_<secret>`: the vehicle's registry id in decimal, then 43
characters of base64url, 256 random bits. Only the SHA-256 of the whole token is stored. A slow
password hash would cost every poll tens of milliseconds, and a 256-bit random secret cannot be
guessed or looked up in a dictionary, so one fast hash is the right tool. The id is not secret:
it tells the server where to look, so that an idle poll is answered from an array indexed by
vehicle id (`idle.py`) instead of a database lookup. Credentials of the earlier format, `otv_`
and the 43 characters alone, are still accepted (they are looked up by hash in the database).
Issuing a credential revokes the vehicle's earlier ones.

With `keys=True` provisioning also makes the vehicle's key pairs (docs/vehicle-api.md): an
Ed25519 key that signs its manifests and an X25519 key that confidential updates' data keys
are wrapped to. Their public halves are registered; the private halves are returned once, in the
provisioning record, for the vehicle's secure storage, and never stored.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from otacm.errors import NotFound
from otacm.fleet.models import Ecu, Vehicle
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.vehicle_api.models import VehicleCredential, VehicleOtaState

TOKEN_PREFIX = "otv_"
# Characters of base64url that 32 random bytes make (secrets.token_urlsafe(32)).
SECRET_CHARS = 43


class VehicleNotFound(NotFound):
    code = "vehicle_not_found"


def hash_token(token: str) -> str:
    """What the database stores: the SHA-256 of the whole token, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(vehicle_id: int) -> str:
    return f"{TOKEN_PREFIX}{vehicle_id}_{secrets.token_urlsafe(32)}"


def token_vehicle_id(token: str) -> int | None:
    """The vehicle id a token of the current format names; None for any other string (an
    earlier-format token, whose secret may itself contain `_`, is exactly 47 characters and
    never parses). Says nothing about whether the token is valid."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    digits = token[len(TOKEN_PREFIX) : -SECRET_CHARS - 1]
    # At most 18 digits, far beyond any fleet: never the long digit string a caller could send
    # to make int() slow (or raise, past Python's conversion limit).
    if not (0 < len(digits) <= 18 and digits.isascii() and digits.isdigit()):
        return None
    if token[-SECRET_CHARS - 1] != "_":
        return None
    return int(digits)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Provisioned:
    """A provisioning record: what the factory loads into the vehicle (docs/vehicle-api.md)."""

    vin: str
    token: str
    ecus: list[dict[str, Any]]
    signing_key: str | None = None
    encryption_key: str | None = None

    def as_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"vin": self.vin, "token": self.token, "ecus": self.ecus}
        if self.signing_key is not None:
            record["signing_key"] = self.signing_key
            record["encryption_key"] = self.encryption_key
        return record


def _vehicle(session: Session, vin: str) -> Vehicle:
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == vin.strip().upper()))
    if vehicle is None:
        raise VehicleNotFound(f"no vehicle with VIN {vin!r}", field="vin")
    return vehicle


def _ecus_of(session: Session, vehicle_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {v: [] for v in vehicle_ids}
    for ecu in session.scalars(
        select(Ecu)
        .where(Ecu.vehicle_id.in_(list(vehicle_ids)), Ecu.removed_at.is_(None))
        .order_by(Ecu.vehicle_id, Ecu.ecu_type, Ecu.serial)
    ):
        found[ecu.vehicle_id].append(
            {
                "serial": ecu.serial,
                "ecu_type": ecu.ecu_type,
                "hardware_id": ecu.hardware_part_number,
                "software_version": ecu.software_version,
            }
        )
    return found


def _revoke_all(session: Session, vehicle_ids: Sequence[int], now: datetime) -> int:
    result = session.execute(
        update(VehicleCredential)
        .where(
            VehicleCredential.vehicle_id.in_(list(vehicle_ids)),
            VehicleCredential.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _register_keys(session: Session, vehicle: Vehicle) -> tuple[str, str]:
    signing = Ed25519PrivateKey.generate()
    encryption = X25519PrivateKey.generate()
    state = session.get(VehicleOtaState, vehicle.id)
    if state is None:
        state = VehicleOtaState(vehicle_id=vehicle.id)
        session.add(state)
    state.signing_public_key = _b64(signing.public_key().public_bytes_raw())
    vehicle.vehicle_public_key = _b64(encryption.public_key().public_bytes_raw())
    return _b64(signing.private_bytes_raw()), _b64(encryption.private_bytes_raw())


def provision(
    session: Session,
    actor: Actor,
    vehicles: Sequence[Vehicle],
    now: datetime,
    *,
    keys: bool = False,
) -> Iterator[Provisioned]:
    """Issue a credential (and with `keys` key pairs) for each vehicle, revoking earlier
    credentials; one audit entry for the batch, never naming a secret. Flushes; the caller
    commits, and must not hand out a record before the commit succeeds."""
    ids = [v.id for v in vehicles]
    revoked = _revoke_all(session, ids, now)
    ecus = _ecus_of(session, ids)
    records: list[Provisioned] = []
    for vehicle in vehicles:
        token = new_token(vehicle.id)
        session.add(
            VehicleCredential(
                vehicle_id=vehicle.id,
                token_hash=hash_token(token),
                issued_at=now,
                issued_by=actor.name,
            )
        )
        signing = encryption = None
        if keys:
            signing, encryption = _register_keys(session, vehicle)
            vehicle.updated_at = now
        records.append(Provisioned(vehicle.vin, token, ecus[vehicle.id], signing, encryption))
    audit.record(
        session,
        actor,
        "vehicle.credentials.issue",
        object_type="vehicle",
        object_id=vehicles[0].vin if len(vehicles) == 1 else None,
        after={"vehicles": len(vehicles), "keys": keys, "revoked_earlier": revoked},
    )
    session.flush()
    yield from records


def provision_vin(
    session: Session, actor: Actor, vin: str, now: datetime, *, keys: bool = False
) -> Provisioned:
    """Raises VehicleNotFound."""
    return next(provision(session, actor, [_vehicle(session, vin)], now, keys=keys))


def revoke(session: Session, actor: Actor, vin: str, now: datetime) -> int:
    """Revoke every credential of the vehicle; returns how many were live.

    Raises VehicleNotFound."""
    vehicle = _vehicle(session, vin)
    revoked = _revoke_all(session, [vehicle.id], now)
    audit.record(
        session, actor, "vehicle.credentials.revoke", object_type="vehicle",
        object_id=vehicle.vin, after={"revoked": revoked},
    )  # fmt: skip
    session.flush()
    return revoked


def live_credentials(session: Session, vehicle_id: int) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                VehicleCredential.vehicle_id == vehicle_id, VehicleCredential.revoked_at.is_(None)
            )
        )
        or 0
    )
