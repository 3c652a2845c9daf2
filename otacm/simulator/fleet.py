"""A simulated fleet: many reference clients at once against one server.

`run_fleet(records, base_url, options, stop_when=...)` runs one `VehicleClient` per provisioning
record in one asyncio event loop and returns a `FleetResult`: per vehicle, what its ECUs really
run and what happened to it, so that a test or `otacm demo` can compare the server's view with
the truth vehicle by vehicle. `Fleet` is the same with a handle: `stop()` from any thread,
`progress()` at any time.

The knobs (`FleetOptions`) make the fleet behave like a real one: owners who postpone or
decline, installs that fail and fall back, vehicles that drop off the network for a while,
downloads cut in the middle, all on a compressed clock (`time_scale`). Vehicles start spread
at `start_rate` a second, so that a thousand of them do not arrive in the same moment; they share
one HTTP connection pool and a small number of threads for the CPU work (TUF, hashing,
decryption), so the fleet's cost grows with what vehicles do, not with how many there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from otacm.simulator.backoff import Backoff, BackoffPolicy
from otacm.simulator.client import (
    ClientOptions,
    Phase,
    Tally,
    VehicleClient,
    VehicleReport,
)
from otacm.simulator.link import NetworkLink
from otacm.simulator.provisioning import make_http, make_tuf_http, provision_roots
from otacm.simulator.records import ProvisioningRecord
from otacm.simulator.vehicle import DrivingPattern, InstallBehaviour, OwnerBehaviour

GRACE_S = 10.0  # real seconds a stopping vehicle gets to finish its request before it is cut off
WATCH_EVERY_S = 0.5  # real seconds between looks at the stop conditions and the live summary


@dataclass(frozen=True, slots=True)
class FleetOptions:
    vehicles: int | None = None  # the first N records; None: all
    failure_rate: float = 0.05  # installs whose new image fails its health check
    postpone_rate: float = 0.1  # owners who answer "later"
    decline_rate: float = 0.02  # owners who answer "no"
    offline_rate: float = 0.1  # vehicles that drop off the network now and then
    offline_s: tuple[float, float] = (300.0, 3600.0)  # simulated seconds of one outage
    online_mean_s: float = 2 * 3600.0  # simulated seconds between a flaky vehicle's outages
    interruption_rate: float = 0.1  # downloads whose connection breaks once midway
    install_s: tuple[float, float] = (60.0, 600.0)  # simulated seconds to write one image
    driving: DrivingPattern = DrivingPattern()  # how often cars are parked, charged, driven
    time_scale: float = 0.01  # real seconds per simulated second
    duration_s: float | None = None  # real seconds; None: until stop_when or stop()
    seed: int | None = None  # the same seed, the same owners and failures
    work_dir: Path = Path("otacm-data/simulator")  # one directory per vehicle below
    cpu_slots: int = 2  # TUF refreshes, hashing and decryption at once
    max_connections: int = 100  # HTTP connections to the server at once
    start_rate: float | None = 200.0  # vehicles started per real second; None: all at once
    language: str | None = None  # Accept-Language of every owner
    live: bool = True  # a live Rich summary while running

    def __post_init__(self) -> None:
        for name in ("failure_rate", "offline_rate", "interruption_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability between 0 and 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.start_rate is not None and self.start_rate <= 0:
            raise ValueError("start_rate must be positive (or None: all at once)")
        if self.cpu_slots < 1 or self.max_connections < 1:
            raise ValueError("cpu_slots and max_connections must be at least 1")
        low, high = self.offline_s
        if not 0 <= low <= high:
            raise ValueError("offline_s is a range of seconds, low <= high")
        # The owner's and the installer's own checks (rates, ranges) run here too.
        OwnerBehaviour(self.postpone_rate, self.decline_rate)
        InstallBehaviour(self.install_s, self.failure_rate)

    def client_options(self) -> ClientOptions:
        return ClientOptions(
            owner=OwnerBehaviour(self.postpone_rate, self.decline_rate),
            install=InstallBehaviour(self.install_s, self.failure_rate),
            driving=self.driving,
            time_scale=self.time_scale,
            interruption_rate=self.interruption_rate,
            language=self.language,
        )


@dataclass(frozen=True, slots=True)
class FleetProgress:
    """A look at the fleet while it runs (what `stop_when` is given)."""

    elapsed_s: float
    vehicles: int
    phases: dict[str, int]  # vehicles per phase
    totals: Tally  # summed over the vehicles
    crashed: int  # vehicles not running because of an error (not provisioned, a client bug)


@dataclass(frozen=True, slots=True)
class FleetResult:
    vehicles: dict[str, VehicleReport]  # by VIN
    totals: Tally
    elapsed_s: float
    stopped_because: str
    crashed: dict[str, str]  # VIN -> why it is not running (not provisioned, a client bug)

    def installed_versions(self) -> dict[str, str]:
        """ECU serial -> the version it really runs, over the whole fleet."""
        return {s: v for report in self.vehicles.values() for s, v in report.installed.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "stopped_because": self.stopped_because,
            "elapsed_s": round(self.elapsed_s, 3),
            "totals": asdict(self.totals),
            "crashed": self.crashed,
            "vehicles": {vin: asdict(report) for vin, report in self.vehicles.items()},
        }


def sum_tallies(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        for f in fields(Tally):
            value = getattr(tally, f.name)
            if isinstance(value, int):
                setattr(total, f.name, getattr(total, f.name) + value)
    return total


class Fleet:
    def __init__(
        self,
        records: Iterable[ProvisioningRecord],
        base_url: str,
        options: FleetOptions | None = None,
        *,
        console: Console | None = None,
    ) -> None:
        self.options = options or FleetOptions()
        chosen = list(records)
        self.records = chosen if self.options.vehicles is None else chosen[: self.options.vehicles]
        self.base_url = base_url.rstrip("/")
        self.console = console or Console(stderr=True)
        self.clients: dict[str, VehicleClient] = {}
        self.crashed: dict[str, str] = {}
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()
        self._reason = ""

    def stop(self, reason: str = "stopped") -> None:
        """End the run; safe to call from any thread, before or during the run."""
        self._reason = self._reason or reason
        if self._loop is None or self._stop is None:
            return
        try:
            in_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # another thread, with no loop of its own
            in_loop = False
        if in_loop:
            self._stop.set()
        else:
            self._loop.call_soon_threadsafe(self._stop.set)

    def progress(self) -> FleetProgress:
        clients = list(self.clients.values())
        phases = Counter(c.phase.value for c in clients)
        begun = len(set(self.clients) | set(self.crashed))
        phases[Phase.STARTING.value] += len(self.records) - begun
        return FleetProgress(
            elapsed_s=time.monotonic() - self._started,
            vehicles=len(self.records),
            phases={k: v for k, v in phases.items() if v},
            totals=sum_tallies(c.tally for c in clients),
            crashed=len(self.crashed),
        )

    async def run(self, stop_when: Callable[[FleetProgress], bool] | None = None) -> FleetResult:
        """Run every vehicle until `stop_when(progress)` is true (asked twice a second, in a
        thread, so it may query the server), `duration_s` has passed, `stop()` is called or
        every vehicle has ended."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._reason:
            self._stop.set()
        self._started = time.monotonic()
        http = make_http(self.options.max_connections)
        downloads = make_http(self.options.max_connections)
        tuf_http = make_tuf_http(min(self.options.max_connections, 4 * self.options.cpu_slots))
        cpu = asyncio.Semaphore(self.options.cpu_slots)
        rate = self.options.start_rate
        spread = 1 / rate if rate else 0.0
        tasks = [
            asyncio.create_task(self._vehicle(record, i * spread, http, downloads, tuf_http, cpu))
            for i, record in enumerate(self.records)
        ]
        try:
            with self._live() as live:
                await self._watch(tasks, stop_when, live)
        finally:  # also when the run itself is cancelled: no vehicle outlives its fleet
            self.stop("the run was interrupted")
            await self._finish(tasks)
            await http.aclose()
            await downloads.aclose()
            tuf_http.close()
        return FleetResult(
            vehicles={vin: client.report() for vin, client in self.clients.items()},
            totals=sum_tallies(c.tally for c in self.clients.values()),
            elapsed_s=time.monotonic() - self._started,
            stopped_because=self._reason or "every vehicle ended",
            crashed=dict(self.crashed),
        )

    async def _vehicle(
        self,
        record: ProvisioningRecord,
        delay: float,
        http: httpx.AsyncClient,
        downloads: httpx.AsyncClient,
        tuf_http: httpx.Client,
        cpu: asyncio.Semaphore,
    ) -> None:
        assert self._stop is not None
        seed = self.options.seed
        seeds = random.Random(f"{seed}:{record.vin}") if seed is not None else random.Random()
        # Separate streams, drawn before anything depends on timing (see VehicleClient).
        client_rng, outage_rng, retry_rng = (random.Random(seeds.getrandbits(64)) for _ in "abc")
        work_dir = self.options.work_dir / record.vin
        try:
            if await self._wait(delay):
                return
            backoff = Backoff(BackoffPolicy(initial=1.0, maximum=30.0), retry_rng)
            while True:  # the factory step: it needs the server, which may not be up yet
                try:
                    roots = await provision_roots(http, self.base_url, record, work_dir / "trusted")
                    break
                except httpx.HTTPError as exc:
                    self.crashed[record.vin] = f"not provisioned: {exc}"
                    refused = isinstance(exc, httpx.HTTPStatusError) and (
                        exc.response.status_code < 500 and exc.response.status_code != 429
                    )
                    if refused or await self._wait(backoff.next_delay()):
                        return
            self.crashed.pop(record.vin, None)
            link = NetworkLink()
            client = VehicleClient(
                record,
                base_url=self.base_url,
                work_dir=work_dir,
                roots=roots,
                options=self.options.client_options(),
                http=http,
                tuf_http=tuf_http,
                download_http=downloads,
                cpu_slots=cpu,
                link=link,
                rng=client_rng,
                stop=self._stop,
            )
            self.clients[record.vin] = client
            outages = None
            if outage_rng.random() < self.options.offline_rate:
                outages = asyncio.create_task(self._outages(link, outage_rng))
            try:
                await client.run()
            finally:
                if outages is not None:
                    outages.cancel()
        except Exception as exc:  # one vehicle's bug must not end the fleet: it is reported
            self.crashed[record.vin] = f"{type(exc).__name__}: {exc}"

    async def _outages(self, link: NetworkLink, rng: random.Random) -> None:
        """A flaky vehicle: online for a while, then off the network for a while, again."""
        scale = self.options.time_scale
        low, high = self.options.offline_s
        while True:
            if await self._wait(rng.expovariate(1 / self.options.online_mean_s) * scale):
                return
            link.online = False
            stopped = await self._wait(rng.uniform(low, high) * scale)
            link.online = True
            if stopped:
                return

    async def _wait(self, seconds: float) -> bool:
        """Wait `seconds` (real); True when the fleet is stopping."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))
        return self._stop.is_set()

    async def _watch(
        self,
        tasks: list[asyncio.Task[None]],
        stop_when: Callable[[FleetProgress], bool] | None,
        live: Live | None,
    ) -> None:
        deadline = self.options.duration_s
        while True:
            progress = self.progress()
            if live is not None:
                live.update(render(progress))
            if self._stop is not None and self._stop.is_set():
                return
            if deadline is not None and progress.elapsed_s >= deadline:
                self.stop(f"ran for {deadline:g} s")
            elif all(t.done() for t in tasks):
                self.stop("every vehicle ended")
            elif stop_when is not None and await self._asks_to_stop(stop_when, progress):
                self.stop("the stop condition was met")
            else:
                await self._wait(WATCH_EVERY_S)

    async def _asks_to_stop(
        self, stop_when: Callable[[FleetProgress], bool], progress: FleetProgress
    ) -> bool:
        try:
            return await asyncio.to_thread(stop_when, progress)
        except Exception as exc:  # the caller's bug ends the run, saying so
            self.stop(f"the stop condition failed: {type(exc).__name__}: {exc}")
            return True

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Let the vehicles unwind at their next wait; cut off what is still running after
        `GRACE_S` (a request to a server that went away)."""
        _, pending = await asyncio.wait(tasks, timeout=GRACE_S) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    @contextlib.contextmanager
    def _live(self) -> Iterator[Live | None]:
        if not self.options.live:
            yield None
            return
        with Live(render(self.progress()), console=self.console, refresh_per_second=2) as live:
            yield live


def render(progress: FleetProgress) -> Table:
    """The live summary: vehicles per phase and what the fleet has done so far."""
    table = Table(
        title=f"simulated fleet: {progress.vehicles} vehicles, {progress.elapsed_s:.0f} s",
        show_header=False,
    )
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for phase in Phase:
        if progress.phases.get(phase.value):
            table.add_row(phase.value, str(progress.phases[phase.value]))
    t = progress.totals
    table.add_section()
    for label, value in (
        ("accepted / postponed / declined", f"{t.accepted} / {t.postponed} / {t.declined}"),
        ("downloads (resumed)", f"{t.downloads} ({t.resumed_downloads})"),
        ("ECU images installed", str(t.installs)),
        ("rolled back", str(t.rollbacks)),
        ("failed (verification)", f"{t.failures} ({t.verification_failures})"),
        ("polls (answered 304)", f"{t.polls} ({t.not_modified})"),
        ("events / manifests sent", f"{t.events_sent} / {t.manifests_sent}"),
        ("retries", str(t.retries)),
        ("errors", str(t.errors + progress.crashed)),
    ):
        table.add_row(label, value)
    return table


def run_fleet(
    records: Iterable[ProvisioningRecord],
    base_url: str,
    options: FleetOptions | None = None,
    *,
    stop_when: Callable[[FleetProgress], bool] | None = None,
    console: Console | None = None,
) -> FleetResult:
    """Run a fleet in a new event loop until it stops (see `Fleet.run`)."""
    return asyncio.run(Fleet(records, base_url, options, console=console).run(stop_when))
