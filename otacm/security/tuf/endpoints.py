"""HTTP: the image repository's metadata at `/tuf/image/`, as python-tuf's `ngclient` reads it.

`{N}.root.json`, `timestamp.json`, `{V}.snapshot.json` and `{V}.targets.json`, plus the newest
root, snapshot and targets without a version. Vehicles verify every file against the keys they
trust, so these routes need no credentials. Versioned files never change once signed: they may
be cached for good; the unversioned ones (timestamp above all) must be asked for again.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.deps import SessionDep, get_settings
from otacm.security.tuf.repository import ImageRepository, MetadataRepository

router = APIRouter(prefix="/tuf/image", tags=["image repository"], include_in_schema=False)

# `{version}.{role}.json` or `{role}.json`; timestamp is only ever fetched unversioned.
_FILE = re.compile(
    r"^(?:(?P<version>[1-9][0-9]{0,8})\.)?(?P<role>root|snapshot|targets|timestamp)\.json$"
)
JSON = "application/json"
# A signed version never changes; the newest-version names change with every signing.
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"


def metadata_response(
    repository: MetadataRepository, session: Session, filename: str, request: Request
) -> Response:
    """The metadata file `filename` of `repository`, or 404 (a TUF client reads a 404 for
    `{N+1}.root.json` as "no newer root")."""
    match = _FILE.match(filename)
    content = None
    if match and not (match["role"] == "timestamp" and match["version"]):
        version = int(match["version"]) if match["version"] else None
        content = repository.metadata_bytes(session, match["role"], version)
    if content is None or match is None:
        return Response(
            b'{"error":"not_found","detail":"no such metadata"}',
            status_code=404,
            media_type=JSON,
            headers={"Cache-Control": NO_CACHE},
        )
    tag = '"' + hashlib.sha256(content).hexdigest() + '"'
    headers = {
        "ETag": tag,
        "Cache-Control": IMMUTABLE if match["version"] else NO_CACHE,
    }
    if tag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(content))
        return Response(status_code=200, media_type=JSON, headers=headers)
    return Response(content, media_type=JSON, headers=headers)


@router.api_route("/{filename}", methods=["GET", "HEAD"])
def image_metadata(
    filename: str,
    request: Request,
    session: SessionDep,
    settings: Annotated[Settings, Depends(get_settings)],
) -> Response:
    return metadata_response(ImageRepository(settings), session, filename, request)
