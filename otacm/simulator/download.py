"""Downloads that survive a broken connection: resumed with HTTP `Range` where they stopped.

An image of several hundred megabytes over a cellular link is rarely fetched in one go. The
bytes received so far stay in the destination file; the next try asks for the rest
(`Range: bytes=<have>-`) and appends it. The server's answer decides how:

- 206 with a `Content-Range` starting at what we have: append;
- 200 (a server or proxy that ignores `Range`): start the file again from the first byte;
- 416 (we hold more than the file has): start again;
- 5xx, 429 and transport errors: wait (backoff) and try again;
- any other status: give up (`DownloadFailed`).

The length the signed metadata gives is a hard limit: a server that sends more is cut off
(`WrongLength`, the "endless data" attack), so is one whose file is shorter or longer. The
caller verifies the hashes of the finished file; this module only gets its bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from otacm.simulator.backoff import Backoff
from otacm.simulator.link import NetworkLink

# Bytes taken from the response at a time: each is written (and survives a break) on its own.
CHUNK_SIZE = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadFailed(Exception):
    """The file could not be fetched: a permanent error, or too many tries."""


class WrongLength(DownloadFailed):
    """The server's file is not as long as the signed metadata says."""


@dataclass(slots=True)
class DownloadStats:
    requests: int = 0
    resumed: int = 0  # requests that continued a partial file with `Range`
    restarted: int = 0  # partial files thrown away because the server could not continue them
    retries: int = 0  # tries after a failure
    bytes_received: int = 0


def _resume_point(answer: httpx.Response, have: int, length: int) -> int:
    """Where the answer's body starts in the file: `have`, or 0 to start again."""
    if answer.status_code == 200:
        return 0
    match = _CONTENT_RANGE.match(answer.headers.get("content-range", ""))
    if match is None:
        raise DownloadFailed(f"a partial answer without a readable Content-Range: {answer.url}")
    start, total = int(match[1]), match[3]
    if total != "*" and int(total) != length:
        raise WrongLength(f"the server's file is {total} bytes, the signed metadata says {length}")
    if start not in (0, have):
        raise DownloadFailed(f"asked for the bytes from {have}, got them from {start}")
    return start


async def download_resumable(
    client: httpx.AsyncClient,
    url: str,
    destination: Path,
    *,
    length: int,
    backoff: Backoff,
    max_tries: int = 20,
    link: NetworkLink | None = None,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> DownloadStats:
    """Fetch `url` into `destination` until it holds exactly `length` bytes.

    A `destination` that already holds some bytes (an earlier, interrupted run) is continued.
    `on_progress` is awaited with the bytes held after each piece that arrives; `sleep` waits
    between tries (the caller's, so that a stop request ends the wait).

    Raises:
        WrongLength: the server's file is longer or shorter than `length`.
        DownloadFailed: a permanent HTTP error, or `max_tries` tries failed.
    """
    stats = DownloadStats()
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.touch()
    while True:
        have = destination.stat().st_size
        if have > length:
            destination.write_bytes(b"")
            have = 0
        if have == length:
            return stats
        if stats.requests >= max_tries:
            raise DownloadFailed(f"{url}: gave up after {stats.requests} tries")
        if stats.requests:
            stats.retries += 1
        stats.requests += 1
        try:
            if await _fetch(client, url, destination, have, length, stats, link, on_progress):
                backoff.reset()
                continue
        except httpx.TransportError:
            pass  # the bytes received so far stay; the next try asks for the rest
        await sleep(backoff.next_delay())


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    destination: Path,
    have: int,
    length: int,
    stats: DownloadStats,
    link: NetworkLink | None,
    on_progress: Callable[[int], Awaitable[None]] | None,
) -> bool:
    """One request; True when it made progress (or found the file complete)."""
    if link is not None:
        link.require()
    headers = {"Range": f"bytes={have}-"} if have else {}
    async with client.stream("GET", url, headers=headers) as answer:
        if answer.status_code == 416:
            destination.write_bytes(b"")
            stats.restarted += 1
            return False
        if answer.status_code in RETRYABLE_STATUSES:
            return False
        if answer.status_code not in (200, 206):
            raise DownloadFailed(f"{url}: HTTP {answer.status_code}")
        start = _resume_point(answer, have, length)
        if have:
            if start:
                stats.resumed += 1
            else:
                stats.restarted += 1
        received = 0
        with destination.open("r+b") as out:
            out.seek(start)
            out.truncate()
            held = start
            async for piece in answer.aiter_bytes(CHUNK_SIZE):
                if held + len(piece) > length:
                    raise WrongLength(
                        f"{url}: the server sends more than the {length} bytes signed"
                    )
                received += len(piece)
                if link is not None:
                    link.transferred(received)  # a link that breaks now loses this piece
                out.write(piece)
                held += len(piece)
                stats.bytes_received += len(piece)
                if on_progress is not None:
                    await on_progress(held)
        if held < length and received == 0:
            return False
        whole = answer.status_code == 200 and answer.headers.get("content-length") == str(held)
        if held < length and whole:
            # A complete 200 answer that is too short: the server's file is another file.
            raise WrongLength(f"{url}: the server's file is {held} bytes, not {length}")
        return True
