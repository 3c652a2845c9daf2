"""The vehicle version manifest: what every ECU runs, as the vehicle signs it.

After manufacturing the manifest is the source of truth for installed versions. One is
accepted when

- it is signed with the vehicle's registered Ed25519 key (when one is registered): the
  signature covers the canonical JSON of `signed` (securesystemslib's `encode_canonical`, the
  form TUF signs), exactly as received;
- it names the vehicle's own VIN;
- its `report_counter` is higher than the last accepted one: a manifest recorded and sent again
  later (a replay) cannot make the server believe old software is installed.

A manifest refused for any of these is recorded as a security event, as is every attack the
vehicle lists in `attacks_detected`. An accepted manifest updates the registry's installed
versions (source `manifest`, the superseded state kept in ECU history) and confirms each
deployment whose targeted ECUs all run their update's version (`offers.confirm_manifest`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from securesystemslib.exceptions import FormatError
from securesystemslib.formats import encode_canonical
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from otacm.campaigns.models import Campaign
from otacm.campaigns.offers import confirm_manifest
from otacm.db import is_postgresql
from otacm.errors import Conflict, ValidationFailed
from otacm.fleet.models import Ecu, EcuHistory
from otacm.vehicle_api import notices
from otacm.vehicle_api.models import VehicleOtaState, VehicleSecurityEvent

Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ManifestEcu(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serial: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    software_version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    image_sha256: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{64})?$")] | None = None


class ManifestSigned(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vin: Annotated[str, StringConstraints(min_length=1, max_length=17)]
    report_counter: int = Field(ge=0, le=2**62)
    ecus: list[ManifestEcu] = Field(max_length=500)
    attacks_detected: list[Annotated[str, StringConstraints(max_length=500)]] = Field(
        default_factory=list, max_length=50
    )


class ManifestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Kept as sent: the signature is over exactly these fields.
    signed: dict[str, Any]
    signature: str | None = Field(default=None, max_length=200)


class ManifestOut(BaseModel):
    report_counter: int
    confirmed_deployments: list[int]
    unknown_serials: list[str]
    poll_after_s: int


class ManifestRefused(ValidationFailed):
    """A manifest refused as a possible attack: recorded, then answered."""


class ManifestUnsigned(ManifestRefused):
    code = "manifest_unsigned"


class ManifestSignatureInvalid(ManifestRefused):
    code = "manifest_signature_invalid"


class ManifestVinMismatch(ManifestRefused):
    code = "manifest_vin_mismatch"


class ManifestReplayed(Conflict):
    code = "manifest_replayed"


@dataclass
class Accepted:
    report_counter: int
    confirmed: list[int] = field(default_factory=list)
    unknown_serials: list[str] = field(default_factory=list)


def security_event(
    session: Session, vehicle_id: int, kind: str, detail: str, now: datetime
) -> None:
    session.add(
        VehicleSecurityEvent(vehicle_id=vehicle_id, at=now, kind=kind, detail=detail[:2000])
    )


def _state(session: Session, vehicle_id: int) -> VehicleOtaState:
    """The vehicle's row, created once and locked: two manifests at once are taken in turn."""
    insert = postgresql.insert if is_postgresql(session.get_bind().dialect) else sqlite.insert
    session.execute(insert(VehicleOtaState).values(vehicle_id=vehicle_id).on_conflict_do_nothing())
    query = select(VehicleOtaState).where(VehicleOtaState.vehicle_id == vehicle_id)
    if is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    state = session.scalar(query.execution_options(populate_existing=True))
    assert state is not None
    return state


def canonical_bytes(signed: dict[str, Any]) -> bytes:
    """What a manifest signature covers. Raises FormatError for what has no canonical form
    (floats among them)."""
    canonical = encode_canonical(signed)
    assert canonical is not None  # only None when writing to an output function
    return canonical.encode("utf-8")


def _check_signature(state: VehicleOtaState, manifest: ManifestIn) -> None:
    if state.signing_public_key is None:
        return
    if not manifest.signature:
        raise ManifestUnsigned("the vehicle has a registered key: its manifests must be signed")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(state.signing_public_key))
        signature = base64.b64decode(manifest.signature, validate=True)
        key.verify(signature, canonical_bytes(manifest.signed))
    except (InvalidSignature, binascii.Error, ValueError, FormatError):
        raise ManifestSignatureInvalid(
            "the manifest's signature does not verify with the vehicle's registered key"
        ) from None


def _parse(manifest: ManifestIn) -> ManifestSigned:
    try:
        return ManifestSigned.model_validate(manifest.signed)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValidationFailed(f"signed.{where}: {first['msg']}", field=f"signed.{where}") from None


def _record_versions(
    session: Session, vehicle_id: int, reported: list[ManifestEcu], now: datetime
) -> tuple[dict[str, str], list[str]]:
    """The installed versions into the registry; returns serial → version of the vehicle's
    ECUs, and the serials reported that are not this vehicle's."""
    query = select(Ecu).where(Ecu.vehicle_id == vehicle_id, Ecu.removed_at.is_(None))
    if is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    ecus = {e.serial: e for e in session.scalars(query)}
    installed: dict[str, str] = {}
    unknown: list[str] = []
    for entry in reported:
        ecu = ecus.get(entry.serial)
        if ecu is None:
            unknown.append(entry.serial)
            continue
        installed[entry.serial] = entry.software_version
        if ecu.software_version == entry.software_version:
            continue
        session.add(
            EcuHistory(
                ecu_id=ecu.id, change="software", vehicle_id=ecu.vehicle_id,
                hardware_part_number=ecu.hardware_part_number,
                hardware_version=ecu.hardware_version, protocol=ecu.protocol,
                software_part_number=ecu.software_part_number,
                software_version=ecu.software_version, calibration_id=ecu.calibration_id,
                software_source=ecu.software_source,
                software_observed_at=ecu.software_observed_at, import_id=ecu.import_id,
                changed_by_import_id=None, changed_to_vehicle_id=None, changed_at=now,
                recorded_at=now,
            )
        )  # fmt: skip
        ecu.software_version = entry.software_version
        ecu.software_source = "manifest"
        ecu.software_observed_at = now
        ecu.updated_at = now
    return installed, unknown


def receive(
    session: Session, vehicle_id: int, vin: str, manifest: ManifestIn, now: datetime
) -> Accepted:
    """Check and apply a manifest; the caller commits, also when it raises `ManifestRefused`
    or `ManifestReplayed` (their security event is in the session).

    Raises:
        ManifestRefused, ManifestReplayed: recorded as a security event first.
        ValidationFailed: `signed` is not a manifest (not an attack: nothing recorded).
    """
    state = _state(session, vehicle_id)
    try:
        _check_signature(state, manifest)
        signed = _parse(manifest)
        if signed.vin != vin:
            raise ManifestVinMismatch(
                f"the manifest names VIN {signed.vin!r}, not this vehicle's", field="signed.vin"
            )
        if state.report_counter is not None and signed.report_counter <= state.report_counter:
            raise ManifestReplayed(
                f"report_counter {signed.report_counter} is not higher than the last accepted "
                f"({state.report_counter}): a replayed or reordered manifest",
                field="signed.report_counter",
                last_accepted=state.report_counter,
            )
    except (ManifestRefused, ManifestReplayed) as exc:
        security_event(session, vehicle_id, exc.code, exc.detail, now)
        session.flush()
        raise
    for attack in signed.attacks_detected:
        security_event(session, vehicle_id, "vehicle_detected", attack, now)
    state.report_counter = signed.report_counter
    state.manifest_at = now
    installed, unknown = _record_versions(session, vehicle_id, signed.ecus, now)
    if unknown:
        security_event(
            session, vehicle_id, "unknown_ecu_serial",
            f"the manifest lists ECUs this vehicle does not have: {', '.join(unknown[:20])}", now,
        )  # fmt: skip
    confirmed = confirm_manifest(session, vehicle_id, installed, now)
    for deployment in confirmed:
        campaign = session.get(Campaign, deployment.campaign_id)
        assert campaign is not None
        notices.send(
            session, notices.COMPLETED, deployment, campaign, vin, now,
            extra={"result": "succeeded", "versions": deployment.versions},
        )  # fmt: skip
    session.flush()
    return Accepted(signed.report_counter, [d.id for d in confirmed], unknown)
