"""Figures too costly for a page's time budget on a large fleet (counts over a million
vehicles, compliance over twelve million ECUs), computed off the request and kept a while.

A page asks for a figure; if the one kept is older than the page allows, a worker thread
computes it anew while the page shows the kept one and its age. The page waits a moment for
a computation it started, so that a small fleet's figures are there at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.datastructures import State

from otacm.db import utcnow

log = logging.getLogger("otacm.console")

# How long a page waits for a computation it started before it shows what it has.
WAIT = timedelta(milliseconds=150)


@dataclass(frozen=True)
class Snapshot:
    value: Any
    computed_at: datetime


class Snapshots:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, Snapshot] = {}
        self._running: dict[str, threading.Thread] = {}

    def get(self, key: str, max_age: timedelta, compute: Callable[[], Any]) -> Snapshot | None:
        """The kept figure (None while the first computation runs); starts a new one when
        the kept one is older than `max_age`."""
        started: threading.Thread | None = None
        with self._lock:
            kept = self._kept.get(key)
            stale = kept is None or utcnow() - kept.computed_at > max_age
            if stale and key not in self._running:
                started = threading.Thread(
                    target=self._compute, args=(key, compute), daemon=True, name=f"console-{key}"
                )
                self._running[key] = started
                started.start()
        if started is not None:  # only the view that started it waits (a moment) for it
            started.join(WAIT.total_seconds())
            with self._lock:
                kept = self._kept.get(key)
        return kept

    def _compute(self, key: str, compute: Callable[[], Any]) -> None:
        try:
            value = compute()
            with self._lock:
                self._kept[key] = Snapshot(value, utcnow())
        except Exception:  # the page shows the previous figure; the next view tries again
            log.exception("the console could not compute %s", key)
        finally:
            with self._lock:
                self._running.pop(key, None)

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()


_creating = threading.Lock()


def of(state: State) -> Snapshots:
    """The app's snapshots (one set per application: per database)."""
    with _creating:
        snapshots = getattr(state, "console_snapshots", None)
        if snapshots is None:
            snapshots = state.console_snapshots = Snapshots()
    assert isinstance(snapshots, Snapshots)
    return snapshots
