"""The artifact storage interface shared by every backend, its key rules and its errors.

Update binaries (up to many GB) are written once through a `StorageWriter` and become visible
under their key only when the writer commits, so a reader never sees half an artifact. Keys are
relative, slash-separated names our own code builds (`staging/<uuid>`, `artifacts/<sha256>`);
they are still checked here, the same way for every backend, so that a bug can never reach a
file outside the storage root or an object outside the configured prefix.

The API is synchronous: the HTTP layer calls it from worker threads.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from otacm.errors import NotFound, OtacmError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 1 * MiB
# S3 object keys are at most 1024 bytes; common file systems allow 255 bytes per name.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255

Data = bytes | bytearray | memoryview


class ArtifactMissing(NotFound):
    status_code = 404
    code = "artifact_missing"


class StorageError(OtacmError):
    """The storage backend failed or is unreachable; retrying later may succeed."""

    status_code = 503
    code = "storage_unavailable"


class InvalidStorageKey(OtacmError, ValueError):
    """A key that could escape the storage root. Keys come from our code, so this is a bug."""

    status_code = 500
    code = "invalid_storage_key"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int  # bytes
    modified_at: datetime  # timezone-aware UTC


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise `InvalidStorageKey`.

    A key is one or more `/`-separated segments; no segment is empty or starts with `.` (which
    also rules out `.` and `..`; the local backend keeps its temporary files under such names),
    and no character is a backslash or a control character.
    """
    if not isinstance(key, str) or not key:
        raise InvalidStorageKey(f"storage key must be a non-empty string, got {key!r}")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidStorageKey(f"storage key is longer than {MAX_KEY_BYTES} bytes: {key[:80]!r}…")
    if "\\" in key or not key.isprintable():
        raise InvalidStorageKey(f"storage key holds a backslash or control character: {key!r}")
    for segment in key.split("/"):
        if not segment:
            raise InvalidStorageKey(f"storage key has an empty segment (or is absolute): {key!r}")
        if segment.startswith("."):
            raise InvalidStorageKey(f"storage key segment starts with '.': {key!r}")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidStorageKey(f"storage key segment is too long: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if some valid key could start with it (the empty prefix included)."""
    # Appending one character turns every usable prefix ("", "staging/", "artifacts/ab") into a
    # valid key, and keeps unusable ones ("/", "../", "a//") invalid.
    try:
        validate_key(prefix + "x")
    except InvalidStorageKey:
        raise InvalidStorageKey(f"invalid storage key prefix: {prefix!r}") from None
    return prefix


def check_range(start: int, end: int | None, chunk_size: int) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range: start={start}, end={end}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


class ByteStream(Iterator[bytes]):
    """Chunks of one object's bytes. `close()` (or leaving a `with`) releases the open file or
    connection early, even when iteration never started, which a generator cannot do."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __next__(self) -> bytes:
        if self._release is None:
            raise StopIteration
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def empty(cls) -> ByteStream:
        return cls(iter(()), lambda: None)


class StorageWriter(ABC):
    """Writes one object; use it as a context manager and call `commit()` inside.

    Leaving the `with` block without a commit, or through an exception, removes everything
    written so far. A failed commit also leaves nothing behind.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._bytes_written = 0
        self._state = "open"  # open -> committed | aborted

    @property
    def bytes_written(self) -> int:
        return self._bytes_written

    def write(self, data: Data) -> None:
        if self._state != "open":
            raise RuntimeError(f"write to a {self._state} writer for {self.key!r}")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size:
            self._write(data)
            self._bytes_written += size

    def commit(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"commit of a {self._state} writer for {self.key!r}")
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"

    def abort(self) -> None:
        """Discard what was written; does nothing once committed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._abort()
        except Exception:
            # Cleanup is best effort: the original error (if any) is the one worth raising, and
            # leftovers are only unreferenced temporary data.
            log.warning("could not discard the partial object %r", self.key, exc_info=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    @abstractmethod
    def _write(self, data: Data) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class ArtifactStorage(ABC):
    """Where artifact bytes live. Every method validates its keys with `validate_key`."""

    @abstractmethod
    def writer(self, key: str) -> StorageWriter:
        """A writer whose bytes appear under `key` (replacing any object there) on commit."""

    @abstractmethod
    def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ByteStream:
        """The bytes of `key` from `start` up to `end` (exclusive; None or past the end: to the
        end of the object), in chunks of at most `chunk_size` bytes.

        Raises `ArtifactMissing` from the call itself, before any chunk, when `key` is absent,
        so that an HTTP handler can still answer 404. A range starting at or after the end of
        the object yields nothing.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and modification time, or None when it is absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing an absent one is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a plain string prefix), in key order."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Give the bytes of `src` a second key `dst`, without reading them back where the
        backend allows; `src` stays. For content-addressed keys (`artifacts/<sha256>`): an
        object already under `dst` holds the same bytes and is kept, and then `src` is not
        even looked at. Raises `ArtifactMissing` when `src` is needed and absent."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The object's file when the backend keeps files on a local disk (raises
        `ArtifactMissing` when absent), else None."""

    @abstractmethod
    def presigned_url(
        self, key: str, *, expires: timedelta, filename: str | None = None
    ) -> str | None:
        """A URL that downloads the object without credentials for `expires`, offered to the
        client as `filename`; None when the backend cannot make one."""

    @abstractmethod
    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        """Remove what writers under `prefix` left unfinished before `older_than` (a process
        that died mid-upload: local temporary files, S3 multipart uploads); how many."""

    @abstractmethod
    def check(self) -> None:
        """Raise `StorageError` unless the backend is usable (for readiness checks)."""
