"""The two TUF repositories a vehicle trusts, read with python-tuf's `ngclient` over httpx.

- the image repository, `/tuf/image/`: the same for every vehicle, readable by anyone;
- the director repository, `/tuf/director/{vin}/`: this vehicle's own, behind its credential,
  so its fetcher adds `Authorization: Bearer <token>` to every request.

Each trusts the root installed at provisioning (`1.root.json`) and follows root rotations from
there: `ngclient` verifies every newer root with the one before and keeps the chain in the
metadata directory. `ngclient` is synchronous and verifies signatures on the CPU, so callers in
an event loop run `refresh` in a thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater

from otacm.simulator.link import NetworkLink
from otacm.simulator.uptane import DirectorTargets


class HttpxFetcher(FetcherInterface):
    """`ngclient`'s network layer on an httpx client, with an optional bearer credential.

    The httpx client is shared by all vehicles of a simulation (it is safe to use from several
    threads); the credential is per request, never set on the shared client.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        token: str | None = None,
        link: NetworkLink | None = None,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self._client = client
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._link = link
        self._chunk_size = chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Raises DownloadHTTPError for an HTTP error; httpx's errors are wrapped by `fetch`."""
        if self._link is not None:
            self._link.require()
        try:
            answer = self._client.send(
                self._client.build_request("GET", url, headers=self._headers), stream=True
            )
        except httpx.TimeoutException as exc:
            raise exceptions.SlowRetrievalError(f"{url}: {exc}") from exc
        if answer.status_code >= 400:
            answer.close()
            raise exceptions.DownloadHTTPError(
                f"HTTP {answer.status_code} for {url}", answer.status_code
            )
        return self._chunks(url, answer)

    def _chunks(self, url: str, answer: httpx.Response) -> Iterator[bytes]:
        # A generator, so that `fetch` tells a refused request from a broken body. What breaks
        # here is raised after `fetch` returned, so it is turned into a DownloadError here:
        # to the client, a body cut short is a network problem, never a forged file.
        received = 0
        try:
            for chunk in answer.iter_bytes(self._chunk_size):
                received += len(chunk)
                if self._link is not None:
                    self._link.transferred(received)
                yield chunk
        except httpx.TimeoutException as exc:
            raise exceptions.SlowRetrievalError(f"{url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        finally:
            answer.close()


class TrustedRepository:
    """One TUF repository as this vehicle knows it: a local metadata directory, the URL of
    the repository and the root it was provisioned with."""

    def __init__(
        self, metadata_dir: Path, url: str, trusted_root: bytes, fetcher: FetcherInterface
    ) -> None:
        self.metadata_dir = metadata_dir
        self.url = url if url.endswith("/") else url + "/"
        self._trusted_root = trusted_root
        self._fetcher = fetcher
        metadata_dir.mkdir(parents=True, exist_ok=True)

    def refresh(self) -> Updater:
        """A freshly refreshed `Updater` (an `Updater` refreshes only once in its life, so each
        look at the repository takes a new one; what it verified before is reused from disk).

        Raises:
            tuf.api.exceptions.RepositoryError: metadata that does not verify (an attack, or a
                repository that let its metadata expire).
            tuf.api.exceptions.DownloadError: the repository could not be reached.
        """
        updater = Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=self.url,
            target_base_url=self.url + "targets/",
            fetcher=self._fetcher,
            bootstrap=self._trusted_root,
        )
        updater.refresh()
        return updater

    def director_targets(self) -> DirectorTargets:
        """Refresh, then the director's verified top-level targets, with `signed.custom`.

        `Updater` offers targets one path at a time and not the `custom` of the metadata; after
        `refresh()` the top-level targets it verified (downloaded or reused) is the one in
        `targets.json` of the metadata directory, which only the Updater writes, so that file
        is read back here.
        """
        self.refresh()
        metadata = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json"))
        return DirectorTargets.from_signed(metadata.signed)

    def image_targets(self, paths: Iterable[str]) -> dict[str, TargetFile | None]:
        """Refresh, then the verified target of each path (None where there is none)."""
        updater = self.refresh()
        return {path: updater.get_targetinfo(path) for path in paths}
