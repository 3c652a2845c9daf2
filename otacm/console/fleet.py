"""The fleet: vehicle search (the API's filters and the query language), one vehicle's page
(ECUs, installed versions and their history, deployments, which updates apply and why not),
and a vehicle's status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns.models import Campaign, Deployment
from otacm.console.forms import FORM, FormDep, FormErrors, service_errors, text, validation_errors
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    pager,
    render,
    see_other,
)
from otacm.errors import OtacmError
from otacm.fleet import repository, service
from otacm.fleet.models import Vehicle
from otacm.fleet.records import FuelType, Region, VehicleStatus
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.fleet.schemas import VehicleStatusChange
from otacm.security.auth import Principal
from otacm.security.permissions import Permission
from otacm.targeting import service as targeting
from otacm.targeting.query_language import QueryError
from otacm.targeting.selection import EcuCondition, TargetSelection, selection_condition

router = console_router()

PAGE_SIZE = 50
SHOWN_DEPLOYMENTS = 50
SEARCH_FIELDS = (
    "model",
    "model_year_min",
    "model_year_max",
    "fuel_type",
    "region",
    "country",
    "status",
    "vin_prefix",
    "ecu_type",
    "hardware_part_number",
    "hardware_version",
    "software_version",
    "q",
)


@dataclass
class Search:
    """The search form as sent, and what it means."""

    values: dict[str, Any]
    errors: FormErrors = field(default_factory=dict)
    filter: repository.VehicleFilter | None = None
    selection: TargetSelection | None = None


def _year(request: Request, name: str, errors: FormErrors) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        errors[name] = "a model year is a whole number, e.g. 2024"
        return None
    return int(raw)


def read_search(request: Request) -> Search:
    params = request.query_params
    values: dict[str, Any] = {
        name: params.get(name, "").strip()
        for name in SEARCH_FIELDS
        if name not in ("model", "fuel_type", "region", "status")
    }
    values["model"] = [
        m.strip() for raw in params.getlist("model") for m in raw.split(",") if m.strip()
    ]
    search = Search(values=values)
    errors = search.errors
    enums: dict[str, type[FuelType] | type[Region] | type[VehicleStatus]] = {
        "fuel_type": FuelType,
        "region": Region,
        "status": VehicleStatus,
    }
    for name, enum in enums.items():
        chosen = [v for v in params.getlist(name) if v]
        values[name] = chosen
        bad = [v for v in chosen if v not in {e.value for e in enum}]
        if bad:
            errors[name] = f"{bad[0]!r} is not one of {', '.join(e.value for e in enum)}"
    low, high = _year(request, "model_year_min", errors), _year(request, "model_year_max", errors)
    prefix = values["vin_prefix"].upper()
    if prefix and (len(prefix) > 17 or not prefix.isalnum()):
        errors["vin_prefix"] = "a VIN prefix holds up to 17 letters and digits"
    if errors:
        return search
    countries = [c.strip().upper() for c in values["country"].split(",") if c.strip()]
    if not values["q"]:
        search.filter = repository.VehicleFilter(
            models=values["model"],
            model_year_min=low,
            model_year_max=high,
            fuel_types=values["fuel_type"],
            regions=values["region"],
            countries=countries,
            statuses=values["status"],
            vin_prefix=prefix or None,
            ecu_type=values["ecu_type"] or None,
            hardware_part_number=values["hardware_part_number"] or None,
            hardware_version=values["hardware_version"] or None,
            software_version=values["software_version"] or None,
            attributes={k[5:]: v for k, v in params.items() if k.startswith("attr.")},
        )
        return search
    # With a query, everything becomes one target selection (the targeting preview's).
    ecu_fields = ("hardware_part_number", "hardware_version", "software_version")
    if any(values[f] for f in ecu_fields) and not values["ecu_type"]:
        errors["ecu_type"] = "with a query, name the ECU type the ECU fields are about"
        return search
    query = values["q"]
    if prefix:
        query = f"({values['q']});vin=={prefix}*"
    try:
        search.selection = TargetSelection(
            models=values["model"],
            model_year_min=low,
            model_year_max=high,
            fuel_types=values["fuel_type"],
            regions=values["region"],
            countries=countries,
            statuses=values["status"],
            attributes={k[5:]: v for k, v in params.items() if k.startswith("attr.")},
            ecus=[
                EcuCondition(
                    ecu_type=values["ecu_type"],
                    hardware_part_numbers=[values[f] for f in ecu_fields[:1] if values[f]],
                    hardware_versions=[values[f] for f in ecu_fields[1:2] if values[f]],
                    software_versions=[values[f] for f in ecu_fields[2:] if values[f]],
                )
            ]
            if values["ecu_type"]
            else [],
            query=query,
        )
    except QueryError as exc:
        errors["q"] = exc.detail
    except ValidationError as exc:
        errors.update(validation_errors(exc, SEARCH_FIELDS))
    return search


def _selected(
    session: Session, selection: TargetSelection, cursor: str | None
) -> tuple[list[Vehicle], str | None]:
    condition = selection_condition(selection, session.get_bind().dialect.name)
    query = select(Vehicle).where(condition)
    if cursor:
        query = query.where(Vehicle.id > decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(Vehicle.id).limit(PAGE_SIZE + 1)))
    next_cursor = encode_cursor(rows[PAGE_SIZE - 1].id) if len(rows) > PAGE_SIZE else None
    return rows[:PAGE_SIZE], next_cursor


@router.get("/fleet", response_class=HTMLResponse)
def vehicles(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    search = read_search(request)
    rows: list[Vehicle] = []
    next_cursor = None
    try:
        if search.filter is not None:
            rows, next_cursor = repository.search_vehicles(
                session, search.filter, limit=PAGE_SIZE, cursor=cursor
            )
        elif search.selection is not None:
            rows, next_cursor = _selected(session, search.selection, cursor)
    except OtacmError as exc:
        search.errors.update(service_errors(exc, SEARCH_FIELDS))
    return render(
        request,
        "fleet.html",
        status_code=422 if search.errors else 200,
        search=search.values,
        errors=search.errors,
        vehicles=rows,
        pager=pager(request, next_cursor),
        fuel_types=list(FuelType),
        regions=list(Region),
        statuses=list(VehicleStatus),
    )


def _vehicle_page(
    request: Request,
    session: Session,
    vin: str,
    *,
    errors: FormErrors | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    detail = service.vehicle_detail(session, vin)
    updates = targeting.vehicle_updates(session, vin)
    vehicle = service.vehicle_or_404(session, vin)
    deployments = session.execute(
        select(Deployment, Campaign.name, Campaign.state)
        .join(Campaign, Campaign.id == Deployment.campaign_id)
        .where(Deployment.vehicle_id == vehicle.id)
        .order_by(Deployment.id.desc())
        .limit(SHOWN_DEPLOYMENTS)
    ).all()
    return render(
        request,
        "vehicle.html",
        status_code=422 if errors else 200,
        vehicle=detail,
        updates=updates,
        deployments=deployments,
        statuses=list(VehicleStatus),
        errors=errors or {},
        form=form or {},
    )


@router.get("/fleet/vehicles/{vin}", response_class=HTMLResponse)
def vehicle(
    vin: str,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
) -> HTMLResponse:
    return _vehicle_page(request, session, vin)


@router.post("/fleet/vehicles/{vin}/status", response_class=HTMLResponse)
def change_status(
    vin: str,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.VEHICLE_WRITE))],
) -> Response:
    sent = {"status": text(form, "status"), "reason": text(form, "reason")}
    fields = ("status", "reason")
    try:
        change = VehicleStatusChange.model_validate(sent)
        service.change_status(session, principal.actor, vin, change.status, change.reason)
    except ValidationError as exc:
        return _vehicle_page(
            request, session, vin, errors=validation_errors(exc, fields), form=sent
        )
    except OtacmError as exc:
        session.rollback()
        errors = service_errors(exc, fields)
        if FORM in errors and exc.status_code == 404:
            raise
        return _vehicle_page(request, session, vin, errors=errors, form=sent)
    return see_other(f"/fleet/vehicles/{vin}", "status")
