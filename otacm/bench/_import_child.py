"""Runs one fleet import in a process of its own, so that its peak memory is its own.

Usage: python -m otacm.bench._import_child DATABASE_URL FILE; prints a JSON line with the
seconds, ECU rows, peak RSS (MB) of the import, and whether it was a first load into an
empty registry.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from otacm.config import Settings
from otacm.db import make_engine
from otacm.fleet.importer import run_import


def main(url: str, path: str) -> None:
    engine = make_engine(url)
    started = time.perf_counter()
    with Path(path).open("rb") as stream:
        report = run_import(
            engine, stream, settings=Settings(database_url=url), source_name=Path(path).name
        )
    seconds = time.perf_counter() - started
    counts = report.counts
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": counts.ecus_created + counts.ecus_unchanged + counts.ecus_updated,
                "rejected": report.records_rejected,
                "first_load": report.first_load,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
