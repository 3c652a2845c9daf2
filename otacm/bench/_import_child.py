"""Runs one fleet import in a process of its own, so that its peak memory is its own.

Usage: python -m otacm.bench._import_child DATABASE_URL FILE; prints a JSON line with the
seconds, ECU rows, peak memory (MB) of the import, and whether it was a first load into an
empty registry. The import's worker processes count too: their resident memory is sampled
with the importing process's and the peak of the sum reported.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

from otacm.config import Settings
from otacm.db import make_engine
from otacm.fleet.importer import run_import


def _resident_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, from /proc."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _resident_mb(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # a process that ended meanwhile
    return total


class _MemorySampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.peak = max(self.peak, _resident_mb(os.getpid()))


def main(url: str, path: str) -> None:
    engine = make_engine(url)
    sampler = _MemorySampler()
    sampler.start()
    started = time.perf_counter()
    with Path(path).open("rb") as stream:
        report = run_import(
            engine, stream, settings=Settings(database_url=url), source_name=Path(path).name
        )
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    counts = report.counts
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": counts.ecus_created + counts.ecus_unchanged + counts.ecus_updated,
                "rejected": report.records_rejected,
                "first_load": report.first_load,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_total_mb": max(sampler.peak, _resident_mb(os.getpid())),
                "workers": report.workers,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
