"""Releasing an update: completeness, release counters, signing into the image repository, and
vehicles' downloads verified by a real python-tuf client against a running server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.ngclient import Updater

from otacm.config import Settings
from otacm.db import make_session_factory, make_write_session_factory, unit_of_work
from otacm.maintenance import run_once
from otacm.security import encryption
from otacm.security import keys as keys_module
from otacm.security.keys import KeyStore
from otacm.security.tuf.repository import ImageRepository
from otacm.updates import service
from otacm.updates import signing as signing_module
from otacm.updates.storage import storage_from_settings
from tests.builders import update_document
from tests.updates.helpers import ARTIFACTS, UPDATES, create, error, rows, upload

FIRMWARE = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def signing(settings: Settings, engine: Engine) -> KeyStore:
    """Signing keys (root unencrypted, as for a demo) and a bootstrapped image repository."""
    keys = KeyStore(settings.resolved_keys_dir())
    keys.init(None, allow_unencrypted_root=True)
    with unit_of_work(make_write_session_factory(engine)) as session:
        ImageRepository(settings).bootstrap(session, keys)
    return keys


def released(client: TestClient, content: bytes = FIRMWARE, **overrides: Any) -> dict[str, Any]:
    draft = create(client, **overrides)
    response = upload(client, draft["id"], content)
    assert response.status_code == 201, response.text
    response = client.post(f"/api/v1/updates/{draft['id']}/release")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def staged_files(settings: Settings) -> list[str]:
    root = settings.resolved_storage_path()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_release_freezes_the_update_and_publishes_its_files(
    client: TestClient, settings: Settings, signing: KeyStore
) -> None:
    body = released(client)
    assert body["state"] == "released"
    assert body["release_counter"] == 1
    assert body["released_by"] == "test-admin"
    [artifact] = body["artifacts"]
    digest = hashlib.sha256(FIRMWARE).hexdigest()
    assert artifact["target_path"] == f"updates/{body['id']}/bcm.bin"
    assert artifact["download_url"].endswith(
        f"/tuf/image/targets/updates/{body['id']}/{digest}.bcm.bin"
    )
    # Moved out of staging, content-addressed; nothing left behind.
    assert staged_files(settings) == [f"artifacts/{digest}"]
    audit = client.get("/api/v1/audit", params={"action": "update.release"}).json()["items"]
    assert [e["object_id"] for e in audit] == [str(body["id"])]


def test_release_counters_increase_per_ecu_type_and_hardware(
    client: TestClient, signing: KeyStore
) -> None:
    first = released(client, version="4.2.0", hardware_part_numbers=["HW-A"])
    second = released(client, version="4.3.0", hardware_part_numbers=["HW-A"])
    other = released(client, version="1.0.0", hardware_part_numbers=["HW-B"])
    both = released(client, version="4.4.0", hardware_part_numbers=["HW-A", "HW-B"])
    gateway = released(
        client, version="1.0.0", ecu_type="GATEWAY", software_part_number="GW-1", dependencies=[]
    )
    assert [first["release_counter"], second["release_counter"]] == [1, 2]
    assert other["release_counter"] == 1
    # Above every counter of every hardware it targets, so no ECU may take an older image.
    assert both["release_counter"] == 3
    assert gateway["release_counter"] == 1


def test_release_without_signing_keys_changes_nothing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    assert upload(client, draft["id"], FIRMWARE).status_code == 201
    before_rows, [staged] = rows(engine, ARTIFACTS), staged_files(settings)
    response = client.post(f"/api/v1/updates/{draft['id']}/release")
    body = error(response, 409, "tuf_repository_not_initialised")
    assert "otacm keys init" in body["detail"]
    assert rows(engine, UPDATES)[0]["state"] == "draft"
    assert rows(engine, UPDATES)[0]["release_counter"] is None
    # The draft's file is still staged; the copy published before signing failed stays, for
    # the next release of the same bytes.
    assert rows(engine, ARTIFACTS) == before_rows
    assert staged.startswith("staging/")
    assert staged_files(settings) == [f"artifacts/{hashlib.sha256(FIRMWARE).hexdigest()}", staged]


def test_a_released_update_cannot_be_released_again_and_can_be_withdrawn(
    client: TestClient, signing: KeyStore
) -> None:
    body = released(client)
    error(client.post(f"/api/v1/updates/{body['id']}/release"), 409, "update_immutable")
    response = client.post(
        f"/api/v1/updates/{body['id']}/withdraw", json={"reason": "field issue on B1 hardware"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "withdrawn"
    # Vehicles in the middle of installing it can still fetch it.
    url = body["artifacts"][0]["download_url"]
    assert client.get(url).content == FIRMWARE


# Downloads ------------------------------------------------------------------------------------


@pytest.fixture
def download_url(client: TestClient, signing: KeyStore) -> str:
    url: str = released(client)["artifacts"][0]["download_url"]
    return url


def test_download_whole_head_and_etag(client: TestClient, download_url: str) -> None:
    whole = client.get(download_url)
    assert whole.status_code == 200
    assert whole.content == FIRMWARE
    etag = whole.headers["etag"]
    assert etag == f'"{hashlib.sha256(FIRMWARE).hexdigest()}"'
    head = client.head(download_url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(FIRMWARE))
    assert head.headers["accept-ranges"] == "bytes"
    assert head.content == b""
    assert client.get(download_url, headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=-500", len(FIRMWARE) - 500, len(FIRMWARE)),
        ("bytes=3000000-", 3000000, len(FIRMWARE)),
        (f"bytes=10-{len(FIRMWARE) + 99}", 10, len(FIRMWARE)),
    ],
)
def test_range_requests(
    client: TestClient, download_url: str, header: str, start: int, end: int
) -> None:
    response = client.get(download_url, headers={"Range": header})
    assert response.status_code == 206, response.text
    assert response.content == FIRMWARE[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(FIRMWARE)}"


def test_range_past_the_end_is_416(client: TestClient, download_url: str) -> None:
    response = client.get(download_url, headers={"Range": f"bytes={len(FIRMWARE)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(FIRMWARE)}"


def test_interrupted_download_resumes_to_identical_bytes(
    live_url: str, client: TestClient, signing: KeyStore
) -> None:
    url = released(client)["artifacts"][0]["download_url"].replace("http://testserver", live_url)
    received = bytearray()
    # The first attempt breaks off after about a megabyte.
    with httpx.stream("GET", url) as response:
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > 1_000_000:
                break
    with httpx.stream("GET", url, headers={"Range": f"bytes={len(received)}-"}) as response:
        assert response.status_code == 206
        for chunk in response.iter_bytes():
            received += chunk
    assert bytes(received) == FIRMWARE


def test_unknown_or_mismatched_targets_are_404(client: TestClient, download_url: str) -> None:
    assert client.get(download_url.replace("bcm.bin", "other.bin")).status_code == 404
    wrong_hash = download_url.rsplit("/", 1)[0] + "/" + "0" * 64 + ".bcm.bin"
    assert client.get(wrong_hash).status_code == 404
    assert client.get("/tuf/image/targets/updates/1/bcm.bin").status_code == 404


# A real python-tuf client against the running server ------------------------------------------


def tuf_client(base_url: str, tmp_path: Path) -> Updater:
    metadata = tmp_path / "tuf-metadata"
    metadata.mkdir(exist_ok=True)
    downloads = tmp_path / "tuf-downloads"
    downloads.mkdir(exist_ok=True)
    root = httpx.get(f"{base_url}/tuf/image/1.root.json")
    root.raise_for_status()
    return Updater(
        metadata_dir=str(metadata),
        bootstrap=root.content,
        metadata_base_url=f"{base_url}/tuf/image/",
        target_base_url=f"{base_url}/tuf/image/targets/",
        target_dir=str(downloads),
    )


@pytest.fixture
def vehicle(live_url: str, tmp_path: Path) -> Iterator[Updater]:
    yield tuf_client(live_url, tmp_path)


def test_tuf_client_verifies_and_downloads_a_released_file(
    client: TestClient, signing: KeyStore, vehicle: Updater
) -> None:
    body = released(client)
    vehicle.refresh()
    info = vehicle.get_targetinfo(f"updates/{body['id']}/bcm.bin")
    assert info is not None
    assert info.length == len(FIRMWARE)
    custom = info.unrecognized_fields["custom"]
    assert custom["update_id"] == body["id"]
    assert custom["ecu_type"] == "BCM"
    assert custom["hardware_ids"] == ["5Q0937084"]
    assert custom["release_counter"] == 1
    path = vehicle.download_target(info)
    assert Path(path).read_bytes() == FIRMWARE


def test_tuf_client_rejects_a_tampered_stored_file(
    client: TestClient, settings: Settings, signing: KeyStore, vehicle: Updater
) -> None:
    body = released(client)
    stored = settings.resolved_storage_path() / "artifacts" / hashlib.sha256(FIRMWARE).hexdigest()
    tampered = bytearray(stored.read_bytes())
    tampered[123_456] ^= 0x01
    stored.write_bytes(bytes(tampered))
    vehicle.refresh()
    info = vehicle.get_targetinfo(f"updates/{body['id']}/bcm.bin")
    assert info is not None
    with pytest.raises(LengthOrHashMismatchError):
        vehicle.download_target(info)


def test_confidential_update_is_delivered_encrypted_and_decrypts(
    client: TestClient, engine: Engine, settings: Settings, signing: KeyStore, vehicle: Updater
) -> None:
    body = released(client, confidential=True)
    [artifact] = body["artifacts"]
    assert artifact["encrypted"] is True
    vehicle.refresh()
    info = vehicle.get_targetinfo(f"updates/{body['id']}/bcm.bin")
    assert info is not None
    custom = info.unrecognized_fields["custom"]
    assert custom["encrypted"] is True
    assert custom["plaintext_sha256"] == hashlib.sha256(FIRMWARE).hexdigest()
    sealed = Path(vehicle.download_target(info)).read_bytes()
    assert sealed != FIRMWARE
    assert len(sealed) == encryption.encrypted_size(len(FIRMWARE))
    with unit_of_work(make_session_factory(engine)) as session:
        data_key = service.data_key_of(service.get_update(session, body["id"]), settings)
    assert data_key is not None
    assert b"".join(encryption.decrypt_stream([sealed], data_key)) == FIRMWARE


# Other storage and the periodic job ----------------------------------------------------------


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, s3_client: Any, bucket: str) -> Settings:
    return settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_endpoint,
        }
    )


@pytest.mark.parametrize("presign", [True, False])
def test_s3_storage_downloads_by_redirect_or_stream(
    presign: bool,
    s3_settings: Settings,
    engine: Engine,
    make_operator: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from otacm.app import create_app
    from tests.updates.conftest import fake_aws_environment

    fake_aws_environment(monkeypatch, tmp_path)
    settings = s3_settings.model_copy(update={"s3_presign_downloads": presign})
    keys = KeyStore(settings.resolved_keys_dir())
    keys.init(None, allow_unencrypted_root=True)
    with unit_of_work(make_write_session_factory(engine)) as session:
        ImageRepository(settings).bootstrap(session, keys)
    with TestClient(create_app(settings, engine)) as s3_client_app:
        s3_client_app.headers["Authorization"] = f"Bearer {make_operator('engineer')}"
        url = released(s3_client_app)["artifacts"][0]["download_url"]
        response = s3_client_app.get(url, follow_redirects=False)
        head = s3_client_app.head(url, follow_redirects=False)
        # HEAD is answered by otacm itself: a presigned URL is good for GET only.
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(FIRMWARE))
        assert head.headers["etag"] == f'"{hashlib.sha256(FIRMWARE).hexdigest()}"'
        if presign:
            assert response.status_code == 307
            assert httpx.get(response.headers["location"]).content == FIRMWARE
        else:
            assert response.status_code == 200
            assert response.content == FIRMWARE
            ranged = s3_client_app.get(url, headers={"Range": "bytes=100-199"})
            assert ranged.status_code == 206
            assert ranged.content == FIRMWARE[100:200]
    stored = storage_from_settings(settings)
    assert [i.key for i in stored.list("artifacts/")] == [
        f"artifacts/{hashlib.sha256(FIRMWARE).hexdigest()}"
    ]


def test_maintenance_resigns_due_metadata(
    engine: Engine, settings: Settings, signing: KeyStore
) -> None:
    from datetime import timedelta

    from otacm.db import utcnow

    factory = make_write_session_factory(engine)
    storage = storage_from_settings(settings)
    # Nothing is due right after signing; 13 h on, the one-day timestamp has less than half
    # its lifetime left (the refresh fraction) and is signed anew, the rest is not due.
    assert run_once(factory, settings, storage).resigned == []
    report = run_once(factory, settings, storage, now=utcnow() + timedelta(hours=13))
    assert report.resigned == ["timestamp"]
    assert report.errors == []
    assert run_once(factory, settings, storage, now=utcnow() + timedelta(hours=13)).resigned == []


def test_concurrent_releases_get_distinct_counters(
    client: TestClient, engine: Engine, settings: Settings, signing: KeyStore
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from otacm.security.audit import Actor

    drafts = [create(client, version=f"5.{n}.0") for n in range(4)]
    for draft in drafts:
        assert upload(client, draft["id"], f"image {draft['id']}".encode()).status_code == 201
    factory = make_write_session_factory(engine)
    storage = storage_from_settings(settings)

    def release(update_id: int) -> int | None:
        update = service.release(
            factory, Actor("engineer"), update_id, settings=settings, storage=storage
        )
        return update.release_counter

    with ThreadPoolExecutor(4) as pool:
        counters = list(pool.map(release, [d["id"] for d in drafts]))
    assert sorted(c or 0 for c in counters) == [1, 2, 3, 4]
    # Every file is in the signed targets, none lost to a concurrent signing.
    with unit_of_work(make_session_factory(engine)) as session:
        targets = ImageRepository(settings).targets(session)
    assert sorted(targets) == sorted(f"updates/{d['id']}/bcm.bin" for d in drafts)


def test_readiness_names_an_unusable_artifact_storage(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from otacm.app import create_app

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the storage directory should be")
    broken = settings.model_copy(update={"storage_path": blocker / "artifacts"})
    with TestClient(create_app(broken, engine)) as probe:
        answer = probe.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "storage_unavailable"
    assert "artifacts" in answer.json()["detail"]


def test_a_failed_release_never_takes_another_updates_published_file(
    client: TestClient,
    engine: Engine,
    settings: Settings,
    signing: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = released(client)  # publishes artifacts/<sha256 of FIRMWARE>
    second = create(client, version="4.3.0")
    assert upload(client, second["id"], FIRMWARE).status_code == 201

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("signing failed")

    monkeypatch.setattr("otacm.updates.signing.sign_release", broken)
    with pytest.raises(RuntimeError, match="signing failed"):
        client.post(f"/api/v1/updates/{second['id']}/release")
    monkeypatch.undo()
    # The first update's file is where it was, the second's staged copy too.
    assert client.get(first["artifacts"][0]["download_url"]).content == FIRMWARE
    [staged] = [r for r in rows(engine, ARTIFACTS) if r["update_id"] == second["id"]]
    assert staged["storage_key"].startswith("staging/")
    assert staged["storage_key"] in staged_files(settings)
    # Released for real this time: both share the published object; the staged copy goes.
    again = client.post(f"/api/v1/updates/{second['id']}/release")
    assert again.status_code == 200, again.text
    assert staged_files(settings) == [f"artifacts/{hashlib.sha256(FIRMWARE).hexdigest()}"]
    assert client.get(again.json()["artifacts"][0]["download_url"]).content == FIRMWARE


def test_a_failed_release_never_takes_a_file_from_a_release_that_came_after_it(
    client: TestClient,
    engine: Engine,
    settings: Settings,
    signing: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two drafts with the same bytes. The release of the first fails after publishing them;
    the moment its transaction ends (and the release lock with it), the second is released,
    finds the published object and points at it. Nothing the first does after its failure may
    take that object away."""
    from contextlib import contextmanager

    from otacm.security.audit import Actor

    first, second = create(client, version="4.3.0"), create(client, version="4.4.0")
    for draft in (first, second):
        assert upload(client, draft["id"], FIRMWARE).status_code == 201
    factory = make_write_session_factory(engine)
    storage = storage_from_settings(settings)
    actor = Actor("engineer")
    sign_release, unit_of_work_of_service = signing_module.sign_release, service.unit_of_work

    def fails_for_the_first(session: Any, settings: Settings, update: Any, *rest: Any) -> None:
        if update.id == first["id"]:
            raise RuntimeError("signing failed")
        sign_release(session, settings, update, *rest)

    second_released: list[int] = []

    @contextmanager
    def then_release_the_second(factory: Any) -> Iterator[Any]:
        try:
            with unit_of_work_of_service(factory) as session:
                yield session
        except RuntimeError:
            # The first release's transaction is over: rolled back, its locks released.
            if not second_released:
                second_released.append(second["id"])
                service.release(factory, actor, second["id"], settings=settings, storage=storage)
            raise

    monkeypatch.setattr(signing_module, "sign_release", fails_for_the_first)
    monkeypatch.setattr(service, "unit_of_work", then_release_the_second)
    with pytest.raises(RuntimeError, match="signing failed"):
        service.release(factory, actor, first["id"], settings=settings, storage=storage)
    monkeypatch.undo()
    assert second_released == [second["id"]]
    shared = client.get(f"/api/v1/updates/{second['id']}").json()
    assert shared["state"] == "released"
    assert client.get(shared["artifacts"][0]["download_url"]).content == FIRMWARE
    # The first is still a draft with its staged file, and releases fine now.
    [staged] = [r for r in rows(engine, ARTIFACTS) if r["update_id"] == first["id"]]
    assert staged["storage_key"] in staged_files(settings)
    again = client.post(f"/api/v1/updates/{first['id']}/release")
    assert again.status_code == 200, again.text
    assert staged_files(settings) == [f"artifacts/{hashlib.sha256(FIRMWARE).hexdigest()}"]
    assert client.get(shared["artifacts"][0]["download_url"]).content == FIRMWARE


def test_releases_sign_with_keys_loaded_once_per_process(
    client: TestClient, signing: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    load_signer = keys_module._load_signer

    def counting(pem: bytes, passphrase: str | None, role: str) -> Any:
        loaded.append(role)
        return load_signer(pem, passphrase, role)

    monkeypatch.setattr(keys_module, "_load_signer", counting)
    released(client, version="4.2.0")
    released(client, b"another image", version="4.3.0")
    assert sorted(loaded) == ["snapshot", "targets", "timestamp"]


def test_a_failing_commit_is_an_error_not_a_success(
    client: TestClient, settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's transaction commits before the answer is sent: a commit that fails can
    never have been reported as done."""
    from sqlalchemy.orm import Session

    drafted: list[int] = []
    create_draft, commit = service.create_draft, Session.commit

    def tracking_create(*args: Any, **kwargs: Any) -> Any:
        update = create_draft(*args, **kwargs)
        drafted.append(update.id)
        return update

    def failing_commit(self: Session) -> None:
        if drafted:
            raise RuntimeError("the disk is full")
        commit(self)

    from otacm.app import create_app

    monkeypatch.setattr(service, "create_draft", tracking_create)
    monkeypatch.setattr(Session, "commit", failing_commit)
    with TestClient(create_app(settings, engine), raise_server_exceptions=False) as plain:
        plain.headers["Authorization"] = client.headers["Authorization"]
        answer = plain.post("/api/v1/updates", json=update_document())
    monkeypatch.undo()
    assert answer.status_code == 500
    assert drafted
    assert rows(engine, UPDATES) == []
