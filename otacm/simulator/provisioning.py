"""What the factory gives a vehicle, and what many simulated vehicles share.

`provision_roots` is the end-of-line step: the trusted `1.root.json` of the image repository
and of the vehicle's director repository, fetched once and kept in the vehicle's storage; from
then on the vehicle follows root rotations through TUF and never trusts a root it fetched later
on its own. `make_http` and `make_tuf_http` are the HTTP clients a fleet shares: pooled, patient
for a free connection, and following the image repository's redirects to object storage (httpx
never forwards the vehicle's credential to another origin).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from otacm.simulator.records import ProvisioningRecord


@dataclass(frozen=True, slots=True)
class TrustedRoots:
    """The `1.root.json` of each repository, as installed at the factory."""

    image: bytes
    director: bytes


class _QueuedClient(httpx.AsyncClient):
    """An httpx client whose requests queue on a semaphore before they reach the connection
    pool: httpx's pool walks its whole queue for every request it assigns, which costs a
    fleet of hundreds of waiting vehicles most of its CPU."""

    def __init__(self, in_flight: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight = in_flight
        self._slots: asyncio.Semaphore | None = None

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if self._slots is None:  # made in the loop that uses it
            self._slots = asyncio.Semaphore(self._in_flight)
        async with self._slots:
            return await super().send(request, **kwargs)


def make_http(max_connections: int = 100) -> httpx.AsyncClient:
    """For the vehicle API and downloads (asyncio)."""
    return _QueuedClient(
        max_connections,
        timeout=httpx.Timeout(30.0, pool=300.0),
        limits=httpx.Limits(max_connections=max_connections),
        follow_redirects=True,
    )


def make_tuf_http(max_connections: int = 20) -> httpx.Client:
    """For python-tuf, which is synchronous and runs in threads."""
    return httpx.Client(
        timeout=httpx.Timeout(30.0, pool=300.0),
        limits=httpx.Limits(max_connections=max_connections),
        follow_redirects=True,
    )


async def provision_roots(
    http: httpx.AsyncClient, base_url: str, record: ProvisioningRecord, directory: Path
) -> TrustedRoots:
    """The roots the vehicle trusts: read from `directory` when it was provisioned before,
    else fetched (as the factory does, once) and kept there.

    Raises httpx.HTTPError when they cannot be fetched.
    """
    image, director = directory / "image.1.root.json", directory / "director.1.root.json"
    if not (image.exists() and director.exists()):
        base = base_url.rstrip("/")
        auth = {"Authorization": f"Bearer {record.token}"}
        image_root = await http.get(f"{base}/tuf/image/1.root.json")
        director_root = await http.get(
            f"{base}/tuf/director/{record.vin}/1.root.json", headers=auth
        )
        image_root.raise_for_status()
        director_root.raise_for_status()
        directory.mkdir(parents=True, exist_ok=True)
        image.write_bytes(image_root.content)
        director.write_bytes(director_root.content)
    return TrustedRoots(image=image.read_bytes(), director=director.read_bytes())
