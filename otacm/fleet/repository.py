"""Queries over the fleet registry: vehicle search with keyset pagination, vehicle detail."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, select
from sqlalchemy.orm import Session

from otacm.db import is_postgresql
from otacm.errors import ValidationFailed
from otacm.fleet.models import Ecu, EcuHistory, FleetImport, FleetImportRejection, Vehicle


@dataclass
class VehicleFilter:
    """Search criteria; ECU criteria must all hold for one and the same fitted ECU."""

    models: Sequence[str] = ()
    model_year_min: int | None = None
    model_year_max: int | None = None
    fuel_types: Sequence[str] = ()
    regions: Sequence[str] = ()
    countries: Sequence[str] = ()
    statuses: Sequence[str] = ()
    vin_prefix: str | None = None
    ecu_type: str | None = None
    hardware_part_number: str | None = None
    hardware_version: str | None = None
    software_version: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, value = base64.urlsafe_b64decode(padded).decode().split(":", 1)
        if version != "v1":
            raise ValueError(version)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed(
            "the cursor is not one this API handed out", field="cursor"
        ) from None


# An ECU condition matched by fewer fitted ECUs than this is searched from the ECU side.
SPARSE_ECU_MATCHES = 5000


def _filtered(f: VehicleFilter, session: Session) -> Select[Any]:
    query = select(Vehicle)
    conditions: list[ColumnElement[bool]] = []
    if f.models:
        conditions.append(Vehicle.model.in_(f.models))
    if f.model_year_min is not None:
        conditions.append(Vehicle.model_year >= f.model_year_min)
    if f.model_year_max is not None:
        conditions.append(Vehicle.model_year <= f.model_year_max)
    if f.fuel_types:
        conditions.append(Vehicle.fuel_type.in_(f.fuel_types))
    if f.regions:
        conditions.append(Vehicle.region.in_(f.regions))
    if f.countries:
        conditions.append(Vehicle.country.in_(f.countries))
    if f.statuses:
        conditions.append(Vehicle.status.in_(f.statuses))
    if f.vin_prefix:
        # A range instead of LIKE, so that the unique VIN index serves it on every engine and
        # collation: VINs hold only digits and capitals, which sort alike everywhere.
        prefix = f.vin_prefix.strip().upper()[:17]
        pad = 17 - len(prefix)
        conditions.append(
            and_(Vehicle.vin >= prefix + "0" * pad, Vehicle.vin <= prefix + "Z" * pad)
        )
    for key, value in f.attributes.items():
        conditions.append(Vehicle.attributes[key].as_string() == value)
    ecu_conditions: list[ColumnElement[bool]] = []
    if f.ecu_type:
        ecu_conditions.append(Ecu.ecu_type == f.ecu_type.upper())
    if f.hardware_part_number:
        ecu_conditions.append(Ecu.hardware_part_number == f.hardware_part_number)
    if f.hardware_version:
        ecu_conditions.append(Ecu.hardware_version == f.hardware_version)
    if f.software_version:
        ecu_conditions.append(Ecu.software_version == f.software_version)
    if ecu_conditions:
        ecu_conditions.append(Ecu.removed_at.is_(None))
        conditions.append(_ecu_condition(session, ecu_conditions))
    return query.where(*conditions)


def _ecu_condition(session: Session, ecu_conditions: list[ColumnElement[bool]]) -> Any:
    """Vehicles with a fitted ECU meeting every condition.

    PostgreSQL's planner picks the better side from its statistics. SQLite's does not: it
    walks the vehicles and probes each one's ECUs, which is quick when many match and scans the
    whole fleet when none does. A bounded count tells the two apart; sparse matches are
    collected from the ECU index instead.
    """
    if not is_postgresql(session.get_bind().dialect):
        sample = select(Ecu.vehicle_id).where(*ecu_conditions).limit(SPARSE_ECU_MATCHES)
        matches = session.scalar(select(func.count()).select_from(sample.subquery()))
        if (matches or 0) < SPARSE_ECU_MATCHES:
            return Vehicle.id.in_(select(Ecu.vehicle_id).where(*ecu_conditions))
    return exists().where(Ecu.vehicle_id == Vehicle.id, *ecu_conditions)


def search_vehicles(
    session: Session, f: VehicleFilter, *, limit: int, cursor: str | None
) -> tuple[list[Vehicle], str | None]:
    query = _filtered(f, session)
    if cursor:
        query = query.where(Vehicle.id > decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(Vehicle.id).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def get_vehicle(session: Session, vin: str) -> Vehicle | None:
    return session.scalar(select(Vehicle).where(Vehicle.vin == vin.strip().upper()))


def ecus_of(session: Session, vehicle_id: int) -> list[Ecu]:
    return list(
        session.scalars(
            select(Ecu)
            .where(Ecu.vehicle_id == vehicle_id)
            .order_by(Ecu.removed_at.is_not(None), Ecu.ecu_type, Ecu.id)
        )
    )


def history_of(session: Session, ecu_ids: Sequence[int]) -> dict[int, list[EcuHistory]]:
    history: dict[int, list[EcuHistory]] = {i: [] for i in ecu_ids}
    if ecu_ids:
        for row in session.scalars(
            select(EcuHistory)
            .where(EcuHistory.ecu_id.in_(ecu_ids))
            .order_by(EcuHistory.ecu_id, EcuHistory.id)
        ):
            history[row.ecu_id].append(row)
    return history


def vins_by_id(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(Vehicle.id, Vehicle.vin).where(Vehicle.id.in_(ids)))
    return {vehicle_id: vin for vehicle_id, vin in rows}


def get_import(session: Session, import_id: int) -> FleetImport | None:
    return session.get(FleetImport, import_id)


def list_imports(
    session: Session, *, limit: int, cursor: str | None
) -> tuple[list[FleetImport], str | None]:
    query = select(FleetImport).order_by(FleetImport.id.desc())
    if cursor:
        query = query.where(FleetImport.id < decode_cursor(cursor))
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def rejections_of(
    session: Session, import_id: int, *, limit: int, cursor: str | None
) -> tuple[list[FleetImportRejection], str | None]:
    query = select(FleetImportRejection).where(FleetImportRejection.import_id == import_id)
    if cursor:
        query = query.where(FleetImportRejection.id > decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(FleetImportRejection.id).limit(limit + 1)))
    return rows[:limit], encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
