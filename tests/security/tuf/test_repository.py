"""The image repository without a client: versions, signatures, refresh, rotation, locking."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from otacm.security.keys import KeyStore, WrongPassphrase
from otacm.security.tuf.models import TufMetadata
from otacm.security.tuf.repository import (
    ImageRepository,
    InvalidTarget,
    RepositoryExists,
    RepositoryNotInitialised,
    TargetConflict,
    TargetSpec,
    UnknownRole,
)
from tests.security.tuf.helpers import PASSPHRASE, T0, reading, target, writing


def versions(engine: Engine) -> dict[str, int]:
    """The newest version of each role."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(TufMetadata.role, func.max(TufMetadata.version)).group_by(TufMetadata.role)
        )
        return {role: version for role, version in rows}


def load(engine: Engine, image: ImageRepository, role: str, version: int | None = None) -> Metadata:
    with reading(engine) as session:
        content = image.metadata_bytes(session, role, version)
    assert content is not None
    return Metadata.from_bytes(content)


@pytest.fixture
def bootstrapped(engine: Engine, keys: KeyStore, image: ImageRepository) -> ImageRepository:
    with writing(engine) as session:
        image.bootstrap(session, keys, T0, root_passphrase=PASSPHRASE)
    return image


def test_bootstrap_signs_version_one_of_every_role(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    assert versions(engine) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
    root = load(engine, bootstrapped, "root")
    assert isinstance(root.signed, Root)
    assert root.signed.consistent_snapshot is True
    assert root.signed.expires == T0 + timedelta(days=365)
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert root.signed.roles[role].keyids == [keys.public_key(role).keyid]
        assert root.signed.roles[role].threshold == 1
        signed = load(engine, bootstrapped, role)
        root.signed.verify_delegate(role, signed.signed_bytes, signed.signatures)
    assert keys.public_key("director").keyid not in root.signed.keys
    assert load(engine, bootstrapped, "targets").signed.targets == {}


def test_bootstrap_refuses_an_existing_repository(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    with pytest.raises(RepositoryExists), writing(engine) as session:
        bootstrapped.bootstrap(session, keys, T0, root_passphrase=PASSPHRASE)
    assert versions(engine) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}


def test_nothing_before_bootstrap(engine: Engine, keys: KeyStore, image: ImageRepository) -> None:
    with reading(engine) as session:
        assert not image.exists(session)
        assert image.metadata_bytes(session, "timestamp") is None
        with pytest.raises(RepositoryNotInitialised, match="otacm keys init"):
            image.targets(session)
    with pytest.raises(RepositoryNotInitialised), writing(engine) as session:
        image.add_targets(session, keys, [target()], T0)


def test_add_targets_signs_targets_snapshot_and_timestamp(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    spec = target(7, "bcm.bin", b"bcm image")
    with writing(engine) as session:
        added = bootstrapped.add_targets(session, keys, [spec, target(7, "bcm.sig")], T0)
    assert added == ["updates/7/bcm.bin", "updates/7/bcm.sig"]
    assert versions(engine) == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}

    targets = load(engine, bootstrapped, "targets")
    snapshot = load(engine, bootstrapped, "snapshot")
    timestamp = load(engine, bootstrapped, "timestamp")
    assert isinstance(targets.signed, Targets)
    assert isinstance(snapshot.signed, Snapshot)
    assert isinstance(timestamp.signed, Timestamp)
    assert snapshot.signed.meta["targets.json"].version == 2
    assert timestamp.signed.snapshot_meta.version == 2
    info = targets.signed.targets["updates/7/bcm.bin"]
    assert (info.length, info.hashes, info.custom) == (
        spec.length,
        {"sha256": spec.sha256},
        dict(spec.custom),
    )
    with reading(engine) as session:
        assert bootstrapped.get_target(session, "updates/7/bcm.bin") == info
        assert bootstrapped.get_target(session, "updates/7/other.bin") is None
        # The older versions stay servable: a client may be one version behind.
        assert bootstrapped.metadata_bytes(session, "targets", 1) is not None


def test_released_targets_are_immutable(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    spec = target(7, "bcm.bin", b"bcm image", release_counter=3)
    with writing(engine) as session:
        bootstrapped.add_targets(session, keys, [spec], T0)

    with writing(engine) as session:
        # Identical again: custom in another key order, with a tuple, reads back the same.
        custom = {**dict(reversed(spec.custom.items())), "hardware_ids": ("5Q0937084",)}
        same = TargetSpec(spec.path, spec.length, spec.sha256, custom)
        assert bootstrapped.add_targets(session, keys, [same, spec], T0) == []
    assert versions(engine)["targets"] == 2

    for different in (
        target(7, "bcm.bin", b"other bytes", release_counter=3),
        target(7, "bcm.bin", b"bcm image", release_counter=4),
    ):
        with pytest.raises(TargetConflict, match="updates/7/bcm.bin"), writing(engine) as session:
            bootstrapped.add_targets(session, keys, [target(8, "new.bin"), different], T0)
    with pytest.raises(TargetConflict), writing(engine) as session:
        bootstrapped.add_targets(session, keys, [target(9, "a.bin"), target(9, "a.bin", b"x")], T0)
    assert versions(engine)["targets"] == 2


@pytest.mark.parametrize(
    "spec",
    [
        TargetSpec("/abs/path.bin", 1, "a" * 64),
        TargetSpec("updates/../../etc/passwd", 1, "a" * 64),
        TargetSpec("updates//x.bin", 1, "a" * 64),
        TargetSpec("updates/7/with space.bin", 1, "a" * 64),
        TargetSpec("updates/7/x.bin", 1, "A" * 64),
        TargetSpec("updates/7/x.bin", 1, "abc"),
        TargetSpec("updates/7/x.bin", -1, "a" * 64),
        TargetSpec("updates/7/x.bin", 1, "a" * 64, {"not json": object()}),
    ],
)
def test_malformed_targets_are_refused(spec: TargetSpec) -> None:
    with pytest.raises(InvalidTarget):
        spec.target_file()


def test_refresh_re_signs_only_what_is_due(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    # Lifetimes: timestamp 1 day, snapshot 7, targets 90, root 365; re-signed at half-life.
    def refresh(after: timedelta, passphrase: str | None = None) -> list[str]:
        with writing(engine) as session:
            return bootstrapped.refresh(session, keys, T0 + after, root_passphrase=passphrase)

    assert refresh(timedelta(0)) == []
    assert refresh(timedelta(hours=11)) == []
    assert refresh(timedelta(hours=13)) == ["timestamp"]
    assert refresh(timedelta(hours=13)) == []
    assert versions(engine) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 2}
    assert load(engine, bootstrapped, "timestamp").signed.expires == T0 + timedelta(hours=37)

    assert refresh(timedelta(days=4)) == ["snapshot", "timestamp"]
    assert load(engine, bootstrapped, "timestamp").signed.snapshot_meta.version == 2
    assert refresh(timedelta(days=46)) == ["targets", "snapshot", "timestamp"]
    assert load(engine, bootstrapped, "snapshot").signed.meta["targets.json"].version == 2
    assert versions(engine) == {"root": 1, "targets": 2, "snapshot": 3, "timestamp": 4}

    # Root is due after half a year, but its key is offline: only an operator re-signs it.
    with reading(engine) as session:
        assert "root" in bootstrapped.due(session, T0 + timedelta(days=183))
    assert refresh(timedelta(days=183)) == ["targets", "snapshot", "timestamp"]
    assert versions(engine)["root"] == 1
    assert refresh(timedelta(days=183), PASSPHRASE) == ["root"]
    root = load(engine, bootstrapped, "root")
    assert root.signed.version == 2
    root1 = load(engine, bootstrapped, "root", 1)
    root1.signed.verify_delegate("root", root.signed_bytes, root.signatures)


def test_rotating_an_online_key_announces_it_in_a_root_signed_by_the_old_root(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    old_keyid = keys.public_key("timestamp").keyid
    with writing(engine) as session:
        rotation = bootstrapped.rotate_key(session, keys, "timestamp", PASSPHRASE, T0)
    assert (rotation.old_keyid, rotation.root_version) == (old_keyid, 2)
    assert rotation.new_keyid == keys.public_key("timestamp").keyid != old_keyid
    assert versions(engine) == {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 2}

    root1, root2 = (load(engine, bootstrapped, "root", v) for v in (1, 2))
    root1.signed.verify_delegate("root", root2.signed_bytes, root2.signatures)
    assert root2.signed.roles["timestamp"].keyids == [rotation.new_keyid]
    assert old_keyid not in root2.signed.keys
    timestamp = load(engine, bootstrapped, "timestamp")
    root2.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    assert list(timestamp.signatures) == [rotation.new_keyid]


def test_rotating_the_root_key_signs_the_new_root_with_both_keys(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    with writing(engine) as session:
        rotation = bootstrapped.rotate_key(session, keys, "root", PASSPHRASE, T0)
    root1, root2 = (load(engine, bootstrapped, "root", v) for v in (1, 2))
    assert set(root2.signatures) == {rotation.old_keyid, rotation.new_keyid}
    root1.signed.verify_delegate("root", root2.signed_bytes, root2.signatures)
    root2.signed.verify_delegate("root", root2.signed_bytes, root2.signatures)
    assert versions(engine) == {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 1}


def test_rotation_with_a_wrong_passphrase_changes_nothing(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    before = {p.name: p.read_bytes() for p in keys.directory.iterdir()}
    for role in ("timestamp", "root"):
        with pytest.raises(WrongPassphrase), writing(engine) as session:
            bootstrapped.rotate_key(session, keys, role, "not the passphrase at all", T0)
    with pytest.raises(UnknownRole, match="director"), writing(engine) as session:
        bootstrapped.rotate_key(session, keys, "director", PASSPHRASE, T0)
    assert {p.name: p.read_bytes() for p in keys.directory.iterdir()} == before
    assert versions(engine)["root"] == 1


def test_a_key_rotated_without_its_root_keeps_signing_with_the_listed_key(
    engine: Engine, keys: KeyStore, bootstrapped: ImageRepository
) -> None:
    # A rotation whose transaction rolled back: the key file changed, the root did not.
    listed = keys.public_key("timestamp").keyid
    keys.rotate("timestamp")
    with writing(engine) as session:
        assert bootstrapped.refresh(session, keys, T0 + timedelta(hours=13)) == ["timestamp"]
    assert list(load(engine, bootstrapped, "timestamp").signatures) == [listed]


def test_writers_take_turns(engine: Engine, keys: KeyStore, bootstrapped: ImageRepository) -> None:
    """Two releases at once: the second waits for the first and signs the next versions."""
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with writing(engine) as session:
                bootstrapped.add_targets(session, keys, [target(2, "b.bin")], T0)
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)
        finally:
            second_done.set()

    with writing(engine) as session:
        bootstrapped.add_targets(session, keys, [target(1, "a.bin")], T0)
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert not second_done.is_set(), "the second writer did not wait for the lock"
    thread.join(30)
    assert errors == []
    assert versions(engine) == {"root": 1, "targets": 3, "snapshot": 3, "timestamp": 3}
    with reading(engine) as session:
        assert set(bootstrapped.targets(session)) == {"updates/1/a.bin", "updates/2/b.bin"}
