"""Shared helpers of the benchmarks: timing, memory, fixtures on disk, result tables."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from otacm.db import make_engine
from otacm.fleet.generator import write_export

console = Console(stderr=True)


@dataclass
class Result:
    name: str
    seconds: float
    rows: int | None = None
    baseline: str | None = None
    ratio: float | None = None
    note: str = ""
    # What `rows` counts: "rows", or "bytes" (throughput then in MB/s).
    unit: str = "rows"

    @property
    def throughput(self) -> str:
        if not self.rows or not self.seconds:
            return ""
        if self.unit == "bytes":
            return f"{self.rows / self.seconds / 1e6:,.0f} MB/s"
        return f"{self.rows / self.seconds:,.0f} {self.unit}/s"


@dataclass
class Report:
    title: str
    command: str
    results: list[Result] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def add(self, result: Result) -> Result:
        self.results.append(result)
        console.print(
            f"  {result.name}: {result.seconds:.3f} s {result.throughput} "
            f"{f'ratio {result.ratio:.2f}' if result.ratio is not None else ''} "
            f"{result.note}"
        )
        return result

    def show(self) -> None:
        table = Table(
            "measure", "seconds", "throughput", "ratio to baseline", "note", title=self.title
        )
        for r in self.results:
            table.add_row(
                r.name,
                f"{r.seconds:.3f}",
                r.throughput,
                f"{r.ratio:.2f} × {r.baseline}" if r.ratio is not None else "",
                r.note,
            )
        Console().print(table)
        for key, value in self.facts.items():
            Console().print(f"{key}: {value}")

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            f"Command: `{self.command}`",
            "",
            "| measure | seconds | throughput | ratio to baseline | note |",
            "|---|---:|---:|---:|---|",
        ]
        for r in self.results:
            ratio = f"{r.ratio:.2f} × {r.baseline}" if r.ratio is not None else ""
            lines.append(f"| {r.name} | {r.seconds:.3f} | {r.throughput} | {ratio} | {r.note} |")
        lines.append("")
        lines += [f"- {key}: {value}" for key, value in self.facts.items()]
        return "\n".join(lines) + "\n"


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.perf_counter()
    elapsed: list[float] = []
    yield lambda: elapsed[0] if elapsed else time.perf_counter() - started
    elapsed.append(time.perf_counter() - started)


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def fleet_file(work_dir: Path, vehicles: int, seed: int, fmt: str) -> Path:
    """The generated export for these parameters, made once and kept in `work_dir`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"fleet-{vehicles}-s{seed}.{fmt}"
    if not path.exists():
        console.print(f"generating {path} …")
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8", newline="") as out:
            write_export(out, vehicles, seed, fmt)
        partial.rename(path)
    return path


@contextmanager
def scratch_postgres_database(admin_url: str, prefix: str) -> Iterator[Engine]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(admin_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
