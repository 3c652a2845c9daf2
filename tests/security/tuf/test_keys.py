"""The key store: files, permissions, the root passphrase, rotation and its retired keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from otacm.security.keys import (
    ROLES,
    KeysAlreadyInitialised,
    KeysNotInitialised,
    KeyStore,
    PassphraseRequired,
    UnknownKey,
    WrongPassphrase,
)
from tests.security.tuf.helpers import PASSPHRASE


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_one_private_key_per_role_readable_by_the_owner_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    public = store.init(PASSPHRASE)

    assert set(public) == set(ROLES) == {"root", "targets", "snapshot", "timestamp", "director"}
    assert mode(store.directory) == 0o700
    for role in ROLES:
        assert mode(store.directory / f"{role}.pem") == 0o600
        assert store.public_key(role).keyid == public[role].keyid
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [f"{r}.pem" for r in ROLES] + [f"{r}.pub" for r in ROLES]
    )
    root_pem = (store.directory / "root.pem").read_bytes()
    assert root_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (store.directory / "targets.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert store.root_encrypted()
    assert len({key.keyid for key in public.values()}) == len(ROLES)


def test_signers_match_their_public_keys(keys: KeyStore) -> None:
    for role in ("targets", "snapshot", "timestamp", "director"):
        signer = keys.online_signer(role)
        assert signer.public_key.keyid == keys.public_key(role).keyid
        signature = signer.sign(b"payload")
        signer.public_key.verify_signature(signature, b"payload")
    assert keys.root_signer(PASSPHRASE).public_key.keyid == keys.public_key("root").keyid


def test_the_root_key_needs_its_passphrase(keys: KeyStore) -> None:
    with pytest.raises(WrongPassphrase, match="wrong passphrase for the root key"):
        keys.root_signer("not the passphrase at all")
    with pytest.raises(PassphraseRequired):
        keys.root_signer(None)
    with pytest.raises(UnknownKey, match="not an online role"):
        keys.online_signer("root")


def test_init_refuses_to_overwrite_keys(keys: KeyStore) -> None:
    before = {p.name: p.read_bytes() for p in keys.directory.iterdir()}
    with pytest.raises(KeysAlreadyInitialised, match="refusing to overwrite"):
        keys.init(PASSPHRASE)
    with pytest.raises(KeysAlreadyInitialised):
        keys.init(None, allow_unencrypted_root=True)
    assert {p.name: p.read_bytes() for p in keys.directory.iterdir()} == before


def test_an_unencrypted_root_key_must_be_asked_for(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    with pytest.raises(PassphraseRequired):
        store.init(None)
    with pytest.raises(PassphraseRequired, match="at least 12 characters"):
        store.init("short")
    assert not store.initialised()

    store.init(None, allow_unencrypted_root=True)
    assert not store.root_encrypted()
    assert store.root_signer(None).public_key.keyid == store.public_key("root").keyid
    assert [info.encrypted for info in store.status()] == [False] * len(ROLES)


def test_keys_not_initialised_names_the_command(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "nowhere")
    assert not store.initialised()
    with pytest.raises(KeysNotInitialised, match="run `otacm keys init` first"):
        store.online_signer("timestamp")
    with pytest.raises(KeysNotInitialised, match="otacm keys init"):
        store.root_signer(PASSPHRASE)
    assert store.status() == []


def test_rotation_keeps_the_old_key_as_a_retired_file(keys: KeyStore) -> None:
    old, new = keys.rotate("timestamp")

    assert old.keyid != new.keyid
    assert keys.public_key("timestamp").keyid == new.keyid
    assert keys.online_signer("timestamp").public_key.keyid == new.keyid
    retired = keys.directory / f"timestamp.{old.keyid[:16]}.retired.pem"
    assert mode(retired) == 0o600
    # Metadata whose root still lists the old key can still be signed with it.
    assert keys.signer("timestamp", old.keyid).public_key.keyid == old.keyid
    [info] = [i for i in keys.status() if i.role == "timestamp"]
    assert info.retired == (old.keyid[:16],)
    with pytest.raises(UnknownKey):
        keys.signer("timestamp", "0" * 64)


def test_root_rotation_checks_the_passphrase_first_and_keeps_it(keys: KeyStore) -> None:
    before = keys.public_key("root").keyid
    with pytest.raises(WrongPassphrase):
        keys.rotate("root", "not the passphrase at all")
    assert keys.public_key("root").keyid == before
    assert not list(keys.directory.glob("*.retired.pem"))

    old, new = keys.rotate("root", PASSPHRASE)
    assert old.keyid == before
    assert keys.root_encrypted()
    assert keys.root_signer(PASSPHRASE).public_key.keyid == new.keyid
    assert keys.signer("root", old.keyid, PASSPHRASE).public_key.keyid == old.keyid
    with pytest.raises(WrongPassphrase):
        keys.signer("root", old.keyid, "not the passphrase at all")
