"""`otacm bench import` at a small scale: the import runs in a child process whose memory,
worker processes included, is measured."""

from __future__ import annotations

from pathlib import Path

from otacm.bench import fleet_import


def test_bench_import_reports_throughput_and_memory(tmp_path: Path) -> None:
    report = fleet_import.run(
        vehicles=40, seed=3, work_dir=tmp_path, postgres_url=None, sqlite=True, command="test"
    )
    names = [r.name for r in report.results]
    assert "SQLite: import into an empty registry" in names
    assert report.facts["SQLite import"] == "first load, one transaction"
    memory = report.facts["peak memory of an import (resident, with its worker processes)"]
    assert "MB (target < 500): SQLite import " in memory and float(memory.split()[0]) > 10
