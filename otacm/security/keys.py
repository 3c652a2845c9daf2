"""Signing keys of the TUF roles, kept as files in one directory (`settings.resolved_keys_dir()`).

Each role has an Ed25519 key pair: `<role>.pem` (PKCS#8, mode 0600) and `<role>.pub`
(SubjectPublicKeyInfo PEM, so that key ids are known without the root passphrase). The online
roles' keys (targets, snapshot, timestamp, director) are not encrypted because the server signs
with them unattended; the root key is encrypted with a passphrase and is needed only to sign a
new root. A rotated key stays as `<role>.<keyid prefix>.retired.pem`: a new root must be signed
by the root key the vehicles already trust, and a repository signs with whichever key its root
lists (`signer`), so a rotation whose database transaction rolled back does no harm.

Files are written atomically (a temporary file, fsync, then a rename or a hard link) in a
directory of mode 0700; a key file is never overwritten by `init`.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# securesystemslib re-exports these without `__all__`, which mypy --strict rejects.
from securesystemslib.signer import CryptoSigner, SSlibKey

from otacm.config import Settings
from otacm.errors import Conflict, NotFound, OtacmError, ValidationFailed
from otacm.files import write_private_file

log = logging.getLogger(__name__)

ROOT = "root"
ONLINE_ROLES = ("targets", "snapshot", "timestamp", "director")
ROLES = (ROOT, *ONLINE_ROLES)
# Hex digits of the key id in a retired key's file name: unique enough, short enough to read.
KEYID_PREFIX = 16
# PKCS#8 "best available" encryption derives its key with only 2048 PBKDF2 rounds, so the
# passphrase itself has to carry the strength.
MIN_PASSPHRASE_LENGTH = 12
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class KeysNotInitialised(OtacmError):
    status_code = 409
    code = "keys_not_initialised"


class KeysAlreadyInitialised(Conflict):
    code = "keys_already_initialised"


class WrongPassphrase(OtacmError):
    status_code = 403
    code = "wrong_passphrase"


class PassphraseRequired(ValidationFailed):
    code = "passphrase_required"


class UnknownKey(NotFound):
    code = "unknown_key"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `status` shows of one role's key: never the private part."""

    role: str
    keyid: str
    encrypted: bool
    retired: tuple[str, ...]  # key id prefixes of the role's earlier keys


class KeyStore:
    """The key files of one directory.

    Raises (from every method that reads keys):
        KeysNotInitialised: the role has no key file; `otacm keys init` makes them.
        UnknownKey: the role is not one of `ROLES`, or no file holds the asked-for key id.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Online signers by (role, key id), loaded once: metadata is signed often. A key id
        # names one key for good, so an entry never goes stale, not even across rotations.
        self._online: dict[tuple[str, str], CryptoSigner] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        """This process's store of the configured keys directory: the same one every time, so
        that each signing after the first reuses the signers loaded before."""
        return _store_of(settings.resolved_keys_dir().absolute())

    def initialised(self) -> bool:
        return any(self._private_path(role).exists() for role in ROLES)

    def root_encrypted(self) -> bool:
        return self._read(self._private_path(ROOT), ROOT).startswith(_ENCRYPTED_PEM)

    def init(
        self, root_passphrase: str | None, *, allow_unencrypted_root: bool = False
    ) -> dict[str, SSlibKey]:
        """Create a key for every role in `ROLES`; returns their public keys.

        Without a passphrase the root key is stored unencrypted, which only a demo or a
        development set-up should do: anyone who can read the file can then sign a new root.

        Raises:
            KeysAlreadyInitialised: some role already has a key here; nothing was changed.
            PassphraseRequired: no (or too short a) passphrase and no `allow_unencrypted_root`.
        """
        if root_passphrase is None:
            if not allow_unencrypted_root:
                raise PassphraseRequired(
                    "the root key needs a passphrase (or explicitly allow an unencrypted root "
                    "key for a demo or development set-up)"
                )
            log.warning("root key of %s stored WITHOUT a passphrase", self.directory)
        else:
            _check_passphrase(root_passphrase)
        if self.initialised():
            raise KeysAlreadyInitialised(
                f"signing keys already exist in {self.directory}; refusing to overwrite them"
            )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        created: dict[str, SSlibKey] = {}
        for role in ROLES:
            private = Ed25519PrivateKey.generate()
            passphrase = root_passphrase if role == ROOT else None
            # Public key first: a private key without its .pub would not be found by key id.
            self._write(self._public_path(role), _public_pem(private), replace=False)
            self._write(self._private_path(role), _private_pem(private, passphrase), replace=False)
            created[role] = _public_key(private)
        return created

    def discard(self) -> None:
        """Remove the current key files: only for undoing an `init` that was never used."""
        for role in ROLES:
            self._private_path(role).unlink(missing_ok=True)
            self._public_path(role).unlink(missing_ok=True)

    def public_key(self, role: str) -> SSlibKey:
        """The role's current public key."""
        data = self._read(self._public_path(role), role)
        loaded = serialization.load_pem_public_key(data)
        return SSlibKey.from_crypto(loaded)

    def online_signer(self, role: str) -> CryptoSigner:
        """The signer of an online role's current key."""
        if role not in ONLINE_ROLES:
            raise UnknownKey(f"{role!r} is not an online role (one of {', '.join(ONLINE_ROLES)})")
        return self.signer(role, self.public_key(role).keyid)

    def root_signer(self, passphrase: str | None) -> CryptoSigner:
        """The signer of the current root key.

        Raises:
            PassphraseRequired: the key is encrypted and no passphrase was given.
            WrongPassphrase: the passphrase does not decrypt the key.
        """
        return self.signer(ROOT, self.public_key(ROOT).keyid, passphrase)

    def signer(self, role: str, keyid: str, passphrase: str | None = None) -> CryptoSigner:
        """The signer of the role's key `keyid`, current or retired.

        `passphrase` is used for encrypted (root) keys only.

        Raises:
            PassphraseRequired: the key is encrypted and no passphrase was given.
            WrongPassphrase: the passphrase does not decrypt the key.
        """
        cached = self._online.get((role, keyid))
        if cached is not None:
            return cached
        self._check_role(role)
        # The retired copy first: it is written before the current file is replaced, so it
        # holds the old key even if a rotation was cut short.
        path = self._retired_path(role, keyid)
        if not path.exists():
            path = self._private_path(role)
        data = self._read(path, role)
        signer = _load_signer(data, passphrase, role)
        if signer.public_key.keyid != keyid:
            raise UnknownKey(f"no {role} key {keyid[:KEYID_PREFIX]}… in {self.directory}")
        if not data.startswith(_ENCRYPTED_PEM):
            self._online[(role, keyid)] = signer
        return signer

    def rotate(self, role: str, passphrase: str | None = None) -> tuple[SSlibKey, SSlibKey]:
        """Give the role a new key; the old one is kept as a retired file. Returns (old, new).

        A new root key is encrypted with the same passphrase as the old one (and stays
        unencrypted if the old one was).

        Raises:
            PassphraseRequired, WrongPassphrase: rotating root without its passphrase.
        """
        self._check_role(role)
        old_public = self.public_key(role)
        old_pem = self._read(self._private_path(role), role)
        encrypted = old_pem.startswith(_ENCRYPTED_PEM)
        # Decrypting proves the passphrase before anything on disk changes.
        _load_signer(old_pem, passphrase if encrypted else None, role)
        private = Ed25519PrivateKey.generate()
        new_pem = _private_pem(private, passphrase if encrypted else None)
        self._write(self._retired_path(role, old_public.keyid), old_pem, replace=True)
        self._write(self._private_path(role), new_pem, replace=True)
        self._write(self._public_path(role), _public_pem(private), replace=True)
        return old_public, _public_key(private)

    def status(self) -> list[KeyInfo]:
        """Every role's current key id; roles without a key are left out."""
        infos = []
        for role in ROLES:
            if not self._public_path(role).exists():
                continue
            retired = sorted(
                p.name.split(".")[1] for p in self.directory.glob(f"{role}.*.retired.pem")
            )
            encrypted = self._read(self._private_path(role), role).startswith(_ENCRYPTED_PEM)
            infos.append(KeyInfo(role, self.public_key(role).keyid, encrypted, tuple(retired)))
        return infos

    def _check_role(self, role: str) -> None:
        if role not in ROLES:
            raise UnknownKey(f"unknown key role {role!r}; one of {', '.join(ROLES)}")

    def _private_path(self, role: str) -> Path:
        return self.directory / f"{role}.pem"

    def _public_path(self, role: str) -> Path:
        return self.directory / f"{role}.pub"

    def _retired_path(self, role: str, keyid: str) -> Path:
        return self.directory / f"{role}.{keyid[:KEYID_PREFIX]}.retired.pem"

    def _read(self, path: Path, role: str) -> bytes:
        self._check_role(role)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeysNotInitialised(
                f"no {role} key in {self.directory}: run `otacm keys init` first"
            ) from None

    def _write(self, path: Path, data: bytes, *, replace: bool) -> None:
        try:
            write_private_file(path, data, replace=replace)
        except FileExistsError:
            # Two racing `init`s cannot both win.
            raise KeysAlreadyInitialised(
                f"{path} already exists; refusing to overwrite it"
            ) from None


@functools.lru_cache(maxsize=16)
def _store_of(directory: Path) -> KeyStore:
    return KeyStore(directory)


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise PassphraseRequired(
            f"the root key passphrase needs at least {MIN_PASSPHRASE_LENGTH} characters"
        )


def _public_key(private: Ed25519PrivateKey) -> SSlibKey:
    return SSlibKey.from_crypto(private.public_key())


def _public_pem(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(private: Ed25519PrivateKey, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase is not None
        else serialization.NoEncryption()
    )
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _load_signer(pem: bytes, passphrase: str | None, role: str) -> CryptoSigner:
    encrypted = pem.startswith(_ENCRYPTED_PEM)
    if encrypted and passphrase is None:
        raise PassphraseRequired(f"the {role} key is encrypted: give its passphrase")
    try:
        private = serialization.load_pem_private_key(
            pem, passphrase.encode() if encrypted and passphrase is not None else None
        )
    except ValueError:
        if encrypted:
            raise WrongPassphrase(f"wrong passphrase for the {role} key") from None
        raise
    if not isinstance(private, Ed25519PrivateKey):
        raise UnknownKey(f"the {role} key file does not hold an Ed25519 key")
    return CryptoSigner(private)
