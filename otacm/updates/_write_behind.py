"""Writing to storage in a thread of its own, so that hashing and writing a file overlap.

Hashing (about 1 GB/s on one core) and writing to disk or S3 each take a core's worth of time
per byte; done one after the other in one thread they add up. The writer thread takes pieces
from a short queue, so at most `depth` pieces wait in memory.
"""

from __future__ import annotations

import queue
import threading

from otacm.updates.storage import StorageWriter

_STOP = object()


class WriteBehind:
    def __init__(self, writer: StorageWriter, depth: int = 2) -> None:
        self._writer = writer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="otacm-write-behind", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray) -> None:
        """Queue `data` (not copied: the caller must not change it afterwards)."""
        self._raise_if_failed()
        self._queue.put(data)

    def drain(self) -> None:
        """Wait until everything queued is written; raises what the writer thread raised."""
        self._stop()
        self._raise_if_failed()

    def close(self) -> None:
        """Stop the thread; pieces still queued are dropped (the caller discards the file)."""
        if self._thread.is_alive():
            self._error = self._error or _Discarded()
            self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None and not isinstance(self._error, _Discarded):
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._writer.write(item)  # type: ignore[arg-type]
                except BaseException as exc:  # handed to the producing thread
                    self._error = exc


class _Discarded(Exception):
    pass
