"""The HTTP application: one FastAPI app carrying every domain's router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from otacm import __version__, periodic
from otacm.alerts.endpoints import router as alerts_router
from otacm.campaigns.endpoints import router as campaigns_router
from otacm.config import Settings, get_settings
from otacm.console.pages import router as console_router
from otacm.db import engine_from_settings, make_session_factory, make_write_session_factory
from otacm.errors import OtacmError
from otacm.fleet.endpoints import router as fleet_router
from otacm.notifications.endpoints import router as webhooks_router
from otacm.observability import RequestRecorder
from otacm.observability import router as operations_router
from otacm.security.endpoints import router as operators_router
from otacm.security.tuf.endpoints import router as tuf_router
from otacm.targeting.endpoints import router as targeting_router
from otacm.updates.downloads import router as downloads_router
from otacm.updates.endpoints import router as updates_router
from otacm.updates.storage import storage_from_settings
from otacm.vehicle_api.auth import FastIdentifier
from otacm.vehicle_api.endpoints import director_router
from otacm.vehicle_api.endpoints import router as vehicle_router


async def _otacm_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OtacmError)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    # ("query", "fuel_type", 0) names the field fuel_type: sources and list indexes go.
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]  # where it came from, not a field: a body field may well be "query"
    location = [str(p) for p in loc if not isinstance(p, int)]
    body: dict[str, Any] = {
        "error": "validation_failed",
        "detail": first.get("msg", "invalid request"),
        "field": ".".join(location) or None,
        "errors": [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "detail": e.get("msg")}
            for e in errors
        ],
    }
    return JSONResponse(body, status_code=422)


def _periodic_jobs(app: FastAPI) -> list[periodic.Job]:
    """The periodic jobs of `otacm serve`; a zero interval turns one off (tests drive them by
    hand)."""
    from otacm import maintenance
    from otacm.campaigns import engine
    from otacm.notifications import delivery

    settings: Settings = app.state.settings
    factory = app.state.write_session_factory
    engine_every = settings.engine_interval
    deliver_every = settings.notification_interval
    return [
        periodic.Job(
            "maintenance",
            settings.maintenance_interval,
            lambda: maintenance.run_periodically(factory, settings, app.state.storage),
        ),
        periodic.Job(
            "rollout engine",
            engine_every,
            lambda: engine.run_periodically(factory, engine_every.total_seconds(), settings),
        ),
        periodic.Job(
            "notification delivery",
            deliver_every,
            lambda: delivery.run_periodically(factory, settings, deliver_every.total_seconds()),
        ),
    ]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    tasks = periodic.start(_periodic_jobs(app))
    await app.state.vehicle_identifier.start()
    try:
        yield
    finally:
        await app.state.vehicle_identifier.close()
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = engine or engine_from_settings(settings)
    app = FastAPI(
        lifespan=_lifespan,
        title="otacm",
        version=__version__,
        description="Over-the-air software update campaign manager for vehicle fleets.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.write_session_factory = make_write_session_factory(engine)
    app.state.storage = storage_from_settings(settings)
    app.state.vehicle_identifier = FastIdentifier(engine, settings)
    app.add_exception_handler(OtacmError, _otacm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(RequestRecorder)
    # First: routes are matched in order, at about 1.5 µs each, and the vehicle poll is the
    # most frequent request by far (an idle fleet's polls; docs/benchmarks.md, "Vehicle API").
    app.include_router(vehicle_router)
    app.include_router(operations_router)
    app.include_router(fleet_router)
    app.include_router(operators_router)
    app.include_router(tuf_router)
    app.include_router(updates_router)
    app.include_router(targeting_router)
    app.include_router(campaigns_router)
    app.include_router(alerts_router)
    app.include_router(webhooks_router)
    app.include_router(downloads_router)
    app.include_router(director_router)
    app.include_router(console_router)
    return app
