"""Downloads of released files from the image repository: `/tuf/image/targets/...`.

Vehicles ask for `targets/<dir>/<sha256>.<name>` (TUF consistent snapshots) and verify every
byte against the signed targets metadata, so these routes need no credentials. They support
HEAD, byte ranges (206, resumable downloads; several ranges in one request only from local
disk), `ETag` / `If-None-Match` (the ETag is the file's SHA-256) and stream in bounded memory.
With S3 storage a GET may be answered with a redirect to a short-lived presigned URL, so the
bytes never pass through us.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.deps import SessionDep, get_settings, get_storage
from otacm.errors import NotFound
from otacm.updates import repository
from otacm.updates.models import UpdateArtifact
from otacm.updates.storage import ArtifactStorage

router = APIRouter(prefix="/tuf/image", tags=["image repository"])

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
OCTET_STREAM = "application/octet-stream"


class TargetNotFound(NotFound):
    code = "target_not_found"


class LargeChunkFileResponse(FileResponse):
    # Starlette reads 64 KiB per await; larger reads cut the per-chunk overhead on big files.
    chunk_size = 1 << 20


def _artifact_for(session: Session, path: str) -> UpdateArtifact:
    directory, _, name = path.rpartition("/")
    digest, dot, filename = name.partition(".")
    artifact = None
    if dot and len(digest) == 64:
        target = f"{directory}/{filename}" if directory else filename
        artifact = repository.artifact_by_target(session, target)
    if artifact is None or artifact.sha256 != digest:
        raise TargetNotFound(f"the image repository has no target file {path!r}")
    return artifact


def _etag(artifact: UpdateArtifact) -> str:
    return f'"{artifact.sha256}"'


def _not_modified(request: Request, etag: str) -> bool:
    candidates = request.headers.get("if-none-match")
    if not candidates:
        return False
    return any(c.strip() in (etag, f"W/{etag}", "*") for c in candidates.split(","))


def parse_single_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a one-range `Range` header; None when it should be ignored
    (several ranges, an unknown unit), ValueError when nothing of it lies in the file."""
    match = _SINGLE_RANGE.match(header.replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise ValueError(header)
    return start, end


@router.get("/targets/{path:path}", response_model=None)
@router.head("/targets/{path:path}", response_model=None, include_in_schema=False)
async def download_target(
    path: str,
    request: Request,
    session: SessionDep,
    settings: Annotated[Settings, Depends(get_settings)],
    storage: Annotated[ArtifactStorage, Depends(get_storage)],
) -> Response:
    artifact = await run_in_threadpool(_artifact_for, session, path)
    etag = _etag(artifact)
    headers = {"etag": etag, "cache-control": "public, max-age=31536000, immutable"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    local = storage.local_path(artifact.storage_key)
    if local is not None:
        return LargeChunkFileResponse(local, media_type=OCTET_STREAM, headers=headers)
    if request.method == "HEAD":
        # Answered here, not redirected: a presigned URL is signed for GET only.
        size = str(artifact.length)
        headers = {**headers, "content-length": size, "accept-ranges": "bytes"}
        return Response(status_code=200, headers=headers, media_type=OCTET_STREAM)
    if settings.s3_presign_downloads:
        url = await run_in_threadpool(
            storage.presigned_url,
            artifact.storage_key,
            expires=settings.s3_presign_expiry,
            filename=artifact.filename,
        )
        if url:
            return RedirectResponse(url, status_code=307, headers={"cache-control": "no-store"})
    return await run_in_threadpool(_streamed, request, storage, artifact, headers)


def _streamed(
    request: Request, storage: ArtifactStorage, artifact: UpdateArtifact, headers: dict[str, str]
) -> Response:
    size = artifact.length
    headers = {**headers, "accept-ranges": "bytes"}
    start, end, status = 0, size, 200
    requested = request.headers.get("range")
    if requested:
        try:
            span = parse_single_range(requested, size)
        except ValueError:
            return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
        if span is not None:
            start, end = span
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    headers["content-length"] = str(end - start)
    # Opened before the answer starts, so a missing object is a 404 rather than a cut-off 200.
    stream = storage.read(artifact.storage_key, start, end)

    async def body() -> AsyncIterator[bytes]:
        # Closed however the answer ends: a client that goes away must not leave the
        # connection to the object store open.
        try:
            async for chunk in iterate_in_threadpool(stream):
                yield chunk
        finally:
            await run_in_threadpool(stream.close)

    return StreamingResponse(
        body(),
        status_code=status,
        headers=headers,
        media_type=OCTET_STREAM,
    )
