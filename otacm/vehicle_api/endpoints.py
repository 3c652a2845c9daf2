"""HTTP: the vehicle API (`/vehicle/v1`) and the director repositories (`/tuf/director/{vin}/`).

The contract is docs/vehicle-api.md. Handlers open their transactions themselves, after the
caller is known: an idle poll is one read on a pooled connection and writes nothing, and a
refused caller never holds SQLite's write lock.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import unit_of_work, utcnow
from otacm.deps import get_settings
from otacm.fleet.models import Vehicle
from otacm.security.keys import KeyStore
from otacm.security.tuf.endpoints import metadata_response
from otacm.vehicle_api import events as vehicle_events
from otacm.vehicle_api import manifest as vehicle_manifest
from otacm.vehicle_api import polling
from otacm.vehicle_api.auth import FastIdentifier, VehicleIdentity, refuse
from otacm.vehicle_api.director import VehicleDirector

log = logging.getLogger("otacm.vehicle_api")

router = APIRouter(prefix="/vehicle/v1", tags=["vehicle API"])
director_router = APIRouter(prefix="/tuf/director", tags=["director repository"])

POLLS = Counter("otacm_vehicle_polls_total", "Vehicle polls by answer", ["answer"])
IDLE_POLLS = POLLS.labels("idle")
IDLE_FROM_MEMORY = Counter(
    "otacm_vehicle_idle_polls_from_memory_total",
    "Idle polls answered by the process's index, without a database query",
)
VEHICLE_EVENTS = Counter(
    "otacm_vehicle_events_total", "Deployment events from vehicles by outcome", ["outcome"]
)

SettingsDep = Annotated[Settings, Depends(get_settings)]
POLL_AFTER = "Poll-After"
NO_STORE = "no-store"


def _writer(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.write_session_factory
    return factory


def _reader(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def authenticate(request: Request, settings: Settings) -> VehicleIdentity:
    """The calling vehicle, for handlers in a worker thread. Raises VehicleUnauthorized (a
    revoked credential in use is recorded against its vehicle first)."""
    identifier: FastIdentifier = request.app.state.vehicle_identifier
    identity, revoked = identifier.identify_sync(request)
    return _known(request, identity, revoked)


def _known(
    request: Request, identity: VehicleIdentity | None, revoked: int | None
) -> VehicleIdentity:
    if identity is not None:
        return identity
    if revoked is not None:
        with unit_of_work(_writer(request)) as session:
            error = refuse(session, revoked, utcnow())
    else:
        error = refuse(None, None, utcnow())
    raise error


@router.get(
    "/updates",
    summary="The vehicle's pending offers",
    responses={
        200: {"description": "The offers (docs/vehicle-api.md)"},
        204: {"description": "Nothing is pending"},
        304: {"description": "The offers are unchanged (If-None-Match)"},
        401: {"description": "No valid vehicle credential"},
    },
)
async def get_updates(request: Request) -> Response:
    # Async, with no dependencies to resolve in worker threads: an idle poll is answered from
    # the process's index when it can, else it is one awaited query and an answer.
    settings: Settings = request.app.state.settings
    identifier: FastIdentifier = request.app.state.vehicle_identifier
    if identifier.idle_from_memory(request):
        IDLE_FROM_MEMORY.inc()
        return _idle(settings)
    found, revoked = await identifier.identify(request)
    if found is None:
        await run_in_threadpool(_known, request, found, revoked)  # raises: not a vehicle
    assert found is not None
    identity = found
    if not identity.has_work:
        return _idle(settings)
    return await run_in_threadpool(_poll_with_work, request, settings, identity)


def _idle(settings: Settings) -> Response:
    IDLE_POLLS.inc()
    return Response(
        status_code=204,
        headers={POLL_AFTER: str(polling.poll_after(settings, False)), "Cache-Control": NO_STORE},
    )


def _poll_with_work(request: Request, settings: Settings, identity: VehicleIdentity) -> Response:
    now = utcnow()
    with unit_of_work(_writer(request)) as session:
        vehicle = session.get(Vehicle, identity.vehicle_id)
        assert vehicle is not None
        offers = polling.poll(
            session, vehicle, settings, now, request.headers.get("accept-language")
        )
    wait = str(polling.poll_after(settings, True))
    if not offers:
        POLLS.labels("waiting").inc()
        return Response(status_code=204, headers={POLL_AFTER: wait, "Cache-Control": NO_STORE})
    etag = polling.etag_of(offers)
    headers = {POLL_AFTER: wait, "ETag": etag, "Cache-Control": NO_STORE}
    if etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        POLLS.labels("unchanged").inc()
        return Response(status_code=304, headers=headers)
    POLLS.labels("offers").inc()
    return JSONResponse({"poll_after_s": int(wait), "offers": offers}, headers=headers)


@router.post(
    "/deployments/{deployment_id}/events",
    response_model=vehicle_events.EventsOut,
    summary="Report deployment events",
)
def post_events(
    deployment_id: int, body: vehicle_events.EventsIn, request: Request, settings: SettingsDep
) -> vehicle_events.EventsOut:
    identity = authenticate(request, settings)
    with unit_of_work(_writer(request)) as session:
        state, results = vehicle_events.receive(
            session, identity.vehicle_id, identity.vin, deployment_id, body, utcnow()
        )
    for result in results:
        VEHICLE_EVENTS.labels(result.outcome.value).inc()
    active = state.value not in ("succeeded", "failed", "declined", "cancelled", "expired")
    return vehicle_events.EventsOut(
        state=state, poll_after_s=polling.poll_after(settings, active), results=results
    )


@router.put(
    "/manifest",
    response_model=vehicle_manifest.ManifestOut,
    summary="Report what every ECU runs (the vehicle version manifest)",
)
def put_manifest(body: vehicle_manifest.ManifestIn, request: Request, settings: SettingsDep) -> Any:
    identity = authenticate(request, settings)
    refused: vehicle_manifest.ManifestRefused | vehicle_manifest.ManifestReplayed | None = None
    with unit_of_work(_writer(request)) as session:
        try:
            accepted = vehicle_manifest.receive(
                session, identity.vehicle_id, identity.vin, body, utcnow()
            )
        except (vehicle_manifest.ManifestRefused, vehicle_manifest.ManifestReplayed) as exc:
            refused = exc  # the security event commits with the transaction
    if refused is not None:
        log.warning("vehicle %s: manifest refused: %s", identity.vin, refused.code)
        return JSONResponse(refused.to_dict(), status_code=refused.status_code)
    return vehicle_manifest.ManifestOut(
        report_counter=accepted.report_counter,
        confirmed_deployments=accepted.confirmed,
        unknown_serials=accepted.unknown_serials,
        poll_after_s=polling.poll_after(settings, bool(accepted.confirmed)),
    )


@director_router.api_route("/{vin}/{filename}", methods=["GET", "HEAD"], include_in_schema=False)
def director_metadata(vin: str, filename: str, request: Request, settings: SettingsDep) -> Response:
    """The vehicle's own director metadata; any other VIN is not found."""
    identity = authenticate(request, settings)
    if vin.upper() != identity.vin:
        return Response(
            b'{"error":"not_found","detail":"no such metadata"}',
            status_code=404,
            media_type="application/json",
        )
    repository = VehicleDirector(identity.vin, settings)
    with unit_of_work(_reader(request)) as session:
        # The client's refresh starts at the timestamp: what the metadata says is brought up
        # to date first, in a transaction that writes only when something must be signed.
        current = filename != "timestamp.json" or repository.current(
            session, repository.assignment(session, identity.vehicle_id)
        )
    if not current:
        with unit_of_work(_writer(request)) as session:
            steps = repository.assignment(session, identity.vehicle_id)
            repository.sync(session, KeyStore.from_settings(settings), steps)
    with unit_of_work(_reader(request)) as session:
        response = metadata_response(repository, session, filename, request)
    if response.headers.get("cache-control", "").startswith("public"):
        # One vehicle's metadata: never in a shared cache.
        response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
