"""Files of a draft: streamed uploads, every way an upload is refused, deletion, staging cleanup.

Every refusal is checked for what it leaves behind: no artifact row, no audit entry and no file
in the storage directory (temporary files included).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_session_factory, make_write_session_factory, unit_of_work, utcnow
from otacm.errors import Conflict
from otacm.security import encryption
from otacm.security.audit import Actor
from otacm.updates import artifacts, service
from otacm.updates.schemas import UpdateFields
from otacm.updates.storage import LocalStorage, StorageError
from otacm.updates.storage.local import LocalWriter
from tests.updates.helpers import (
    ARTIFACTS,
    AUDIT,
    UPDATES,
    audit_actions,
    catalog_state,
    create,
    error,
    mark_released,
    rows,
    set_updated_at,
    stored_bytes,
    stored_files,
    upload,
)

ACTOR = Actor("tester", "engineer", "local")


def payload(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """The body as a generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def nothing_stored(engine: Engine, settings: Settings) -> None:
    assert rows(engine, ARTIFACTS) == []
    assert "update.artifact.upload" not in audit_actions(engine)
    assert stored_files(settings) == []


def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.resolved_storage_path())


# Accepted uploads


def test_an_upload_is_hashed_on_the_way_in_and_staged(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    body = payload(3_000_000)
    response = upload(client, draft["id"], body, sha256=sha256(body).upper())
    assert response.status_code == 201, response.text
    artifact = response.json()
    assert artifact["filename"] == "bcm.bin"
    assert artifact["length"] == artifact["plaintext_length"] == len(body)
    assert artifact["sha256"] == artifact["plaintext_sha256"] == sha256(body)
    assert artifact["encrypted"] is False
    assert artifact["target_path"] is None and artifact["download_url"] is None
    assert artifact["uploaded_by"] == "test-admin"

    [row] = rows(engine, ARTIFACTS)
    assert row["storage_key"].startswith("staging/")
    assert stored_files(settings) == [row["storage_key"]]
    assert stored_bytes(settings, row["storage_key"]) == body
    assert client.get(f"/api/v1/updates/{draft['id']}").json()["artifacts"] == [artifact]
    assert audit_actions(engine, draft["id"]) == ["update.create", "update.artifact.upload"]


def test_a_chunked_upload_without_length_and_hash(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    # More than one batch handed to the worker thread (endpoints.UPLOAD_BATCH_BYTES).
    body = payload(9 * 1024 * 1024 + 17)
    response = upload(client, draft["id"], chunks(body), "bcm-full.bin")
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256(body)
    [row] = rows(engine, ARTIFACTS)
    assert stored_bytes(settings, row["storage_key"]) == body


def test_several_files_per_draft(client: TestClient, engine: Engine, settings: Settings) -> None:
    draft = create(client)
    for name, seed in [("bcm.bin", 1), ("bcm.sig", 2), ("calibration_v2.hex", 3)]:
        assert upload(client, draft["id"], payload(1000, seed), name).status_code == 201
    listed = client.get(f"/api/v1/updates/{draft['id']}").json()["artifacts"]
    assert [a["filename"] for a in listed] == ["bcm.bin", "bcm.sig", "calibration_v2.hex"]
    assert len(stored_files(settings)) == 3


def test_a_confidential_upload_is_stored_encrypted(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client, confidential=True)
    body = payload(2_500_000)
    response = upload(client, draft["id"], body, sha256=sha256(body))
    assert response.status_code == 201, response.text
    artifact = response.json()
    assert artifact["encrypted"] is True
    assert artifact["plaintext_length"] == len(body)
    assert artifact["plaintext_sha256"] == sha256(body)
    assert artifact["length"] == encryption.encrypted_size(len(body)) != len(body)

    [row] = rows(engine, ARTIFACTS)
    stored = stored_bytes(settings, row["storage_key"])
    assert len(stored) == artifact["length"]
    assert sha256(stored) == artifact["sha256"] != artifact["plaintext_sha256"]
    assert body[:4096] not in stored

    with unit_of_work(make_session_factory(engine)) as session:
        key = service.data_key_of(service.get_update(session, draft["id"]), settings)
    assert key is not None
    assert b"".join(encryption.decrypt_stream([stored], key)) == body
    # The audit entry describes the file as sent, never the key.
    entry = [r for r in rows(engine, AUDIT) if r["action"] == "update.artifact.upload"][0]
    assert entry["after"]["sha256"] == sha256(body) and entry["after"]["encrypted"] is True


# Refused uploads


def test_a_wrong_declared_hash_keeps_nothing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    body = payload(1_500_000)
    declared = sha256(body + b"x")
    response = upload(client, draft["id"], body, sha256=declared)
    detail = error(response, 422, "hash_mismatch", "sha256")
    assert detail["actual"] == sha256(body) and declared in detail["detail"]
    nothing_stored(engine, settings)


def test_a_wrong_declared_hash_of_a_confidential_update_keeps_nothing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client, confidential=True)
    response = upload(client, draft["id"], chunks(payload(300_000)), sha256="0" * 64)
    error(response, 422, "hash_mismatch", "sha256")
    nothing_stored(engine, settings)


def test_a_malformed_declared_hash_is_refused(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    for declared in ["abc", "g" * 64, "0" * 63, " "]:
        error(
            upload(client, draft["id"], b"data", sha256=declared),
            422,
            "validation_failed",
            "sha256",
        )
    error(
        upload(client, draft["id"], b"data", sha256="0" * 101), 422, "validation_failed", "sha256"
    )
    nothing_stored(engine, settings)


def test_a_body_shorter_than_its_content_length_keeps_nothing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    response = client.post(
        f"/api/v1/updates/{draft['id']}/artifacts",
        params={"filename": "bcm.bin"},
        content=payload(1000),
        headers={"Content-Length": "5000", "Content-Type": "application/octet-stream"},
    )
    body = error(response, 422, "upload_incomplete")
    assert body["received"] == 1000 and "5000" in body["detail"]
    nothing_stored(engine, settings)


def test_the_receiver_discards_a_short_file(settings: Settings) -> None:
    store = storage(settings)
    with (
        pytest.raises(artifacts.UploadIncomplete),
        artifacts.ArtifactReceiver(
            store, max_bytes=100, data_key=None, expected_length=10
        ) as receiver,
    ):
        receiver.feed(b"12345")
        assert len(stored_files(settings)) == 1  # the temporary file, while it is written
        receiver.finish()
    assert stored_files(settings) == []


def test_the_receiver_discards_a_file_left_unfinished(settings: Settings) -> None:
    store = storage(settings)
    key = encryption.new_data_key()
    with artifacts.ArtifactReceiver(store, max_bytes=10**6, data_key=key) as receiver:
        receiver.feed(payload(5000))
    assert stored_files(settings) == []
    with (
        pytest.raises(RuntimeError),
        artifacts.ArtifactReceiver(store, max_bytes=10**6, data_key=None) as receiver,
    ):
        receiver.feed(b"abc")
        raise RuntimeError("the client went away")
    assert stored_files(settings) == []


class FailingWriter(LocalWriter):
    """Fails on its `fail_on`-th write, as a disk that fills up or a bucket that goes away."""

    def __init__(self, key: str, path: Path, fail_on: int) -> None:
        super().__init__(key, path)
        self.fail_on, self.writes = fail_on, 0

    def _write(self, data: Any) -> None:
        self.writes += 1
        if self.writes == self.fail_on:
            raise StorageError(f"cannot write artifact {self.key!r}: no space left on device")
        super()._write(data)


class FailingStorage(LocalStorage):
    def __init__(self, root: Path, fail_on: int) -> None:
        super().__init__(root)
        self.fail_on = fail_on

    def writer(self, key: str) -> LocalWriter:
        return FailingWriter(key, self._path(key), self.fail_on)


def test_a_storage_write_that_fails_keeps_nothing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    client.app.state.storage = FailingStorage(settings.resolved_storage_path(), fail_on=1)
    draft = create(client)
    error(upload(client, draft["id"], payload(100_000)), 503, "storage_unavailable")
    nothing_stored(engine, settings)


@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_the_writer_threads_error_reaches_the_receiver(settings: Settings, fail_on: int) -> None:
    """Whichever write fails (the last one included), the file is not finished with bytes
    missing: the error comes out of a later `feed` or out of `finish`, and nothing is kept."""
    store = FailingStorage(settings.resolved_storage_path(), fail_on)
    with (
        pytest.raises(StorageError, match="no space left"),
        artifacts.ArtifactReceiver(store, max_bytes=10**6, data_key=None) as receiver,
    ):
        for piece in range(3):
            receiver.feed(payload(1000, piece))
        receiver.finish()
    assert stored_files(settings) == []


def test_an_empty_file_is_refused(client: TestClient, engine: Engine, settings: Settings) -> None:
    draft = create(client)
    error(upload(client, draft["id"], b""), 422, "empty_artifact")
    error(upload(client, draft["id"], chunks(b"")), 422, "empty_artifact")
    nothing_stored(engine, settings)


def test_an_upload_never_makes_a_new_server_key(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    """A confidential update's data key is wrapped under the server key: a key file made now
    could open nothing. A missing one is named, and none appears."""
    draft = create(client, confidential=True)
    key_file = settings.resolved_keys_dir() / encryption.SERVER_KEY_FILE
    key_file.unlink()
    body = error(upload(client, draft["id"], payload(1000)), 409, "keys_not_initialised")
    assert "otacm keys init" in body["detail"]
    assert not key_file.exists()
    nothing_stored(engine, settings)


@pytest.fixture
def live_server(client: TestClient, settings: Settings, engine: Engine) -> Iterator[int]:
    """The app on a real socket (uvicorn in a thread): its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings, engine), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    client: TestClient, engine: Engine, settings: Settings, live_server: int
) -> None:
    draft = create(client)
    token = client.headers["Authorization"]
    head = (
        f"POST /api/v1/updates/{draft['id']}/artifacts?filename=bcm.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: {token}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", live_server), timeout=10) as conn:
        conn.sendall(head.encode() + payload(2_000_000))
        # The server is writing the file (a temporary one in the staging directory) ...
        wait_for(lambda: bool(stored_files(settings)), "the upload never started")
    # ... and removes it once it sees the connection end.
    wait_for(lambda: not stored_files(settings), f"left behind: {stored_files(settings)}")
    assert rows(engine, ARTIFACTS) == []
    assert audit_actions(engine) == ["update.create"]
    # The server is still fine: the same upload, complete, is accepted.
    assert upload(client, draft["id"], payload(1000)).status_code == 201


def test_files_over_the_size_limit_are_refused(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    limit = 64 * 1024
    client.app.state.settings = settings.model_copy(update={"artifact_max_bytes": limit})
    draft = create(client)
    # Announced too large: refused before a byte is read.
    body = error(upload(client, draft["id"], payload(limit + 1)), 413, "artifact_too_large")
    assert body["limit"] == limit
    # Sent without a length: refused once the limit is passed.
    error(
        upload(client, draft["id"], chunks(payload(limit * 3), 10_000)), 413, "artifact_too_large"
    )
    # A declared hash does not help.
    big = payload(limit + 1)
    error(upload(client, draft["id"], chunks(big), sha256=sha256(big)), 413, "artifact_too_large")
    nothing_stored(engine, settings)
    # Exactly the limit is fine.
    assert upload(client, draft["id"], chunks(payload(limit))).status_code == 201


BAD_FILENAMES = [
    "",
    ".",
    "..",
    "../../etc/passwd",
    "../bcm.bin",
    "staging/bcm.bin",
    "/etc/passwd",
    "..\\..\\windows\\system32\\bcm.bin",
    "C:\\bcm.bin",
    ".hidden",
    "-rf",
    "bcm .bin",
    "bcm\x00.bin",
    "bcm\n.bin",
    "bcm\r\nX-Injected: 1",
    "bcm\t.bin",
    "bcm\x1b[31m.bin",
    "bcm\u202egnp.exe",
    "bcm\u200b.bin",
    "bcm\x7f.bin",
    "%2e%2e%2fbcm.bin",
    "bcm?.bin",
    "bcm*.bin",
    "bcm:stream.bin",
    "bcm\u00e9.bin",
    "b" * 256,
    "b" * 1001,
]


def test_file_names_that_are_paths_or_hold_control_characters_are_refused(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    for name in BAD_FILENAMES:
        response = upload(client, draft["id"], b"firmware", name)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "filename", (name, response.json())
        assert response.json()["error"] in ("invalid_filename", "validation_failed")
    nothing_stored(engine, settings)
    # Nothing escaped the storage root either.
    assert not any(p.is_file() for p in settings.data_dir.rglob("*") if "passwd" in p.name)
    for name in ["bcm.bin", "BCM_4.2.0+build.7~rc1.tar.gz", "a", "b" * 255]:
        assert upload(client, draft["id"], b"firmware", name).status_code == 201, name


def test_a_taken_file_name_is_refused_and_the_first_file_kept(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    first = payload(2000, 1)
    assert upload(client, draft["id"], first).status_code == 201
    before = catalog_state(engine), stored_files(settings)
    error(upload(client, draft["id"], payload(2000, 2)), 409, "artifact_exists", "filename")
    assert (catalog_state(engine), stored_files(settings)) == before
    [row] = rows(engine, ARTIFACTS)
    assert stored_bytes(settings, row["storage_key"]) == first


def test_uploads_to_unknown_or_released_updates_are_refused(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    error(upload(client, 404, b"firmware"), 404, "update_not_found")
    draft = create(client)
    mark_released(engine, draft["id"])
    before = catalog_state(engine)
    body = error(upload(client, draft["id"], payload(100_000)), 409, "update_immutable")
    assert body["state"] == "released"
    assert catalog_state(engine) == before
    nothing_stored(engine, settings)


def test_confidentiality_changed_during_an_upload_is_refused(
    engine: Engine, settings: Settings, client: TestClient
) -> None:
    draft = create(client)
    store = storage(settings)
    with artifacts.ArtifactReceiver(store, max_bytes=10**6, data_key=None) as receiver:
        receiver.feed(b"firmware")
        received = receiver.finish()
    factory = make_write_session_factory(engine)
    with unit_of_work(factory) as session:
        service.edit_draft(session, ACTOR, draft["id"], UpdateFields(confidential=True), settings)
    with pytest.raises(Conflict, match="confidentiality"), unit_of_work(factory) as session:
        artifacts.attach(session, ACTOR, draft["id"], "bcm.bin", received, settings=settings)
    assert rows(engine, ARTIFACTS) == []


def test_a_draft_released_while_its_file_arrives_keeps_nothing(
    client: TestClient, engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks made before the body is read are made again when the file is attached."""
    draft = create(client)
    finish = artifacts.ArtifactReceiver.finish

    def finish_then_release(receiver: artifacts.ArtifactReceiver) -> artifacts.ReceivedFile:
        received = finish(receiver)
        mark_released(engine, draft["id"])
        return received

    monkeypatch.setattr(artifacts.ArtifactReceiver, "finish", finish_then_release)
    error(upload(client, draft["id"], payload(200_000)), 409, "update_immutable")
    nothing_stored(engine, settings)


def test_a_refused_file_is_answered_for_even_when_its_removal_fails(
    client: TestClient, engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer names why the file was refused, not that the staged copy could not be
    removed; that copy, referred to by no row, is left to the staging sweep."""
    draft = create(client)
    finish = artifacts.ArtifactReceiver.finish

    def finish_then_release(receiver: artifacts.ArtifactReceiver) -> artifacts.ReceivedFile:
        received = finish(receiver)
        mark_released(engine, draft["id"])
        return received

    def unreachable(key: str) -> None:
        raise StorageError(f"cannot delete artifact {key!r}: the storage went away")

    monkeypatch.setattr(artifacts.ArtifactReceiver, "finish", finish_then_release)
    monkeypatch.setattr(client.app.state.storage, "delete", unreachable)
    error(upload(client, draft["id"], payload(1000)), 409, "update_immutable")
    assert rows(engine, ARTIFACTS) == []
    [leftover] = stored_files(settings)
    assert leftover.startswith("staging/")


# Deleting files


def test_delete_a_file_of_a_draft(client: TestClient, engine: Engine, settings: Settings) -> None:
    draft = create(client)
    url = f"/api/v1/updates/{draft['id']}/artifacts"
    assert upload(client, draft["id"], payload(1000, 1), "keep.bin").status_code == 201
    assert upload(client, draft["id"], payload(1000, 2), "drop.bin").status_code == 201
    [kept, dropped] = sorted(rows(engine, ARTIFACTS), key=lambda r: r["filename"] != "keep.bin")

    response = client.delete(f"{url}/drop.bin")
    assert response.status_code == 204, response.text
    assert rows(engine, ARTIFACTS) == [kept]
    assert stored_files(settings) == [kept["storage_key"]]
    assert dropped["storage_key"] not in stored_files(settings)
    assert audit_actions(engine, draft["id"])[-1] == "update.artifact.delete"

    error(client.delete(f"{url}/drop.bin"), 404, "artifact_not_found", "filename")
    error(client.delete("/api/v1/updates/999/artifacts/keep.bin"), 404, "update_not_found")
    # The same name can be uploaded again.
    assert upload(client, draft["id"], payload(10, 3), "drop.bin").status_code == 201


# Cleaning up staging


def stage_orphan(settings: Settings, key: str = "staging/orphan-of-a-crash") -> str:
    with storage(settings).writer(key) as writer:
        writer.write(b"half an upload")
        writer.commit()
    return key


def cleanup(engine: Engine, settings: Settings, **kwargs: Any) -> artifacts.CleanupReport:
    return artifacts.cleanup_staging(
        make_write_session_factory(engine), storage(settings), **kwargs
    )


def test_cleanup_removes_files_of_abandoned_drafts_and_orphans(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    abandoned = create(client, version="4.2.0")
    touched = create(client, version="4.3.0")
    released = create(client, version="4.4.0")
    for update in (abandoned, touched, released):
        for name in ("a.bin", "b.bin"):
            assert upload(client, update["id"], payload(500), name).status_code == 201
    mark_released(engine, released["id"])
    orphan = stage_orphan(settings)
    everything = stored_files(settings)
    assert len(everything) == 7
    max_age = timedelta(days=7)

    # Nothing is old enough yet.
    assert cleanup(engine, settings, max_age=max_age) == artifacts.CleanupReport(0, 0)
    assert stored_files(settings) == everything

    # A week and a day later; one draft was worked on three days ago, the released update and
    # its files are old but not staged work.
    later = utcnow() + timedelta(days=8)
    set_updated_at(engine, touched["id"], -timedelta(days=5))
    set_updated_at(engine, released["id"], timedelta(days=30))
    report = cleanup(engine, settings, max_age=max_age, now=later)
    assert report == artifacts.CleanupReport(abandoned_artifacts=2, orphaned_objects=1)

    remaining = rows(engine, ARTIFACTS)
    assert {r["update_id"] for r in remaining} == {touched["id"], released["id"]}
    assert stored_files(settings) == sorted(r["storage_key"] for r in remaining)
    assert orphan not in stored_files(settings)
    # The draft itself stays, without files; the removal is audited as maintenance work.
    states = {r["id"]: r["state"] for r in rows(engine, UPDATES)}
    assert states[abandoned["id"]] == "draft"
    assert client.get(f"/api/v1/updates/{abandoned['id']}").json()["artifacts"] == []
    expired = [r for r in rows(engine, AUDIT) if r["action"] == "update.artifact.expire"]
    assert {(r["actor"], r["object_id"]) for r in expired} == {
        ("otacm-maintenance", str(abandoned["id"]))
    }
    assert sorted(r["before"]["filename"] for r in expired) == ["a.bin", "b.bin"]

    # Running it again finds nothing more.
    assert cleanup(engine, settings, max_age=max_age, now=later) == artifacts.CleanupReport(0, 0)


def test_cleanup_spares_a_fresh_orphan(engine: Engine, settings: Settings) -> None:
    """A staged object without a row may be an upload about to be attached."""
    orphan = stage_orphan(settings)
    report = cleanup(engine, settings, max_age=timedelta(hours=1), now=utcnow())
    assert report == artifacts.CleanupReport(0, 0)
    assert stored_files(settings) == [orphan]
    report = cleanup(
        engine, settings, max_age=timedelta(hours=1), now=utcnow() + timedelta(hours=2)
    )
    assert report.orphaned_objects == 1 and stored_files(settings) == []


def test_many_abandoned_files_at_once(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    for i in range(12):
        assert upload(client, draft["id"], os.urandom(64), f"part{i:02}.bin").status_code == 201
    report = cleanup(engine, settings, max_age=timedelta(0), now=utcnow() + timedelta(seconds=1))
    assert report == artifacts.CleanupReport(abandoned_artifacts=12, orphaned_objects=0)
    nothing_left = rows(engine, ARTIFACTS) == [] and stored_files(settings) == []
    assert nothing_left


def test_a_file_encrypted_under_a_replaced_data_key_is_refused(
    engine: Engine, settings: Settings, client: TestClient
) -> None:
    """Confidentiality switched off and on again while a file arrives: the update has a new
    data key, and the file, encrypted under the old one, could never be decrypted."""
    draft = create(client, confidential=True)
    factory = make_write_session_factory(engine)
    with unit_of_work(factory) as session:
        old_key = service.data_key_of(service.get_update(session, draft["id"]), settings)
    store = storage(settings)
    with artifacts.ArtifactReceiver(store, max_bytes=10**6, data_key=old_key) as receiver:
        receiver.feed(b"firmware")
        received = receiver.finish()
    for confidential in (False, True):
        with unit_of_work(factory) as session:
            service.edit_draft(
                session, ACTOR, draft["id"], UpdateFields(confidential=confidential), settings
            )
    with pytest.raises(Conflict, match="data key"), unit_of_work(factory) as session:
        artifacts.attach(session, ACTOR, draft["id"], "bcm.bin", received, settings=settings)
    assert rows(engine, ARTIFACTS) == []
