"""Artifact storage in a directory on local disk: the default, and what embedded setups use.

Each key is a file under the root. A writer fills a hidden temporary file in the target's own
directory and commits with fsync + `os.replace`, so the final name only ever holds a complete
file, even across a crash. Temporary names start with `.`, which no valid key segment does, so
they never collide with keys and `list()` skips them. A copy is a hard link: the same file
under a second name, made in no time whatever its size.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mode
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from otacm.files import fsync_dir
from otacm.updates.storage._direct import DirectWriter
from otacm.updates.storage.base import (
    DEFAULT_CHUNK_SIZE,
    ArtifactMissing,
    ArtifactStorage,
    ByteStream,
    Data,
    ObjectInfo,
    StorageError,
    StorageWriter,
    check_range,
    validate_key,
    validate_prefix,
)

TEMP_PREFIX = ".otacm-"
# Errors meaning "no file under this key": absent, or a directory or a file in the way.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))


class LocalWriter(StorageWriter):
    def __init__(self, key: str, path: Path) -> None:
        super().__init__(key)
        self._path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {key!r}: {exc}") from exc
        self._temp = Path(temp)
        try:
            self._file = DirectWriter(fd)
        except BaseException:
            os.close(fd)
            self._temp.unlink(missing_ok=True)
            raise

    def _write(self, data: Data) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {self.key!r}: {exc}") from exc

    def _commit(self) -> None:
        try:
            self._file.finish()
            self._file.close()
            os.replace(self._temp, self._path)
            fsync_dir(self._path.parent)
        except OSError as exc:
            raise StorageError(f"cannot commit artifact {self.key!r}: {exc}") from exc

    def _abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


class LocalStorage(ArtifactStorage):
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def writer(self, key: str) -> LocalWriter:
        return LocalWriter(key, self._path(key))

    def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ByteStream:
        check_range(start, end, chunk_size)
        path = self._path(key)
        try:
            file = path.open("rb", buffering=0)
        except OSError as exc:
            if exc.errno in _ABSENT:
                raise ArtifactMissing(f"artifact {key!r} does not exist") from exc
            raise StorageError(f"cannot read artifact {key!r}: {exc}") from exc
        return ByteStream(self._chunks(file, key, start, end, chunk_size), file.close)

    @staticmethod
    def _chunks(
        file: BinaryIO, key: str, start: int, end: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        try:
            file.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = file.read(chunk_size if left is None else min(chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        except OSError as exc:
            raise StorageError(f"cannot read artifact {key!r}: {exc}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise StorageError(f"cannot stat artifact {key!r}: {exc}") from exc
        return _info(key, st) if stat_mode.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except OSError as exc:
            # Empty parent directories stay: removing them would race with a concurrent writer
            # creating a file in them.
            if exc.errno not in _ABSENT and not self._path(key).is_dir():
                raise StorageError(f"cannot delete artifact {key!r}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        return self._walk(base, directory + "/" if directory else "", prefix)

    def _walk(self, directory: Path, key_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            if exc.errno in _ABSENT:
                return
            raise StorageError(f"cannot list artifacts under {prefix!r}: {exc}") from exc
        # Sorting a directory's entries with a '/' after each subdirectory's name yields the
        # whole tree in key order, the order S3 lists in, without collecting it first.
        tagged = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in entries]
        for name, entry in sorted(tagged, key=lambda pair: pair[0]):
            key = key_prefix + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                try:
                    yield _info(key, entry.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue  # deleted while listing

    def copy(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        try:
            if target.is_file():
                return
            if not source.is_file():
                raise ArtifactMissing(f"artifact {src!r} does not exist")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except FileExistsError:
                # A link never replaces what is there: a copy made meanwhile is kept.
                if not target.is_file():
                    raise
            fsync_dir(target.parent)
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"artifact {src!r} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy artifact {src!r} to {dst!r}: {exc}") from exc

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactMissing(f"artifact {key!r} does not exist")
        return path

    def presigned_url(
        self, key: str, *, expires: timedelta, filename: str | None = None
    ) -> str | None:
        validate_key(key)
        return None

    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        removed = 0
        for path in base.rglob(f"{TEMP_PREFIX}*.part") if base.is_dir() else ():
            try:
                modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                if modified < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # finished or removed meanwhile
        return removed

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage directory {self.root}: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"the storage directory {self.root} is not writable")
