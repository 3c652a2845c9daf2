"""Fleet registry operations used by the API and the CLI."""

from __future__ import annotations

from sqlalchemy.orm import Session

from otacm.db import utcnow
from otacm.errors import NotFound
from otacm.fleet import repository
from otacm.fleet.models import FleetImport, FleetImportRejection, Vehicle
from otacm.fleet.schemas import (
    EcuHistoryEntry,
    EcuOut,
    ImportCounts,
    ImportReportOut,
    RejectionOut,
    VehicleDetail,
)
from otacm.security import audit
from otacm.security.audit import Actor


class VehicleNotFound(NotFound):
    code = "vehicle_not_found"


class ImportNotFound(NotFound):
    code = "import_not_found"


def vehicle_or_404(session: Session, vin: str) -> Vehicle:
    vehicle = repository.get_vehicle(session, vin)
    if vehicle is None:
        raise VehicleNotFound(f"no vehicle with VIN {vin.strip().upper()!r}", vin=vin)
    return vehicle


def vehicle_detail(session: Session, vin: str) -> VehicleDetail:
    vehicle = vehicle_or_404(session, vin)
    ecus = repository.ecus_of(session, vehicle.id)
    history = repository.history_of(session, [e.id for e in ecus])
    vehicle_ids = {h.vehicle_id for rows in history.values() for h in rows} | {
        h.changed_to_vehicle_id
        for rows in history.values()
        for h in rows
        if h.changed_to_vehicle_id
    }
    vins = repository.vins_by_id(session, vehicle_ids)
    ecu_out = []
    for ecu in ecus:
        entries = [
            EcuHistoryEntry(
                change=h.change,
                vehicle_vin=vins.get(h.vehicle_id),
                moved_to_vin=vins.get(h.changed_to_vehicle_id) if h.changed_to_vehicle_id else None,
                hardware_part_number=h.hardware_part_number,
                hardware_version=h.hardware_version,
                protocol=h.protocol,
                software_part_number=h.software_part_number,
                software_version=h.software_version,
                calibration_id=h.calibration_id,
                software_source=h.software_source,
                software_observed_at=h.software_observed_at,
                import_id=h.import_id,
                changed_by_import_id=h.changed_by_import_id,
                changed_at=h.changed_at,
                recorded_at=h.recorded_at,
            )
            for h in history[ecu.id]
        ]
        ecu_out.append(EcuOut.model_validate(ecu).model_copy(update={"history": entries}))
    detail = VehicleDetail.model_validate(
        {
            **{c: getattr(vehicle, c) for c in VehicleDetail.model_fields if c != "ecus"},
            "ecus": ecu_out,
        }
    )
    return detail


def change_status(
    session: Session, actor: Actor, vin: str, status: str, reason: str
) -> tuple[Vehicle, str]:
    """Mark a vehicle active, inactive or scrapped; returns it and its previous status."""
    vehicle = vehicle_or_404(session, vin)
    previous = vehicle.status
    vehicle.status = status
    vehicle.updated_at = utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "vehicle.set_status",
        object_type="vehicle",
        object_id=vehicle.vin,
        before={"status": previous},
        after={"status": status},
        detail=reason or None,
    )
    return vehicle, previous


def import_report(session: Session, import_id: int, rejections: int) -> ImportReportOut:
    row = repository.get_import(session, import_id)
    if row is None:
        raise ImportNotFound(f"no fleet import with id {import_id}")
    first: list[FleetImportRejection] = []
    if rejections:
        first, _ = repository.rejections_of(session, import_id, limit=rejections, cursor=None)
    return import_out(row, [RejectionOut.model_validate(r) for r in first])


def import_out(row: FleetImport, rejections: list[RejectionOut]) -> ImportReportOut:
    return ImportReportOut(
        id=row.id,
        source_name=row.source_name,
        format=row.format,
        compressed=row.compressed,
        strict=row.strict,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        started_by=row.started_by,
        error=row.error,
        counts=ImportCounts(**(row.counts or {})),
        rejections=rejections,
    )
