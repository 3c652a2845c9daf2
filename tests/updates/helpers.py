"""Helpers shared by the update catalog tests: API calls, raw table reads, staged files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, select, update

from otacm.config import Settings
from otacm.db import utcnow
from otacm.security.models import AuditEntry
from otacm.updates.models import ReleaseCounter, SoftwareUpdate, UpdateArtifact
from tests.builders import update_document

UPDATES = SoftwareUpdate.__table__
ARTIFACTS = UpdateArtifact.__table__
COUNTERS = ReleaseCounter.__table__
AUDIT = AuditEntry.__table__


def create(client: TestClient, **overrides: Any) -> dict[str, Any]:
    """POST a draft built from `update_document(**overrides)`; its answer."""
    response = client.post("/api/v1/updates", json=update_document(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def upload(
    client: TestClient,
    update_id: int,
    data: Any,
    filename: str = "bcm.bin",
    **params: str,
) -> Response:
    """POST a file (bytes, or an iterator of chunks: sent chunked) to a draft."""
    return client.post(
        f"/api/v1/updates/{update_id}/artifacts",
        params={"filename": filename, **params},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def error(response: Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """Check an error answer's status, code and named field; the body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert body.get("field") == field, body
    assert body["detail"], body
    return body


def rows(engine: Engine, table: Any) -> list[dict[str, Any]]:
    """Every row of `table` in primary key order, as plain dicts."""
    with engine.connect() as conn:
        result = conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r._mapping) for r in result]


def catalog_state(engine: Engine) -> tuple[list[dict[str, Any]], ...]:
    """Everything an update operation may change, to compare before and after a refusal."""
    return rows(engine, UPDATES), rows(engine, ARTIFACTS), rows(engine, COUNTERS)


def audit_actions(engine: Engine, update_id: int | None = None) -> list[str]:
    """The actions audited on update objects (of one update), oldest first."""
    return [
        r["action"]
        for r in rows(engine, AUDIT)
        if r["object_type"] == "update" and (update_id is None or r["object_id"] == str(update_id))
    ]


def stored_files(settings: Settings) -> list[str]:
    """Every file under the artifact storage root, temporary ones included, relative."""
    root = settings.resolved_storage_path()
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def stored_bytes(settings: Settings, storage_key: str) -> bytes:
    return Path(settings.resolved_storage_path(), *storage_key.split("/")).read_bytes()


def mark_released(engine: Engine, update_id: int, counter: int = 1) -> None:
    """Put a draft into the released state directly: a test of what happens to a released
    update needs no signing keys or TUF repository."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(UPDATES)
            .where(UPDATES.c.id == update_id)
            .values(
                state="released",
                released_at=now,
                released_by="test-release",
                release_counter=counter,
                updated_at=now,
            )
        )


def set_updated_at(engine: Engine, update_id: int, ago: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(UPDATES).where(UPDATES.c.id == update_id).values(updated_at=utcnow() - ago)
        )
