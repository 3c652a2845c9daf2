"""The server's periodic jobs, scheduled one way: `every` runs a job's blocking work in the
threadpool, logs whatever it raises under the job's name, waits, and runs it again.

`app.py` starts the jobs of `otacm serve` (maintenance, the rollout engine, notification
delivery) from one list; `otacm worker` runs the engine's and the delivery's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool

log = logging.getLogger("otacm.periodic")


async def every(
    interval_seconds: float, work: Callable[..., object], *args: Any, name: str
) -> None:
    """Run `work(*args)` now and then `interval_seconds` after each run ends, until cancelled.
    A run that raises is logged with `name` and does not stop the next one."""
    if interval_seconds <= 0:
        raise ValueError(f"{name}: the interval must be positive, not {interval_seconds}")
    while True:
        try:
            await run_in_threadpool(work, *args)
        except Exception:
            log.exception("%s failed; it runs again in %g s", name, interval_seconds)
        await asyncio.sleep(interval_seconds)


@dataclass(frozen=True)
class Job:
    """One periodic job of a process: `loop()` makes the coroutine that runs it for ever."""

    name: str
    interval: timedelta  # zero (or less) turns the job off
    loop: Callable[[], Coroutine[Any, Any, None]]


def start(jobs: Iterable[Job]) -> list[asyncio.Task[None]]:
    """Start every job that is switched on, each as a task named after it."""
    return [
        asyncio.create_task(job.loop(), name=job.name)
        for job in jobs
        if job.interval.total_seconds() > 0
    ]
