"""python-tuf over httpx: a static TUF repository on a real socket, behind a bearer credential.

The repository is made here with python-tuf's metadata API (no otacm server): one signing key
for every role, consistent snapshots, the layout `/tuf/director/{vin}/` serves.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from otacm.simulator.link import NetworkLink
from otacm.simulator.repositories import HttpxFetcher, TrustedRepository
from tests.simulator.file_server import serving

VIN = "WVWZZZ1KZ6W000001"
TOKEN = "otv_test-token"
PREFIX = f"/tuf/director/{VIN}/"
PATH = "updates/7/bcm-4.2.0.bin"


class StaticRepository:
    """Signed metadata files by URL path, as a director repository would serve them."""

    def __init__(self) -> None:
        self.signer = CryptoSigner.generate_ed25519()
        expires = datetime.now(UTC) + timedelta(days=1)
        root = Root(expires=expires)
        for role in ("root", "timestamp", "snapshot", "targets"):
            root.add_key(self.signer.public_key, role)
        self.root = self._signed(root)
        self.files: dict[str, bytes] = {PREFIX + "1.root.json": self.root}
        self.version = 0

    def publish(
        self, vin: str, targets: dict[str, TargetFile], signer: CryptoSigner | None = None
    ) -> None:
        """A new version of targets, snapshot and timestamp; `signer` forges targets."""
        self.version += 1
        v = self.version
        expires = datetime.now(UTC) + timedelta(days=1)
        signed = Targets(
            version=v,
            expires=expires,
            targets=targets,
            unrecognized_fields={"custom": {"vin": vin}},
        )
        self.files[f"{PREFIX}{v}.targets.json"] = self._signed(signed, signer)
        snapshot = Snapshot(version=v, expires=expires, meta={"targets.json": MetaFile(v)})
        self.files[f"{PREFIX}{v}.snapshot.json"] = self._signed(snapshot)
        timestamp = Timestamp(version=v, expires=expires, snapshot_meta=MetaFile(v))
        self.files[f"{PREFIX}timestamp.json"] = self._signed(timestamp)

    def _signed(self, signed: Any, signer: CryptoSigner | None = None) -> bytes:
        metadata = Metadata(signed)
        metadata.sign(signer or self.signer)
        return metadata.to_bytes(JSONSerializer())


def target(ecu: str = "BCM-7F3A21") -> TargetFile:
    return TargetFile(1234, {"sha256": "ab" * 32}, PATH, {"custom": {"ecu_identifier": ecu}})


def director(tmp_path: Path, url: str, root: bytes, token: str = TOKEN, **kw: Any) -> Any:
    client = httpx.Client()
    fetcher = HttpxFetcher(client, token=token, **kw)
    return TrustedRepository(tmp_path / "director", url + PREFIX, root, fetcher), client


def test_director_targets_are_fetched_with_the_credential_and_name_the_vin(
    tmp_path: Path,
) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {PATH: target()})
    with serving(repo.files) as server:
        server.faults.required_header = ("Authorization", f"Bearer {TOKEN}")
        trusted, client = director(tmp_path, server.url, repo.root)
        with client:
            found = trusted.director_targets()
        asked = [r.path for r in server.requests]
    assert found.vin == VIN
    assert found.targets[PATH].unrecognized_fields["custom"]["ecu_identifier"] == "BCM-7F3A21"
    assert asked == [PREFIX + "2.root.json", PREFIX + "timestamp.json", PREFIX + "1.snapshot.json",
                     PREFIX + "1.targets.json"]  # fmt: skip
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)


def test_a_newer_version_is_read_after_the_next_refresh(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {})
    with serving(repo.files) as server:
        trusted, client = director(tmp_path, server.url, repo.root)
        with client:
            assert trusted.director_targets().targets == {}
            repo.publish(VIN, {PATH: target()})
            assert list(trusted.director_targets().targets) == [PATH]


def test_a_refused_credential_is_an_http_error_with_its_status(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {})
    with serving(repo.files) as server:
        server.faults.required_header = ("Authorization", f"Bearer {TOKEN}")
        trusted, client = director(tmp_path, server.url, repo.root, token="otv_revoked")
        with client, pytest.raises(exceptions.DownloadHTTPError) as refused:
            trusted.refresh()
    assert refused.value.status_code == 401


def test_targets_signed_by_another_key_are_refused(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {PATH: target()}, signer=CryptoSigner.generate_ed25519())
    with serving(repo.files) as server:
        trusted, client = director(tmp_path, server.url, repo.root)
        with client, pytest.raises(exceptions.UnsignedMetadataError):
            trusted.director_targets()


def test_an_older_timestamp_replayed_is_refused(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {})
    old_timestamp = repo.files[PREFIX + "timestamp.json"]
    repo.publish(VIN, {PATH: target()})
    with serving(repo.files) as server:
        trusted, client = director(tmp_path, server.url, repo.root)
        with client:
            trusted.director_targets()
            repo.files[PREFIX + "timestamp.json"] = old_timestamp
            with pytest.raises(exceptions.BadVersionNumberError):
                trusted.director_targets()


def test_image_targets_look_up_each_path(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {PATH: target()})
    with serving(repo.files) as server:
        trusted, client = director(tmp_path, server.url, repo.root, token="")
        with client:
            found = trusted.image_targets([PATH, "updates/9/none.bin"])
        assert "authorization" not in server.requests[0].headers  # no token: none is sent
    assert found[PATH] == target()
    assert found["updates/9/none.bin"] is None


def test_network_trouble_is_a_download_error_never_a_verification_error(tmp_path: Path) -> None:
    repo = StaticRepository()
    repo.publish(VIN, {PATH: target()})
    with serving(repo.files) as server:
        server.faults.cut_after = [10]  # the first body (timestamp.json) breaks after 10 bytes
        trusted, client = director(tmp_path, server.url, repo.root)
        with client, pytest.raises(exceptions.DownloadError):
            trusted.refresh()
        link = NetworkLink()
        link.online = False
        offline, other = director(tmp_path / "offline", server.url, repo.root, link=link)
        with other, pytest.raises(exceptions.DownloadError) as raised:
            offline.refresh()
        assert isinstance(raised.value.__cause__, httpx.ConnectError)
    # A closed port is a connection error too.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere, third = director(tmp_path / "nowhere", f"http://127.0.0.1:{port}", repo.root)
    with third, pytest.raises(exceptions.DownloadError):
        nowhere.refresh()
