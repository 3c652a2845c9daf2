"""HTTP endpoints of targeting: the preview, its full list, one vehicle's updates, compliance."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from otacm.db import unit_of_work
from otacm.deps import SessionDep
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission
from otacm.targeting import service
from otacm.targeting.eligibility import Reason
from otacm.targeting.schemas import ComplianceOut, PreviewOut, PreviewRequest, VehicleUpdatesOut

router = APIRouter(prefix="/api/v1", tags=["targeting"])

LIST_COLUMNS = (
    "vin",
    "reason",
    "model",
    "model_year",
    "fuel_type",
    "region",
    "country",
    "ecu_updates",
)


@router.post("/targeting/preview", response_model=PreviewOut)
def preview(
    body: PreviewRequest,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.TARGETING_PREVIEW))],
) -> PreviewOut:
    """Which vehicles and ECUs the released updates would reach in the selection, and for every
    other vehicle the one reason why not, with counts, samples and breakdowns."""
    return service.run_preview(session, body)


@router.post(
    "/targeting/preview/vehicles",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def preview_vehicles(
    body: PreviewRequest,
    request: Request,
    _: Annotated[Principal, Depends(require(Permission.TARGETING_PREVIEW))],
    reason: Annotated[list[Reason], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Every vehicle of the preview with its reason (only the given reasons), streamed."""
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return StreamingResponse(
        vehicle_list(request.app.state.session_factory, body, reason, format), media_type=media
    )


def vehicle_list(
    factory: sessionmaker[Session],
    body: PreviewRequest,
    reasons: list[Reason],
    format: Literal["jsonl", "csv"],
) -> Iterator[bytes]:
    """Every vehicle of the preview with its reason, as chunks of JSON Lines or CSV.

    The preview is planned before the first chunk is asked for, so that a bad request raises
    here (an error answer), not in the middle of a stream."""
    with unit_of_work(factory) as session:
        service.plan_for(session, body)

    def lines() -> Iterator[bytes]:
        with unit_of_work(factory) as session:
            rows = service.preview_rows(session, body, reasons)
            if format == "jsonl":
                for row in rows:
                    yield orjson.dumps(row) + b"\n"
                return
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=LIST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for n, row in enumerate(rows, start=1):
                writer.writerow(row)
                if n % 1000 == 0:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue().encode()

    return lines()


@router.get("/vehicles/{vin}/updates", response_model=VehicleUpdatesOut)
def vehicle_updates(
    vin: str,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
) -> VehicleUpdatesOut:
    """Every released update that applies to the vehicle, why the others do not, and where
    each of its ECUs stands (on latest, update available, behind, no release)."""
    return service.vehicle_updates(session, vin)


@router.get("/fleet/compliance", response_model=ComplianceOut)
def fleet_compliance(
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
) -> ComplianceOut:
    """Per ECU type and model: fitted ECUs on the newest released version for their hardware,
    behind it, in progress, or without any release for their hardware."""
    return service.fleet_compliance(session)
