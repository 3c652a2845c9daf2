"""Resumable downloads against a real socket that breaks, lies and refuses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import httpx
import pytest

from otacm.simulator.backoff import Backoff, BackoffPolicy
from otacm.simulator.download import (
    DownloadFailed,
    DownloadStats,
    WrongLength,
    download_resumable,
)
from otacm.simulator.link import NetworkLink
from tests.simulator.file_server import FileServer, serving

IMAGE = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a whole number of them
PATH = "/targets/updates/7/abc.bcm.bin"


def fetch(
    server: FileServer,
    destination: Path,
    *,
    length: int = len(IMAGE),
    link: NetworkLink | None = None,
    max_tries: int = 20,
    waits: list[float] | None = None,
    progress: list[int] | None = None,
) -> DownloadStats:
    async def sleep(seconds: float) -> None:
        if waits is not None:
            waits.append(seconds)

    async def on_progress(held: int) -> None:
        if progress is not None:
            progress.append(held)

    async def run() -> DownloadStats:
        async with httpx.AsyncClient() as client:
            return await download_resumable(
                client,
                server.url + PATH,
                destination,
                length=length,
                backoff=Backoff(BackoffPolicy(initial=0.5, maximum=4.0), random.Random(1)),
                max_tries=max_tries,
                link=link,
                on_progress=on_progress,
                sleep=sleep,
            )

    return asyncio.run(run())


def test_a_whole_download_in_one_request(tmp_path: Path) -> None:
    progress: list[int] = []
    with serving({PATH: IMAGE}) as server:
        stats = fetch(server, tmp_path / "image.bin", progress=progress)
        assert server.ranges_asked() == [None]
    assert (tmp_path / "image.bin").read_bytes() == IMAGE
    assert (stats.requests, stats.resumed, stats.retries) == (1, 0, 0)
    assert progress[-1] == len(IMAGE)
    assert progress == sorted(progress)


def test_a_broken_connection_resumes_where_it_stopped(tmp_path: Path) -> None:
    waits: list[float] = []
    with serving({PATH: IMAGE}) as server:
        server.faults.cut_after = [1_000_000, 700_000]
        stats = fetch(server, tmp_path / "image.bin", waits=waits)
        asked = server.ranges_asked()
    assert hashlib.sha256((tmp_path / "image.bin").read_bytes()).digest() == (
        hashlib.sha256(IMAGE).digest()
    )
    # The client may have read a little less than was sent before the cut; it asks for the
    # rest from exactly what it holds, never from the start again.
    assert asked[0] is None
    assert asked[1] is not None and asked[2] is not None
    first, second = int(asked[1][6:-1]), int(asked[2][6:-1])
    assert 0 < first <= 1_000_000 and first < second <= first + 700_000
    assert (stats.requests, stats.resumed, stats.restarted, stats.retries) == (3, 2, 0, 2)
    assert len(waits) == 2 and all(w > 0 for w in waits)


def test_a_partial_file_from_an_earlier_run_is_continued(tmp_path: Path) -> None:
    destination = tmp_path / "image.bin"
    destination.write_bytes(IMAGE[:12345])
    with serving({PATH: IMAGE}) as server:
        stats = fetch(server, destination)
        assert server.ranges_asked() == ["bytes=12345-"]
    assert destination.read_bytes() == IMAGE
    assert stats.resumed == 1


def test_a_server_that_ignores_range_makes_the_client_start_again(tmp_path: Path) -> None:
    destination = tmp_path / "image.bin"
    destination.write_bytes(b"x" * 5000)  # not even the right bytes: they must all be replaced
    with serving({PATH: IMAGE}) as server:
        server.faults.ignore_range = True
        stats = fetch(server, destination)
        assert server.ranges_asked() == ["bytes=5000-"]
    assert destination.read_bytes() == IMAGE
    assert (stats.resumed, stats.restarted) == (0, 1)


def test_a_partial_file_beyond_the_server_file_starts_again_after_416(tmp_path: Path) -> None:
    destination = tmp_path / "image.bin"
    destination.write_bytes(IMAGE[:30])
    with serving({PATH: IMAGE[:20]}) as server:
        # Asked from byte 30 of a 20-byte file: 416; from the start, the whole file is too short.
        with pytest.raises(WrongLength, match="20 bytes, not 50"):
            fetch(server, destination, length=50)
        assert server.ranges_asked() == ["bytes=30-", None]


def test_a_partial_file_longer_than_signed_is_thrown_away(tmp_path: Path) -> None:
    destination = tmp_path / "image.bin"
    destination.write_bytes(b"y" * 100)
    with serving({PATH: IMAGE[:50]}) as server:
        fetch(server, destination, length=50)
        assert server.ranges_asked() == [None]
    assert destination.read_bytes() == IMAGE[:50]


def test_server_errors_are_retried_with_growing_waits(tmp_path: Path) -> None:
    waits: list[float] = []
    with serving({PATH: IMAGE}) as server:
        server.faults.statuses = [503, 502, 503]
        stats = fetch(server, tmp_path / "image.bin", waits=waits)
    assert (tmp_path / "image.bin").read_bytes() == IMAGE
    assert stats.retries == 3
    assert len(waits) == 3
    # Equal jitter: each wait lies in the upper half of its doubling bound.
    for wait, bound in zip(waits, (0.5, 1.0, 2.0), strict=True):
        assert bound / 2 <= wait <= bound


def test_a_missing_file_is_a_permanent_failure(tmp_path: Path) -> None:
    with serving({}) as server:
        with pytest.raises(DownloadFailed, match="HTTP 404"):
            fetch(server, tmp_path / "image.bin")
        assert len(server.requests) == 1


def test_giving_up_after_max_tries(tmp_path: Path) -> None:
    with serving({PATH: IMAGE}) as server:
        server.faults.statuses = [503] * 10
        with pytest.raises(DownloadFailed, match="gave up after 3 tries"):
            fetch(server, tmp_path / "image.bin", max_tries=3)
        assert len(server.requests) == 3


def test_more_bytes_than_signed_are_refused(tmp_path: Path) -> None:
    with (
        serving({PATH: IMAGE}) as server,
        pytest.raises(WrongLength, match="more than the 1000 bytes"),
    ):
        fetch(server, tmp_path / "image.bin", length=1000)
    assert (tmp_path / "image.bin").stat().st_size <= 1000


def test_a_shorter_file_than_signed_is_refused(tmp_path: Path) -> None:
    with (
        serving({PATH: IMAGE[:1000]}) as server,
        pytest.raises(WrongLength, match="1000 bytes, not 2000"),
    ):
        fetch(server, tmp_path / "image.bin", length=2000)


def test_a_resumed_answer_for_another_file_length_is_refused(tmp_path: Path) -> None:
    destination = tmp_path / "image.bin"
    destination.write_bytes(IMAGE[:10])
    with (
        serving({PATH: IMAGE[:1000]}) as server,
        pytest.raises(WrongLength, match="the server's file is 1000 bytes"),
    ):
        fetch(server, destination, length=2000)


def test_the_simulated_link_cuts_a_transfer_and_the_download_resumes(tmp_path: Path) -> None:
    link = NetworkLink()
    link.cut_next_transfer(after_bytes=600_000)
    with serving({PATH: IMAGE}) as server:
        stats = fetch(server, tmp_path / "image.bin", link=link)
        asked = server.ranges_asked()
    assert (tmp_path / "image.bin").read_bytes() == IMAGE
    assert link.cuts == 1
    assert asked[0] is None and asked[1] is not None
    # The piece in which the link broke is lost: the rest is asked for from before it.
    assert 0 < int(asked[1][6:-1]) <= 600_000
    assert stats.resumed == 1


def test_an_offline_link_makes_no_request_until_it_is_back(tmp_path: Path) -> None:
    link = NetworkLink()
    link.online = False
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            link.online = True

    async def run(server: FileServer) -> DownloadStats:
        async with httpx.AsyncClient() as client:
            return await download_resumable(
                client,
                server.url + PATH,
                tmp_path / "image.bin",
                length=len(IMAGE),
                backoff=Backoff(BackoffPolicy(initial=0.5, maximum=4.0), random.Random(1)),
                link=link,
                sleep=sleep,
            )

    with serving({PATH: IMAGE}) as server:
        stats = asyncio.run(run(server))
        assert len(server.requests) == 1
    assert (tmp_path / "image.bin").read_bytes() == IMAGE
    assert stats.retries == 3


def test_a_cut_in_the_last_piece_still_loses_it_and_resumes(tmp_path: Path) -> None:
    link = NetworkLink()
    link.cut_next_transfer(after_bytes=len(IMAGE) - 1)
    with serving({PATH: IMAGE}) as server:
        stats = fetch(server, tmp_path / "image.bin", link=link)
        asked = server.ranges_asked()
    assert (tmp_path / "image.bin").read_bytes() == IMAGE
    assert len(asked) == 2 and asked[1] is not None
    assert stats.resumed == 1
