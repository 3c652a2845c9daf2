"""HTTP endpoints of the update catalog: drafts, their files, release and withdrawal."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from otacm.db import unit_of_work, utcnow
from otacm.deps import (
    SessionDep,
    SettingsDep,
    WriteSessionDep,
    get_storage,
)
from otacm.fleet.records import FuelType, Protocol
from otacm.security.auth import Principal, require
from otacm.security.permissions import Permission
from otacm.updates import artifacts, repository, service
from otacm.updates.schemas import (
    ArtifactOut,
    SupportStatus,
    UpdateCategory,
    UpdateCreate,
    UpdateFields,
    UpdateOut,
    UpdatePage,
    UpdateState,
    WithdrawRequest,
)
from otacm.updates.storage import ArtifactStorage

router = APIRouter(prefix="/api/v1", tags=["updates"])

# Request-body chunks are handed to a worker thread (hashing, encrypting, writing) in batches
# of about this many bytes, so the event loop keeps receiving while the thread works.
UPLOAD_BATCH_BYTES = 4 << 20


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _out(session: Session, request: Request, update_id: int) -> UpdateOut:
    update = service.get_update(session, update_id)
    files = repository.artifacts_of(session, [update.id])[update.id]
    return service.update_out(update, files, utcnow().date(), _base_url(request))


@router.post("/updates", response_model=UpdateOut, status_code=201)
def create_update(
    data: UpdateCreate,
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_WRITE))],
) -> UpdateOut:
    """Define a new software update as a draft; fill in the rest and upload files after."""
    update = service.create_draft(session, principal.actor, data, settings)
    return _out(session, request, update.id)


@router.get("/updates", response_model=UpdatePage)
def list_updates(
    request: Request,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.UPDATES_READ))],
    version: Annotated[str | None, Query(max_length=100)] = None,
    protocol: Annotated[list[Protocol], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    model: Annotated[list[str], Query()] = [],  # noqa: B006
    fuel_type: Annotated[list[FuelType], Query()] = [],  # noqa: B006
    ecu_type: Annotated[list[str], Query()] = [],  # noqa: B006
    hardware_part_number: Annotated[str | None, Query(max_length=64)] = None,
    hardware_version: Annotated[str | None, Query(max_length=32)] = None,
    state: Annotated[list[UpdateState], Query()] = [],  # noqa: B006
    support_status: SupportStatus | None = None,
    category: Annotated[list[UpdateCategory], Query()] = [],  # noqa: B006
    q: Annotated[str | None, Query(max_length=200, description="Text in name, notes")] = None,
    order: Annotated[str, Query(pattern="^(newest|oldest)$")] = "newest",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> UpdatePage:
    """The catalog, filtered, in natural version order (4.10.0 after 4.9.2; see docs/updates.md)."""
    f = repository.CatalogFilter(
        version=version,
        protocols=[p.value for p in protocol],
        models=model,
        fuel_types=[f.value for f in fuel_type],
        ecu_types=ecu_type,
        hardware_part_number=hardware_part_number,
        hardware_version=hardware_version,
        states=[s.value for s in state],
        support_status=support_status,
        categories=[c.value for c in category],
        text=q,
    )
    today = utcnow().date()
    rows, next_cursor = repository.search_updates(
        session, f, today=today, newest_first=order == "newest", limit=limit, cursor=cursor
    )
    files = repository.artifacts_of(session, [u.id for u in rows])
    base_url = _base_url(request)
    return UpdatePage(
        items=[service.update_out(u, files[u.id], today, base_url) for u in rows],
        next_cursor=next_cursor,
    )


@router.get("/updates/{update_id}", response_model=UpdateOut)
def get_update(
    update_id: int,
    request: Request,
    session: SessionDep,
    _: Annotated[Principal, Depends(require(Permission.UPDATES_READ))],
) -> UpdateOut:
    return _out(session, request, update_id)


@router.patch("/updates/{update_id}", response_model=UpdateOut)
def edit_update(
    update_id: int,
    changes: UpdateFields,
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_WRITE))],
) -> UpdateOut:
    """Change the fields sent; only drafts can change."""
    service.edit_draft(session, principal.actor, update_id, changes, settings)
    return _out(session, request, update_id)


async def _receive_into(request: Request, receiver: artifacts.ArtifactReceiver) -> None:
    """Feed the request body to `receiver` in batches, one batch being hashed and written in a
    worker thread while the next arrives, so receiving and hashing overlap; at most two batches
    are held. Chunks are gathered into one buffer per batch so that the worker hashes and writes
    it in one call each: every call gives up the GIL and must win it back from the event loop,
    which for 64 KiB chunks cost more than the hashing."""
    in_flight: asyncio.Task[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            batch.append(chunk)
            size += len(chunk)
            if size >= UPLOAD_BATCH_BYTES:
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(run_in_threadpool(receiver.feed_joined, batch))
                batch, size = [], 0
    except ClientDisconnect:
        raise artifacts.UploadIncomplete(
            "the client disconnected before the whole file arrived"
        ) from None
    finally:
        # Never leave a batch being written while the caller finishes or discards the file.
        if in_flight is not None:
            await asyncio.shield(in_flight)
    if batch:
        await run_in_threadpool(receiver.feed_joined, batch)


@router.post(
    "/updates/{update_id}/artifacts",
    response_model=ArtifactOut,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "required": True,
        }
    },
)
async def upload_artifact(
    update_id: int,
    request: Request,
    settings: SettingsDep,
    storage: Annotated[ArtifactStorage, Depends(get_storage)],
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_WRITE))],
    filename: Annotated[str, Query(max_length=1000)],
    sha256: Annotated[
        str | None, Query(max_length=100, description="Expected SHA-256 of the file")
    ] = None,
) -> ArtifactOut:
    """Upload one file of a draft as the raw request body (streamed, never held in memory).

    The SHA-256 and length are computed on the way in; with `sha256` given, a different file is
    refused and nothing is kept.
    """
    factory = request.app.state.session_factory
    write_factory = request.app.state.write_session_factory

    def prepare() -> bytes | None:
        with unit_of_work(factory) as session:
            update = artifacts.check_upload_allowed(session, update_id, filename)
            return service.data_key_of(update, settings)

    data_key = await run_in_threadpool(prepare)
    announced = request.headers.get("content-length")
    receiver = artifacts.ArtifactReceiver(
        storage,
        max_bytes=settings.artifact_max_bytes,
        data_key=data_key,
        expected_length=int(announced) if announced and announced.isdigit() else None,
        declared_sha256=sha256,
    )
    await run_in_threadpool(receiver.__enter__)  # on failure it leaves nothing behind
    try:
        await _receive_into(request, receiver)
        received = await run_in_threadpool(receiver.finish)
    except BaseException as exc:
        await run_in_threadpool(receiver.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await run_in_threadpool(receiver.__exit__, None, None, None)

    artifact = await run_in_threadpool(
        artifacts.attach_or_discard,
        write_factory,
        storage,
        principal.actor,
        update_id,
        filename,
        received,
        settings=settings,
    )
    return service.artifact_out(artifact, _base_url(request))


@router.delete("/updates/{update_id}/artifacts/{filename}", status_code=204)
def delete_artifact(
    update_id: int,
    filename: str,
    request: Request,
    storage: Annotated[ArtifactStorage, Depends(get_storage)],
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_WRITE))],
) -> Response:
    """Take a file off a draft."""
    with unit_of_work(request.app.state.write_session_factory) as session:
        storage_key = artifacts.remove(session, principal.actor, update_id, filename)
    storage.delete(storage_key)
    return Response(status_code=204)


@router.post("/updates/{update_id}/release", response_model=UpdateOut)
def release_update(
    update_id: int,
    request: Request,
    settings: SettingsDep,
    storage: Annotated[ArtifactStorage, Depends(get_storage)],
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_RELEASE))],
) -> UpdateOut:
    """Check the draft is complete, freeze it, give it a release counter and sign its files
    into the image repository (`/tuf/image/`)."""
    service.release(
        request.app.state.write_session_factory,
        principal.actor,
        update_id,
        settings=settings,
        storage=storage,
    )
    with unit_of_work(request.app.state.session_factory) as session:
        return _out(session, request, update_id)


@router.post("/updates/{update_id}/withdraw", response_model=UpdateOut)
def withdraw_update(
    update_id: int,
    body: WithdrawRequest,
    request: Request,
    session: WriteSessionDep,
    principal: Annotated[Principal, Depends(require(Permission.UPDATES_RELEASE))],
) -> UpdateOut:
    """Take a released update out of use for new campaigns, with a reason."""
    service.withdraw(session, principal.actor, update_id, body.reason)
    return _out(session, request, update_id)
