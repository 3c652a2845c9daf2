"""HTTP endpoints of the fleet registry: vehicles, fleet imports and the fleet export."""

from __future__ import annotations

import tempfile
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from otacm.db import utcnow
from otacm.deps import SessionDep, SettingsDep, get_engine
from otacm.fleet import repository, service
from otacm.fleet.exporter import export_fleet
from otacm.fleet.importer import run_import
from otacm.fleet.records import FuelType, Region, VehicleStatus
from otacm.fleet.schemas import (
    ImportPage,
    ImportReportOut,
    RejectionOut,
    RejectionPage,
    VehicleDetail,
    VehiclePage,
    VehicleStatusChange,
    VehicleSummary,
)
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission

router = APIRouter(prefix="/api/v1", tags=["fleet"])

# Bytes read from the request body at a time while spooling an upload to disk.
UPLOAD_CHUNK = 1 << 20


@router.get("/vehicles", response_model=VehiclePage)
def list_vehicles(
    request: Request,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
    model: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    model_year_min: int | None = None,
    model_year_max: int | None = None,
    fuel_type: Annotated[list[FuelType], Query()] = [],  # noqa: B006
    region: Annotated[list[Region], Query()] = [],  # noqa: B006
    country: Annotated[list[str], Query()] = [],  # noqa: B006
    status: Annotated[list[VehicleStatus], Query()] = [],  # noqa: B006
    vin_prefix: Annotated[str | None, Query(max_length=17)] = None,
    ecu_type: str | None = None,
    hardware_part_number: str | None = None,
    hardware_version: str | None = None,
    software_version: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> VehiclePage:
    """Vehicles matching every given filter, in registry order, a page at a time.

    Vehicle attributes (unknown export columns) filter as `attr.NAME=VALUE`.
    """
    attributes = {
        key[5:]: value for key, value in request.query_params.items() if key.startswith("attr.")
    }
    f = repository.VehicleFilter(
        models=model,
        model_year_min=model_year_min,
        model_year_max=model_year_max,
        fuel_types=[f.value for f in fuel_type],
        regions=[r.value for r in region],
        countries=[c.upper() for c in country],
        statuses=[s.value for s in status],
        vin_prefix=vin_prefix,
        ecu_type=ecu_type,
        hardware_part_number=hardware_part_number,
        hardware_version=hardware_version,
        software_version=software_version,
        attributes=attributes,
    )
    rows, next_cursor = repository.search_vehicles(session, f, limit=limit, cursor=cursor)
    return VehiclePage(
        items=[VehicleSummary.model_validate(v) for v in rows], next_cursor=next_cursor
    )


@router.get("/vehicles/{vin}", response_model=VehicleDetail)
def get_vehicle(
    vin: str,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
) -> VehicleDetail:
    """The vehicle, its ECUs (fitted and removed) and every ECU's superseded states."""
    return service.vehicle_detail(session, vin)


@router.post("/vehicles/{vin}/status", response_model=VehicleSummary)
def change_vehicle_status(
    vin: str,
    change: VehicleStatusChange,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.VEHICLE_WRITE))],
) -> VehicleSummary:
    """Mark a vehicle active, inactive or scrapped. Vehicles are never deleted."""
    vehicle, _ = service.change_status(session, principal.actor, vin, change.status, change.reason)
    return VehicleSummary.model_validate(vehicle)


@router.post(
    "/fleet/imports",
    response_model=ImportReportOut,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def import_fleet(
    request: Request,
    engine: Annotated[Engine, Depends(get_engine)],
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.FLEET_IMPORT))],
    strict: bool = False,
    filename: Annotated[str, Query(max_length=500)] = "upload",
) -> ImportReportOut:
    """Import a manufacturing export sent as the request body (CSV or JSON Lines, plain or gzip).

    The body is streamed to a temporary file, never held in memory, then imported in batches.
    """
    with tempfile.SpooledTemporaryFile(max_size=UPLOAD_CHUNK * 8) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        report = await run_in_threadpool(
            run_import,
            engine,
            spool,
            settings=settings,
            source_name=filename,
            strict=strict,
            actor=principal.actor,
        )
    session = request.app.state.session_factory()
    try:
        return service.import_report(session, report.import_id, settings.import_report_rejections)
    finally:
        session.close()


@router.get("/fleet/imports", response_model=ImportPage)
def list_imports(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> ImportPage:
    rows, next_cursor = repository.list_imports(session, limit=limit, cursor=cursor)
    return ImportPage(items=[service.import_out(r, []) for r in rows], next_cursor=next_cursor)


@router.get("/fleet/imports/{import_id}", response_model=ImportReportOut)
def get_import(
    import_id: int,
    session: SessionDep,
    settings: SettingsDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
) -> ImportReportOut:
    return service.import_report(session, import_id, settings.import_report_rejections)


@router.get("/fleet/imports/{import_id}/rejections", response_model=RejectionPage)
def import_rejections(
    import_id: int,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: str | None = None,
) -> RejectionPage:
    service.import_report(session, import_id, 0)
    rows, next_cursor = repository.rejections_of(session, import_id, limit=limit, cursor=cursor)
    return RejectionPage(
        items=[RejectionOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.get(
    "/fleet/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def export(
    engine: Annotated[Engine, Depends(get_engine)],
    _: Annotated[Principal, Depends(require(Permission.FLEET_EXPORT))],
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """The whole registry in the manufacturing export format, stamped with the export time."""
    stamp = utcnow()
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    name = f"fleet-{stamp.strftime('%Y%m%dT%H%M%SZ')}.{format}"
    return StreamingResponse(
        export_fleet(engine, format, stamp),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
