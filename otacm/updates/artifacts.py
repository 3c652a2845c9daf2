"""Artifact uploads into staging storage, and the removal of abandoned staged files.

An upload is streamed: each chunk is hashed (and, for a confidential update, encrypted and
hashed again) and written on, so a file of any size needs a few megabytes of memory. The file
becomes an artifact of its draft only after every byte arrived and the declared hash matched.
"""

from __future__ import annotations

import hashlib
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import is_postgresql, unit_of_work, utcnow
from otacm.errors import Conflict, NotFound, OtacmError, ValidationFailed
from otacm.security import audit
from otacm.security.audit import Actor
from otacm.security.encryption import StreamEncryptor
from otacm.updates import rules, service
from otacm.updates._write_behind import WriteBehind
from otacm.updates.models import SoftwareUpdate, UpdateArtifact
from otacm.updates.schemas import UpdateState
from otacm.updates.storage import ArtifactStorage, StorageWriter

STAGING_PREFIX = "staging/"
# Work the maintenance job does on its own account.
MAINTENANCE = Actor("otacm-maintenance", "system", "local")


class ArtifactTooLarge(OtacmError):
    status_code = 413
    code = "artifact_too_large"


class HashMismatch(ValidationFailed):
    code = "hash_mismatch"


class UploadIncomplete(ValidationFailed):
    code = "upload_incomplete"


class EmptyArtifact(ValidationFailed):
    code = "empty_artifact"


class ArtifactExists(Conflict):
    code = "artifact_exists"


class ArtifactNotFound(NotFound):
    code = "artifact_not_found"


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    storage_key: str
    length: int
    sha256: str
    plaintext_length: int
    plaintext_sha256: str
    encrypted: bool
    # SHA-256 of the data key the file was encrypted under (None when not encrypted): the
    # update must still have that key when the file is attached.
    key_fingerprint: str | None = None


def key_fingerprint(data_key: bytes | None) -> str | None:
    return hashlib.sha256(data_key).hexdigest() if data_key else None


def check_declared_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValidationFailed("sha256 must be 64 hexadecimal digits", field="sha256")
    return value


class ArtifactReceiver:
    """Receives one file into staging storage; use as a context manager, call `finish`.

    Leaving the block without `finish` (an error, a disconnected client) removes every byte
    written so far.
    """

    def __init__(
        self,
        storage: ArtifactStorage,
        *,
        max_bytes: int,
        data_key: bytes | None,
        expected_length: int | None = None,
        declared_sha256: str | None = None,
    ) -> None:
        if expected_length is not None and expected_length > max_bytes:
            raise ArtifactTooLarge(
                f"the file has {expected_length} bytes; the limit is {max_bytes}",
                limit=max_bytes,
            )
        self.storage_key = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self._storage = storage
        self._max_bytes = max_bytes
        self._expected_length = expected_length
        self._declared = check_declared_sha256(declared_sha256)
        self._plain_hash = hashlib.sha256()
        self._plain_length = 0
        self._stored_hash = hashlib.sha256() if data_key else None
        self._encryptor = StreamEncryptor(data_key) if data_key else None
        self._key_fingerprint = key_fingerprint(data_key)
        self._writer: StorageWriter | None = None
        self._out: WriteBehind | None = None
        self._stored_length = 0

    def __enter__(self) -> ArtifactReceiver:
        writer = self._storage.writer(self.storage_key)
        writer.__enter__()
        try:
            self._out = WriteBehind(writer)
        except BaseException as exc:
            writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._writer = writer
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None and self._out is not None
        self._out.close()
        self._writer.__exit__(exc_type, exc, tb)

    def feed(self, data: bytes | bytearray) -> None:
        """Take the next piece of the file (not copied: the caller must not change it)."""
        assert self._out is not None
        self._plain_length += len(data)
        if self._plain_length > self._max_bytes:
            raise ArtifactTooLarge(
                f"the file is larger than the limit of {self._max_bytes} bytes",
                limit=self._max_bytes,
            )
        self._plain_hash.update(data)
        if self._encryptor is None:
            self._out.write(data)
            return
        assert self._stored_hash is not None
        sealed = self._encryptor.update(data)
        if sealed:
            self._stored_hash.update(sealed)
            self._stored_length += len(sealed)
            self._out.write(sealed)

    def feed_joined(self, chunks: list[bytes]) -> None:
        """Feed several chunks as one piece: one hashing and one write call instead of many."""
        self.feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def finish(self) -> ReceivedFile:
        """Check what arrived and make the staged file durable; errors discard it."""
        assert self._writer is not None and self._out is not None
        if self._expected_length is not None and self._plain_length != self._expected_length:
            raise UploadIncomplete(
                f"{self._plain_length} of {self._expected_length} announced bytes arrived",
                received=self._plain_length,
            )
        if self._plain_length == 0:
            raise EmptyArtifact("the file is empty")
        plain_sha256 = self._plain_hash.hexdigest()
        if self._declared is not None and plain_sha256 != self._declared:
            raise HashMismatch(
                f"the file's SHA-256 is {plain_sha256}, not the declared {self._declared}",
                field="sha256",
                actual=plain_sha256,
            )
        length, sha256 = self._plain_length, plain_sha256
        if self._encryptor is not None:
            assert self._stored_hash is not None
            tail = self._encryptor.finalize()
            self._stored_hash.update(tail)
            self._stored_length += len(tail)
            self._out.write(tail)
            length, sha256 = self._stored_length, self._stored_hash.hexdigest()
        self._out.drain()
        self._writer.commit()
        return ReceivedFile(
            storage_key=self.storage_key,
            length=length,
            sha256=sha256,
            plaintext_length=self._plain_length,
            plaintext_sha256=plain_sha256,
            encrypted=self._encryptor is not None,
            key_fingerprint=self._key_fingerprint,
        )


def check_upload_allowed(session: Session, update_id: int, filename: str) -> SoftwareUpdate:
    """Refuse before any byte is stored: unknown update, not a draft, bad or taken name."""
    rules.check_filename(filename)
    update = service.get_update(session, update_id)
    service.require_draft(update)
    taken = session.scalar(
        select(UpdateArtifact.id).where(
            UpdateArtifact.update_id == update_id, UpdateArtifact.filename == filename
        )
    )
    if taken is not None:
        raise ArtifactExists(
            f"update {update_id} already has a file named {filename!r}; delete it first",
            field="filename",
        )
    return update


def attach(
    session: Session,
    actor: Actor,
    update_id: int,
    filename: str,
    received: ReceivedFile,
    *,
    settings: Settings,
) -> UpdateArtifact:
    """Record a received file as an artifact of its draft (checked again under the lock)."""
    update = service.get_update(session, update_id, lock=True)
    check_upload_allowed(session, update_id, filename)
    if key_fingerprint(service.data_key_of(update, settings)) != received.key_fingerprint:
        raise Conflict(
            "the update's confidentiality or data key changed during the upload; send it again"
        )
    now = utcnow()
    artifact = UpdateArtifact(
        update_id=update_id,
        filename=filename,
        length=received.length,
        sha256=received.sha256,
        plaintext_length=received.plaintext_length,
        plaintext_sha256=received.plaintext_sha256,
        encrypted=received.encrypted,
        storage_key=received.storage_key,
        uploaded_at=now,
        uploaded_by=actor.name,
    )
    session.add(artifact)
    update.updated_at = now
    session.flush()
    audit.record(
        session, actor, "update.artifact.upload", object_type="update", object_id=update_id,
        after={"filename": filename, "length": received.plaintext_length,
               "sha256": received.plaintext_sha256, "encrypted": received.encrypted},
    )  # fmt: skip
    return artifact


def attach_or_discard(
    factory: sessionmaker[Session],
    storage: ArtifactStorage,
    actor: Actor,
    update_id: int,
    filename: str,
    received: ReceivedFile,
    *,
    settings: Settings,
) -> UpdateArtifact:
    """`attach` in a transaction of its own. If it fails, refused or not committed, the staged
    object is deleted: no row refers to it."""
    try:
        with unit_of_work(factory) as session:
            return attach(session, actor, update_id, filename, received, settings=settings)
    except BaseException:
        with suppress(Exception):  # the error to report is the one above; a leftover is swept
            storage.delete(received.storage_key)
        raise


def remove(session: Session, actor: Actor, update_id: int, filename: str) -> str:
    """Take a file off a draft; returns its storage key, for the caller to delete once the
    transaction committed (an object without a row is swept up later, never the reverse)."""
    update = service.get_update(session, update_id, lock=True)
    service.require_draft(update)
    artifact = session.scalar(
        select(UpdateArtifact).where(
            UpdateArtifact.update_id == update_id, UpdateArtifact.filename == filename
        )
    )
    if artifact is None:
        raise ArtifactNotFound(
            f"update {update_id} has no file named {filename!r}", field="filename"
        )
    session.delete(artifact)
    update.updated_at = utcnow()
    audit.record(
        session, actor, "update.artifact.delete", object_type="update", object_id=update_id,
        before={"filename": filename, "sha256": artifact.plaintext_sha256},
    )  # fmt: skip
    session.flush()
    return artifact.storage_key


@dataclass(frozen=True, slots=True)
class CleanupReport:
    abandoned_artifacts: int
    orphaned_objects: int


def cleanup_staging(
    factory: sessionmaker[Session],
    storage: ArtifactStorage,
    *,
    max_age: timedelta,
    now: datetime | None = None,
) -> CleanupReport:
    """Remove the staged files of drafts untouched for `max_age`, and staged objects that no
    artifact refers to (uploads cut off by a crash) once they are as old.

    Rows go first, in a transaction of their own; objects are deleted after it committed.
    """
    now = now or utcnow()
    cutoff = now - max_age
    with unit_of_work(factory) as session:
        abandoned = _expire_abandoned(session, cutoff)
        referenced = set(
            session.scalars(
                select(UpdateArtifact.storage_key).where(
                    UpdateArtifact.storage_key.like(f"{STAGING_PREFIX}%")
                )
            )
        )
    for key in abandoned:
        storage.delete(key)
    orphans = 0
    for info in storage.list(STAGING_PREFIX):
        if info.key not in referenced and info.modified_at < cutoff:
            storage.delete(info.key)
            orphans += 1
    # Uploads a dead process never finished: temporary files, pending multipart uploads.
    orphans += storage.sweep_incomplete(STAGING_PREFIX, cutoff)
    return CleanupReport(abandoned_artifacts=len(abandoned), orphaned_objects=orphans)


def _expire_abandoned(session: Session, cutoff: datetime) -> list[str]:
    stale = select(SoftwareUpdate.id).where(
        SoftwareUpdate.state == UpdateState.DRAFT.value, SoftwareUpdate.updated_at < cutoff
    )
    if is_postgresql(session.get_bind().dialect):
        # Locked, so that a release (which locks its draft first) cannot run meanwhile; a draft
        # being released right now is skipped, and the state is checked again under the lock.
        stale = stale.with_for_update(skip_locked=True)
    drafts = list(session.scalars(stale))
    if not drafts:
        return []
    abandoned = list(
        session.scalars(select(UpdateArtifact).where(UpdateArtifact.update_id.in_(drafts)))
    )
    for artifact in abandoned:
        session.delete(artifact)
        audit.record(
            session, MAINTENANCE, "update.artifact.expire", object_type="update",
            object_id=artifact.update_id,
            before={"filename": artifact.filename, "sha256": artifact.plaintext_sha256},
            detail=f"staged file of a draft untouched since before {cutoff.isoformat()}",
        )  # fmt: skip
    session.flush()
    return [artifact.storage_key for artifact in abandoned]
