"""A small HTTP/1.1 load generator: keep-alive connections on asyncio, one request at a time
on each, latency per request.

It speaks just enough HTTP for the benchmarks' answers (a status line, headers, a body of
`Content-Length` bytes, or none), so that the generator costs little of the CPU it shares with
the servers it measures; every endpoint of one run is measured with the same generator, which
is what makes their ratio fair.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        """Latency in seconds below which `share` of the requests answered."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else 0.0


def request_bytes(path: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    offset: int,
    stride: int,
    measure_from: float,
    deadline: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= deadline:
                return
            writer.write(requests[index % len(requests)])
            index += stride
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                end = lowered.index(b"\r\n", at + 2)
                length = int(lowered[at + 17 : end])
                if length:
                    await reader.readexactly(length)
            if started >= measure_from:
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] += 1
    finally:
        writer.close()


async def _run(
    host: str, port: int, requests: Sequence[bytes], connections: int, warmup: float, seconds: float
) -> LoadResult:
    result = LoadResult(0, seconds)
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds
    outcomes = await asyncio.gather(
        *(
            _connection(host, port, requests, n, connections, measure_from, deadline, result)
            for n in range(connections)
        ),
        return_exceptions=True,
    )
    result.errors = sum(1 for o in outcomes if isinstance(o, BaseException))
    result.requests = sum(result.statuses.values())
    return result


def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 32,
    warmup: float = 2.0,
    seconds: float = 10.0,
) -> LoadResult:
    """Send `requests` round-robin over `connections` keep-alive connections for `warmup`
    seconds (not counted), then `seconds` more (counted)."""
    return asyncio.run(_run(host, port, requests, connections, warmup, seconds))
