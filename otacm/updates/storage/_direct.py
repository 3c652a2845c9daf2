"""Writing a new file around the page cache (O_DIRECT), through an aligned buffer.

A multi-gigabyte upload written through the page cache costs the writing thread a copy per
byte plus page allocation, then a long fsync at the end when all of it goes to disk at once;
on the benchmark machine that halved upload throughput. With O_DIRECT the disk reads straight
from our buffer while the next one fills, and the final fsync only has metadata left to do.
It also keeps a large upload from pushing everything else out of the page cache.

O_DIRECT wants the buffer, the file offset and the length aligned; everything but the tail is
written in whole buffers, and the tail is padded, then the file is cut back to its length.
File systems without O_DIRECT (tmpfs, some network file systems) get plain writes instead.
"""

from __future__ import annotations

import fcntl
import mmap
import os

ALIGNMENT = 4096
BUFFER_SIZE = 8 << 20  # a multiple of ALIGNMENT


class DirectWriter:
    """Appends to the open, empty file `fd`; `finish` flushes, sets the length and fsyncs."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._direct = _enable_direct(fd)
        self._buffer = mmap.mmap(-1, BUFFER_SIZE) if self._direct else None
        self._view = memoryview(self._buffer) if self._buffer is not None else None
        self._filled = 0
        self.length = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        source = memoryview(data).cast("B")
        self.length += len(source)
        if self._view is None:
            _write_all(self._fd, source)
            return
        while source:
            n = min(len(source), BUFFER_SIZE - self._filled)
            self._view[self._filled : self._filled + n] = source[:n]
            self._filled += n
            source = source[n:]
            if self._filled == BUFFER_SIZE:
                _write_all(self._fd, self._view)
                self._filled = 0

    def finish(self) -> None:
        if self._view is not None and self._filled:
            padded = -(-self._filled // ALIGNMENT) * ALIGNMENT
            _write_all(self._fd, self._view[:padded])
            os.ftruncate(self._fd, self.length)
        os.fsync(self._fd)

    def close(self) -> None:
        """Release the buffer and the file descriptor; calling it again does nothing."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _enable_direct(fd: int) -> bool:
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct)
    except OSError:
        return False
    # Some file systems accept the flag and only refuse the first write: try one block.
    probe = mmap.mmap(-1, ALIGNMENT)
    try:
        os.write(fd, probe)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return True
    except OSError:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return False
    finally:
        probe.close()


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
