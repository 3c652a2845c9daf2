"""TUF repositories kept in the database: the image repository, and the machinery a per-vehicle
director repository reuses.

Every version of every role's metadata is a `tuf_metadata` row holding the signed bytes, in the
layout python-tuf's `ngclient.Updater` reads with consistent snapshots: `{N}.root.json`,
`timestamp.json`, `{V}.snapshot.json`, `{V}.targets.json`. All top-level roles have threshold 1.

Each operation works in the caller's transaction and only flushes. Writers lock the
repository's `tuf_repositories` row first (`SELECT ... FOR UPDATE` on PostgreSQL, where several
server processes share the database; on SQLite the write lock, which callers best take at BEGIN
with the `sqlite_begin="IMMEDIATE"` execution option), so versions never fork.

Metadata is always signed with the key its root lists, looked up by key id in the key store
(current or retired key): a key file rotated without its new root (a rolled-back transaction)
leaves the repository signing with the old key until the next rotation takes effect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# python-tuf and securesystemslib re-export these without `__all__`, which mypy --strict rejects.
from securesystemslib.signer import Signer
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from otacm.config import Settings
from otacm.db import is_postgresql, utcnow
from otacm.errors import Conflict, ValidationFailed
from otacm.security.keys import ROOT, KeyStore
from otacm.security.tuf.models import TufMetadata, TufRepository

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
IMAGE = "image"
# Which key store role's key signs each TUF role of the image repository.
IMAGE_KEY_ROLES = {role: role for role in TOP_LEVEL_ROLES}
# Target paths: relative, "/"-separated, no empty, "." or ".." segments.
_SEGMENT = re.compile(r"[A-Za-z0-9._~+-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RepositoryNotInitialised(Conflict):
    code = "tuf_repository_not_initialised"


class RepositoryExists(Conflict):
    code = "tuf_repository_exists"


class TargetConflict(Conflict):
    code = "tuf_target_conflict"


class InvalidTarget(ValidationFailed):
    code = "tuf_invalid_target"


class UnknownRole(ValidationFailed):
    code = "tuf_unknown_role"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A released file as the targets metadata describes it."""

    path: str  # relative to the repository's targets/, e.g. "updates/<update id>/<file name>"
    length: int  # bytes
    sha256: str  # lowercase hex
    custom: Mapping[str, Any] = field(default_factory=dict)  # JSON: hardware ids, ecu_type, ...

    def target_file(self) -> TargetFile:
        """Raises InvalidTarget."""
        segments = self.path.split("/")
        if not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
            raise InvalidTarget(f"not a valid target path: {self.path!r}", field="path")
        if not _SHA256.fullmatch(self.sha256):
            raise InvalidTarget(f"not a SHA-256 in lowercase hex: {self.sha256!r}", field="sha256")
        if self.length < 0:
            raise InvalidTarget(f"negative length for {self.path!r}", field="length")
        try:
            # As it will read back from the signed JSON, so that re-adding compares equal.
            custom = json.loads(json.dumps(dict(self.custom)))
        except (TypeError, ValueError) as exc:
            raise InvalidTarget(
                f"custom of {self.path!r} is not JSON: {exc}", field="custom"
            ) from None
        return TargetFile(self.length, {"sha256": self.sha256}, self.path, {"custom": custom})


@dataclass(frozen=True, slots=True)
class RoleStatus:
    role: str
    version: int
    expires_at: datetime
    keyids: tuple[str, ...]
    due: bool  # less than `tuf_refresh_fraction` of its lifetime left


@dataclass(frozen=True, slots=True)
class KeyRotation:
    role: str
    old_keyid: str
    new_keyid: str
    root_version: int


class MetadataRepository:
    """One TUF repository: its name, which key store role signs each TUF role, and lifetimes.

    Every method taking a `now` uses it as the clock (timezone-aware; the current time when
    None) so that tests can sign metadata that is already expired or due.
    """

    def __init__(self, name: str, key_roles: Mapping[str, str], settings: Settings) -> None:
        if set(key_roles) != set(TOP_LEVEL_ROLES):
            raise ValueError(f"key_roles must name a key for each of {TOP_LEVEL_ROLES}")
        self.name = name
        self.key_roles = dict(key_roles)
        self.lifetimes = {
            "root": settings.tuf_root_expiry,
            "targets": settings.tuf_targets_expiry,
            "snapshot": settings.tuf_snapshot_expiry,
            "timestamp": settings.tuf_timestamp_expiry,
        }
        self.refresh_fraction = settings.tuf_refresh_fraction

    # Reading -------------------------------------------------------------------------------

    def exists(self, session: Session) -> bool:
        return session.get(TufRepository, self.name) is not None

    def metadata_bytes(
        self, session: Session, role: str, version: int | None = None
    ) -> bytes | None:
        """The signed metadata as served: the given version, or the newest; None if there is
        no such version.

        Raises:
            UnknownRole: `role` is not a top-level role.
        """
        self._check_role(role)
        query = select(TufMetadata.content).where(
            TufMetadata.repository == self.name, TufMetadata.role == role
        )
        if version is not None:
            query = query.where(TufMetadata.version == version)
        return session.scalar(query.order_by(TufMetadata.version.desc()).limit(1))

    def targets(self, session: Session) -> dict[str, TargetFile]:
        """Every target of the newest targets metadata, by path.

        Raises:
            RepositoryNotInitialised: `bootstrap` has not run.
        """
        return dict(self._latest(session, "targets").signed.targets)

    def get_target(self, session: Session, path: str) -> TargetFile | None:
        """Raises RepositoryNotInitialised."""
        return self.targets(session).get(path)

    def status(self, session: Session, now: datetime | None = None) -> list[RoleStatus]:
        """Version, expiry and keys of each role's newest metadata.

        Raises:
            RepositoryNotInitialised: `bootstrap` has not run.
        """
        now = _clock(now)
        root: Root = self._latest(session, "root").signed
        result = []
        for role in TOP_LEVEL_ROLES:
            signed: Signed = self._latest(session, role).signed
            result.append(
                RoleStatus(
                    role,
                    signed.version,
                    signed.expires,
                    tuple(root.roles[role].keyids),
                    self._due(role, signed, now),
                )
            )
        return result

    # Writing -------------------------------------------------------------------------------

    def bootstrap(
        self,
        session: Session,
        keys: KeyStore,
        now: datetime | None = None,
        *,
        root_passphrase: str | None = None,
    ) -> None:
        """Version 1 of every role: a root listing the key store's current keys, empty targets.

        Raises:
            RepositoryExists: the repository was bootstrapped before; nothing is changed.
            KeysNotInitialised, PassphraseRequired, WrongPassphrase: from the key store.
        """
        now = _clock(now)
        if self.exists(session):
            raise RepositoryExists(f"the TUF {self.name} repository already exists")
        root = Root(expires=now + self.lifetimes["root"], consistent_snapshot=True)
        for role, key_role in self.key_roles.items():
            root.add_key(keys.public_key(key_role), role)
        root_signer = keys.signer(
            self.key_roles["root"], root.roles["root"].keyids[0], root_passphrase
        )
        session.add(TufRepository(name=self.name, created_at=now, updated_at=now))
        # The models have no relationship for the flush to order by: the row goes in first.
        session.flush()
        self._store(session, Metadata(root), [root_signer], now)
        targets = Targets(expires=now + self.lifetimes["targets"])
        self._store(session, Metadata(targets), self._signers(keys, root, "targets"), now)
        snapshot = Snapshot(expires=now + self.lifetimes["snapshot"])
        self._store(session, Metadata(snapshot), self._signers(keys, root, "snapshot"), now)
        timestamp = Timestamp(expires=now + self.lifetimes["timestamp"])
        self._store(session, Metadata(timestamp), self._signers(keys, root, "timestamp"), now)
        session.flush()

    def add_targets(
        self,
        session: Session,
        keys: KeyStore,
        targets: Sequence[TargetSpec],
        now: datetime | None = None,
    ) -> list[str]:
        """Sign a targets version with the new targets, then snapshot and timestamp.

        Returns the paths actually added: a target identical to one already there is skipped,
        and when nothing is new nothing is signed.

        Raises:
            InvalidTarget: a path, hash or length is malformed.
            TargetConflict: a path is already taken by different content (released files are
                immutable); nothing is signed.
            RepositoryNotInitialised: `bootstrap` has not run.
            KeysNotInitialised: from the key store.
        """
        now = _clock(now)
        files = [t.target_file() for t in targets]
        self._lock(session)
        current: Metadata[Targets] = self._latest(session, "targets")
        added: dict[str, TargetFile] = {}
        for new in files:
            existing = current.signed.targets.get(new.path) or added.get(new.path)
            if existing is None:
                added[new.path] = new
            elif existing != new:
                raise TargetConflict(
                    f"the image repository already has different content at {new.path!r}",
                    field="path",
                )
        if not added:
            return []
        current.signed.targets.update(added)
        self._sign_chain(session, keys, {"targets"}, now, targets=current)
        return list(added)

    def due(self, session: Session, now: datetime | None = None) -> list[str]:
        """Roles whose newest metadata has less than `tuf_refresh_fraction` of its lifetime
        left (root included, though `refresh` can only re-sign it with the root key).

        Raises:
            RepositoryNotInitialised: `bootstrap` has not run.
        """
        now = _clock(now)
        return [
            role
            for role in TOP_LEVEL_ROLES
            if self._due(role, self._latest(session, role).signed, now)
        ]

    def refresh(
        self,
        session: Session,
        keys: KeyStore,
        now: datetime | None = None,
        *,
        root_passphrase: str | None = None,
    ) -> list[str]:
        """Re-sign the metadata that is due (see `due`), and whatever refers to it: new
        targets mean a new snapshot, a new snapshot a new timestamp. Returns the roles re-signed.

        Root is re-signed only when it is due and its key can be used: unencrypted, or with
        `root_passphrase`; otherwise it is left for an operator (`due` still names it).

        Raises:
            RepositoryNotInitialised: `bootstrap` has not run.
            KeysNotInitialised, WrongPassphrase: from the key store.
        """
        now = _clock(now)
        due = self.due(session, now)
        if not due:
            return []
        self._lock(session)
        # Re-read under the lock: another process may have refreshed in the meantime.
        due = self.due(session, now)
        done: list[str] = []
        if ROOT in due and self._root_usable(keys, root_passphrase):
            root: Metadata[Root] = self._latest(session, "root")
            signers = self._signers(keys, root.signed, "root", root_passphrase)
            self._next_root(session, root.signed, signers, now)
            done.append(ROOT)
        return done + self._sign_chain(session, keys, set(due) - {ROOT}, now)

    def rotate_key(
        self,
        session: Session,
        keys: KeyStore,
        role: str,
        root_passphrase: str | None,
        now: datetime | None = None,
    ) -> KeyRotation:
        """Give `role` a new key: a new root lists it, signed by the root key clients already
        trust (and by the new root key when root itself rotates), so a vehicle holding any
        older root can follow; then the role's metadata (and what refers to it) is re-signed
        with the new key.

        Raises:
            UnknownRole: `role` signs nothing in this repository.
            PassphraseRequired, WrongPassphrase: checked before any key file changes.
            RepositoryNotInitialised: `bootstrap` has not run.
        """
        now = _clock(now)
        tuf_roles = [r for r, k in self.key_roles.items() if k == role]
        if not tuf_roles:
            raise UnknownRole(
                f"no {role!r} key signs the {self.name} repository; one of "
                f"{', '.join(sorted(set(self.key_roles.values())))}",
                field="role",
            )
        self._lock(session)
        root: Metadata[Root] = self._latest(session, "root")
        signers = self._signers(keys, root.signed, "root", root_passphrase)
        old, new = keys.rotate(role, root_passphrase)
        for tuf_role in tuf_roles:
            for keyid in list(root.signed.roles[tuf_role].keyids):
                root.signed.revoke_key(keyid, tuf_role)
            root.signed.add_key(new, tuf_role)
        if ROOT in tuf_roles:
            signers.append(keys.signer(self.key_roles["root"], new.keyid, root_passphrase))
        version = self._next_root(session, root.signed, signers, now)
        self._sign_chain(session, keys, set(tuf_roles) - {ROOT}, now)
        return KeyRotation(role, old.keyid, new.keyid, version)

    # Internals -----------------------------------------------------------------------------

    def _check_role(self, role: str) -> None:
        if role not in TOP_LEVEL_ROLES:
            raise UnknownRole(f"unknown TUF role {role!r}", field="role")

    def _lock(self, session: Session) -> None:
        this = TufRepository.name == self.name
        if not is_postgresql(session.get_bind().dialect):
            # A write takes SQLite's write lock now, before anything is signed (a no-op when
            # the transaction began IMMEDIATE); SQLite has no row locks to ask for.
            session.execute(
                update(TufRepository)
                .where(this)
                .values(name=TufRepository.name)
                .execution_options(synchronize_session=False)
            )
        locked = session.scalar(select(TufRepository.name).where(this).with_for_update())
        if locked is None:
            raise RepositoryNotInitialised(
                f"the TUF {self.name} repository does not exist yet: run `otacm keys init`"
            )

    def _latest(self, session: Session, role: str) -> Metadata[Any]:
        content = self.metadata_bytes(session, role)
        if content is None:
            raise RepositoryNotInitialised(
                f"the TUF {self.name} repository does not exist yet: run `otacm keys init`"
            )
        return Metadata.from_bytes(content)

    def _due(self, role: str, signed: Signed, now: datetime) -> bool:
        return signed.expires - now < self.lifetimes[role] * self.refresh_fraction

    def _root_usable(self, keys: KeyStore, passphrase: str | None) -> bool:
        return self.key_roles["root"] != ROOT or passphrase is not None or not keys.root_encrypted()

    def _signers(
        self, keys: KeyStore, root: Root, role: str, passphrase: str | None = None
    ) -> list[Signer]:
        """The signers of the keys `root` lists for `role`."""
        key_role = self.key_roles[role]
        return [keys.signer(key_role, keyid, passphrase) for keyid in root.roles[role].keyids]

    def _next_root(
        self, session: Session, root: Root, signers: Iterable[Signer], now: datetime
    ) -> int:
        root.version += 1
        root.expires = now + self.lifetimes["root"]
        self._store(session, Metadata(root), signers, now)
        return root.version

    def _sign_chain(
        self,
        session: Session,
        keys: KeyStore,
        roles: set[str],
        now: datetime,
        *,
        targets: Metadata[Targets] | None = None,
    ) -> list[str]:
        """Sign new versions of `roles` (online roles only) and of every role above them."""
        if not roles and targets is None:
            return []
        roles = set(roles)
        root: Root = self._latest(session, "root").signed
        done: list[str] = []
        if targets is not None or "targets" in roles:
            targets = targets or self._latest(session, "targets")
            self._bump(targets.signed, "targets", now)
            self._store(session, targets, self._signers(keys, root, "targets"), now)
            roles |= {"snapshot"}
            done.append("targets")
        if "snapshot" in roles:
            snapshot: Metadata[Snapshot] = self._latest(session, "snapshot")
            targets_version = self._latest_version(session, "targets")
            snapshot.signed.meta["targets.json"] = MetaFile(targets_version)
            self._bump(snapshot.signed, "snapshot", now)
            self._store(session, snapshot, self._signers(keys, root, "snapshot"), now)
            roles |= {"timestamp"}
            done.append("snapshot")
        if "timestamp" in roles:
            timestamp: Metadata[Timestamp] = self._latest(session, "timestamp")
            timestamp.signed.snapshot_meta = MetaFile(self._latest_version(session, "snapshot"))
            self._bump(timestamp.signed, "timestamp", now)
            self._store(session, timestamp, self._signers(keys, root, "timestamp"), now)
            done.append("timestamp")
        return done

    def _latest_version(self, session: Session, role: str) -> int:
        version = session.scalar(
            select(TufMetadata.version)
            .where(TufMetadata.repository == self.name, TufMetadata.role == role)
            .order_by(TufMetadata.version.desc())
            .limit(1)
        )
        assert version is not None
        return version

    def _bump(self, signed: Signed, role: str, now: datetime) -> None:
        signed.version += 1
        signed.expires = now + self.lifetimes[role]

    def _store(
        self, session: Session, metadata: Metadata[Any], signers: Iterable[Signer], now: datetime
    ) -> None:
        metadata.signatures.clear()
        for signer in signers:
            metadata.sign(signer, append=True)
        signed = metadata.signed
        session.add(
            TufMetadata(
                repository=self.name,
                role=signed.type,
                version=signed.version,
                expires_at=signed.expires,
                content=metadata.to_bytes(),
                created_at=now,
            )
        )
        repository = session.get(TufRepository, self.name)
        if repository is not None:
            repository.updated_at = now
        # Flushed at once so that `_latest` sees what this operation just signed.
        session.flush()


class ImageRepository(MetadataRepository):
    """The image repository (`/tuf/image/`): every released file, signed by the targets key."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(IMAGE, IMAGE_KEY_ROLES, settings)


def _clock(now: datetime | None) -> datetime:
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        raise ValueError("naive datetime given; TUF expiries are timezone-aware UTC")
    return now.astimezone(UTC)
