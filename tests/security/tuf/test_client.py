"""A vehicle's view: python-tuf's own `ngclient.Updater` against a running otacm server.

The client checks expiries against the real clock, so metadata is signed at the real time here,
except where a test signs it in the past on purpose.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import urllib3
from sqlalchemy import Engine, delete
from tuf.api.exceptions import BadVersionNumberError, ExpiredMetadataError, RepositoryError
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from otacm.db import utcnow
from otacm.security.keys import KeyStore
from otacm.security.tuf.models import TufMetadata
from otacm.security.tuf.repository import ImageRepository
from tests.security.tuf.helpers import PASSPHRASE, target, writing


def fetch(url: str) -> bytes:
    response = urllib3.request("GET", url)
    assert response.status == 200, url
    return response.data


def vehicle(directory: Path, base_url: str, root: bytes | None = None) -> Updater:
    """A client that trusts `root` (or, without it, the root it cached in `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    return Updater(
        str(directory),
        f"{base_url}/tuf/image/",
        target_dir=str(directory / "targets"),
        target_base_url=f"{base_url}/tuf/image/targets/",
        bootstrap=root,
    )


def trusted_root_version(directory: Path) -> int:
    return Metadata.from_file(str(directory / "root.json")).signed.version


@pytest.fixture
def image_url(live_url: str, engine: Engine, keys: KeyStore, image: ImageRepository) -> str:
    """A running server whose image repository has been bootstrapped just now."""
    with writing(engine) as session:
        image.bootstrap(session, keys, root_passphrase=PASSPHRASE)
    return live_url


def test_a_vehicle_verifies_a_released_target(
    image_url: str, engine: Engine, keys: KeyStore, image: ImageRepository, tmp_path: Path
) -> None:
    root = fetch(f"{image_url}/tuf/image/1.root.json")
    released = target(7, "bcm-4.2.0.bin", b"the BCM image", hardware_ids=["5Q0937084", "5Q0937085"])
    with writing(engine) as session:
        image.add_targets(session, keys, [released, target(7, "bcm-4.2.0.sig")])

    client = vehicle(tmp_path / "vehicle", image_url, root)
    client.refresh()
    info = client.get_targetinfo(released.path)

    assert info is not None
    assert info.length == len(b"the BCM image")
    assert info.hashes == {"sha256": released.sha256}
    assert info.custom == {
        "update_id": 7,
        "ecu_type": "BCM",
        "hardware_ids": ["5Q0937084", "5Q0937085"],
        "release_counter": 3,
    }
    assert client.get_targetinfo("updates/7/unknown.bin") is None
    # HEAD over a real socket: the length without the body.
    head = urllib3.request("HEAD", f"{image_url}/tuf/image/timestamp.json")
    assert (head.status, head.data) == (200, b"")
    assert head.headers["content-length"] == str(
        len(fetch(f"{image_url}/tuf/image/timestamp.json"))
    )
    # What a download would ask for (consistent snapshots: the hash prefixes the name).
    assert info.get_prefixed_paths() == [f"updates/7/{released.sha256}.bcm-4.2.0.bin"]


def test_a_replayed_older_timestamp_is_rejected(
    image_url: str, engine: Engine, keys: KeyStore, image: ImageRepository, tmp_path: Path
) -> None:
    root = fetch(f"{image_url}/tuf/image/1.root.json")
    with writing(engine) as session:
        image.add_targets(session, keys, [target()])
    vehicle(tmp_path / "vehicle", image_url, root).refresh()  # has seen timestamp version 2

    # A mirror (or an attacker) serves the older, still validly signed, timestamp again.
    with engine.begin() as conn:
        conn.execute(
            delete(TufMetadata).where(TufMetadata.role == "timestamp", TufMetadata.version == 2)
        )
    assert Metadata.from_bytes(fetch(f"{image_url}/tuf/image/timestamp.json")).signed.version == 1

    with pytest.raises(BadVersionNumberError):
        vehicle(tmp_path / "vehicle", image_url).refresh()
    # A vehicle that never saw version 2 cannot tell, and that is all it may accept.
    vehicle(tmp_path / "fresh vehicle", image_url, root).refresh()


def test_expired_metadata_is_rejected(
    image_url: str, engine: Engine, keys: KeyStore, image: ImageRepository, tmp_path: Path
) -> None:
    root = fetch(f"{image_url}/tuf/image/1.root.json")
    # Signed two days ago: the timestamp (one day's lifetime) has run out.
    with writing(engine) as session:
        image.add_targets(session, keys, [target()], utcnow() - timedelta(days=2))

    with pytest.raises(ExpiredMetadataError, match="timestamp"):
        vehicle(tmp_path / "vehicle", image_url, root).refresh()

    # The next refresh sees it is due and re-signs it; the vehicle is satisfied again.
    with writing(engine) as session:
        assert image.refresh(session, keys) == ["timestamp"]
    vehicle(tmp_path / "vehicle", image_url, root).refresh()


@pytest.mark.parametrize("online_role", ["timestamp", "snapshot", "targets"])
def test_after_key_rotations_a_vehicle_with_the_first_root_follows(
    online_role: str,
    image_url: str,
    engine: Engine,
    keys: KeyStore,
    image: ImageRepository,
    tmp_path: Path,
) -> None:
    root1 = fetch(f"{image_url}/tuf/image/1.root.json")
    released = target()
    with writing(engine) as session:
        image.add_targets(session, keys, [released])
    online = vehicle(tmp_path / "online vehicle", image_url, root1)
    online.refresh()  # caches timestamp, snapshot and targets signed with the old keys

    with writing(engine) as session:
        image.rotate_key(session, keys, online_role, PASSPHRASE)  # root 2, signed by root key 1
    with writing(engine) as session:
        image.rotate_key(session, keys, "root", PASSPHRASE)  # root 3, signed by root keys 1 and 2

    # A vehicle that was offline throughout, holding only the very first root.
    offline = vehicle(tmp_path / "offline vehicle", image_url, root1)
    offline.refresh()
    info = offline.get_targetinfo(released.path)
    assert info is not None and info.hashes == {"sha256": released.sha256}
    assert trusted_root_version(tmp_path / "offline vehicle") == 3
    trusted = Metadata.from_file(str(tmp_path / "offline vehicle" / "root.json")).signed
    assert trusted.roles["root"].keyids == [keys.public_key("root").keyid]
    assert trusted.roles[online_role].keyids == [keys.public_key(online_role).keyid]

    # The vehicle that was online before the rotations, with its cached metadata.
    online = vehicle(tmp_path / "online vehicle", image_url)
    online.refresh()
    assert online.get_targetinfo(released.path) is not None
    assert trusted_root_version(tmp_path / "online vehicle") == 3


def test_metadata_signed_with_a_key_the_root_does_not_list_is_rejected(
    image_url: str, engine: Engine, keys: KeyStore, image: ImageRepository, tmp_path: Path
) -> None:
    """The counter-check of the rotation test: without the new root, the new key is no good."""
    root = fetch(f"{image_url}/tuf/image/1.root.json")
    with writing(engine) as session:
        image.rotate_key(session, keys, "timestamp", PASSPHRASE)
    with engine.begin() as conn:
        conn.execute(
            delete(TufMetadata).where(TufMetadata.role == "root", TufMetadata.version == 2)
        )

    with pytest.raises(RepositoryError, match="timestamp"):
        vehicle(tmp_path / "vehicle", image_url, root).refresh()
