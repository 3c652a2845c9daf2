"""The metadata routes: file names, versions, headers, HEAD, 404s; no credentials needed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from tuf.api.metadata import Metadata

from otacm.app import create_app
from otacm.config import Settings
from otacm.security.keys import KeyStore
from otacm.security.tuf.repository import ImageRepository
from tests.live_server import quiet_settings
from tests.security.tuf.helpers import PASSPHRASE, target, writing


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """An anonymous client, as a vehicle is to these routes."""
    with TestClient(create_app(quiet_settings(settings), engine)) as client:
        yield client


@pytest.fixture
def released(engine: Engine, keys: KeyStore, image: ImageRepository) -> None:
    with writing(engine) as session:
        image.bootstrap(session, keys, root_passphrase=PASSPHRASE)
    with writing(engine) as session:
        image.add_targets(session, keys, [target()])


def version_of(content: bytes) -> int:
    return Metadata.from_bytes(content).signed.version


@pytest.mark.usefixtures("released")
def test_every_file_the_client_asks_for(client: TestClient) -> None:
    for path, role, version in [
        ("1.root.json", "root", 1),
        ("root.json", "root", 1),
        ("timestamp.json", "timestamp", 2),
        ("1.snapshot.json", "snapshot", 1),
        ("2.snapshot.json", "snapshot", 2),
        ("snapshot.json", "snapshot", 2),
        ("1.targets.json", "targets", 1),
        ("2.targets.json", "targets", 2),
        ("targets.json", "targets", 2),
    ]:
        response = client.get(f"/tuf/image/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "application/json"
        metadata = Metadata.from_bytes(response.content)
        assert (metadata.signed.type, metadata.signed.version) == (role, version)
        digest = hashlib.sha256(response.content).hexdigest()
        assert response.headers["etag"] == f'"{digest}"'
        # A signed version never changes; the newest-version names change all the time.
        expected = "no-cache" if path[0].isalpha() else "public, max-age=31536000, immutable"
        assert response.headers["cache-control"] == expected, path


@pytest.mark.usefixtures("released")
def test_unknown_files_and_versions_are_404(client: TestClient) -> None:
    for path in [
        "2.root.json",  # how a client learns there is no newer root
        "3.snapshot.json",
        "0.targets.json",
        "1.timestamp.json",  # timestamp is only ever unversioned
        "director.json",
        "1.root.json.bak",
        "01.root.json",
        "999999999.root.json",
        "99999999999.root.json",
    ]:
        response = client.get(f"/tuf/image/{path}")
        assert response.status_code == 404, path
        assert response.headers["cache-control"] == "no-cache"
        assert response.json()["error"] == "not_found"


def test_404_before_the_repository_exists(client: TestClient) -> None:
    assert client.get("/tuf/image/timestamp.json").status_code == 404
    assert client.get("/tuf/image/1.root.json").status_code == 404


@pytest.mark.usefixtures("released")
def test_head_and_conditional_requests(client: TestClient) -> None:
    full = client.get("/tuf/image/timestamp.json")
    head = client.head("/tuf/image/timestamp.json")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(full.content))
    assert head.headers["etag"] == full.headers["etag"]

    again = client.get("/tuf/image/timestamp.json", headers={"If-None-Match": full.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    changed = client.get("/tuf/image/timestamp.json", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200


@pytest.mark.usefixtures("released")
def test_the_metadata_routes_are_not_in_the_operator_api(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert "/tuf/image/{filename}" not in paths
