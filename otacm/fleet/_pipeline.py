"""The stages of a fleet import that are not about the registry: reading ahead in a thread,
cutting the records into batches, and keeping Python's garbage collector out of the way."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from queue import Full, Queue
from typing import Any

from otacm.config import VinCheckDigitPolicy
from otacm.fleet.parser import TruncatedFile
from otacm.fleet.records import Problem, RawRecord, VehicleRecord, validate_record

Validated = list[tuple[RawRecord, VehicleRecord | None]]

# Batches between two runs of the (otherwise paused) garbage collector.
COLLECT_EVERY = 25

_collector_lock = threading.Lock()
_collector_pauses = 0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while an import runs.

    An import allocates tens of millions of short-lived containers, and the collector's passes
    over them cost a quarter of the import's time. The import collects every `COLLECT_EVERY`
    batches instead, and once more when the last import in the process ends.
    """
    global _collector_pauses
    with _collector_lock:
        if _collector_pauses == 0:
            gc.disable()
        _collector_pauses += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses -= 1
            if _collector_pauses == 0:
                gc.enable()
        if _collector_pauses == 0:
            gc.collect()


class ReadAhead:
    """Parse and validate the next batches in a thread while the caller writes this one.

    The database does its share of the work in its own process (PostgreSQL) or with the
    interpreter lock released (SQLite), so reading ahead keeps both cores busy. At most two
    batches wait, which bounds memory.
    """

    def __init__(self, batches: Iterator[list[RawRecord]], policy: VinCheckDigitPolicy) -> None:
        self._queue: Queue[Any] = Queue(maxsize=2)
        self._stop = threading.Event()
        self._batches, self._policy = batches, policy
        self._thread = threading.Thread(target=self._produce, name="fleet-import-reader")
        self._thread.daemon = True
        self._thread.start()

    def _offer(self, item: Any) -> bool:
        """Hand `item` over unless the consumer has gone away."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def _produce(self) -> None:
        policy = self._policy
        try:
            for batch in self._batches:
                validated = [
                    (raw, None if raw.problems else validate_record(raw, policy)) for raw in batch
                ]
                if not self._offer(validated):
                    return
            self._offer(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._offer(exc)

    def __iter__(self) -> Iterator[Validated]:
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self, *, wait: bool = False) -> None:
        """Stop reading. With `wait`, return only once the thread has let go of the stream
        (the caller reads it again from the start); otherwise give it a few seconds, so that
        an interrupted import never hangs on a stalled upload."""
        self._stop.set()
        self._thread.join(timeout=None if wait else 5)


_DONE = object()


def read_ahead(batches: Iterator[list[RawRecord]], policy: VinCheckDigitPolicy) -> ReadAhead:
    return ReadAhead(batches, policy)


def batches_of(records: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    """Batches of records; a compressed file that breaks off ends with a rejection for it."""
    batch: list[RawRecord] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
    except TruncatedFile as exc:
        batch.append(RawRecord(exc.line + 1, {}, problems=[Problem(None, exc.reason)]))
    if batch:
        yield batch
