"""Prometheus metrics and the health endpoints."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import Engine, text
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otacm.db import current_revision, head_revision
from otacm.errors import OtacmError

REQUESTS = Counter(
    "otacm_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "otacm_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IMPORTED_RECORDS = Counter(
    "otacm_fleet_import_records_total", "Manufacturing export records read", ["outcome"]
)

router = APIRouter(tags=["operations"])


def request_id(request: Request) -> str:
    """The request's id: the caller's `X-Request-ID` if it sent one, else a new one."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get("X-Request-ID", "")[:64]
        rid = given if given.isprintable() and given else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


class RequestRecorder:
    """Pure ASGI middleware: gives every answer its `X-Request-ID` and counts it in the metrics.

    Written against ASGI rather than as an `@app.middleware("http")` function because that
    wrapper re-queues every chunk of a request body, which cut upload throughput by more than
    half.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(Request(scope))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The route template, not the path: one series per endpoint, not per VIN.
            name = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(scope["method"], name).observe(time.perf_counter() - started)
            REQUESTS.labels(scope["method"], name, str(status)).inc()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """The database answers, its schema is at the version this code needs, and the artifact
    storage is usable."""
    engine: Engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current, head = current_revision(engine), head_revision(engine)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, 503)
    if current != head:
        return JSONResponse(
            {
                "status": "not_migrated",
                "detail": f"schema {current}, needs {head}: run `otacm db upgrade`",
            },
            503,
        )
    try:
        request.app.state.storage.check()
    except OtacmError as exc:
        return JSONResponse({"status": "storage_unavailable", "detail": exc.detail}, 503)
    return JSONResponse({"status": "ok", "schema": current})
