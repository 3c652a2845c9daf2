"""A simulated fleet: many reference clients at once against one server.

`run_fleet(records, base_url, options, stop_when=...)` runs one `VehicleClient` per provisioning
record in one asyncio event loop and returns a `FleetResult`: per vehicle, what its ECUs really
run and what happened to it, so that a test or `otacm demo` can compare the server's view with
the truth vehicle by vehicle. `Fleet` is the same with a handle: `stop()` from any thread,
`progress()` at any time. `run_sharded` splits a fleet too large for one core over several
processes and merges their results.

The knobs (`FleetOptions`) make the fleet behave like a real one: owners who postpone or
decline, installs that fail and fall back, vehicles that drop off the network for a while,
downloads cut in the middle, answers lost after the server acted (the request is sent again),
all on a compressed clock (`time_scale`). Vehicles start spread at `start_rate` a second, so
that a thousand of them do not arrive in the same moment; they share one HTTP connection pool
and a small number of threads for the CPU work (TUF, hashing, decryption), so the fleet's cost
grows with what vehicles do, not with how many there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
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
    lost_answer_rate: float = 0.0  # vehicle API answers lost after the server acted (resent)
    install_s: tuple[float, float] = (60.0, 600.0)  # simulated seconds to write one image
    progress_events: int = 3  # download_progress events per deployment
    driving: DrivingPattern = DrivingPattern()  # how often cars are parked, charged, driven
    time_scale: float = 0.01  # real seconds per simulated second
    duration_s: float | None = None  # real seconds; None: until stop_when or stop()
    seed: int | None = None  # the same seed, the same owners and failures
    work_dir: Path = Path("otacm-data/simulator")  # one directory per vehicle below
    cpu_slots: int = 2  # TUF refreshes, hashing and decryption at once
    # Vehicles acting on an offer at once (None: no limit); the others wait their turn. The
    # fleet shares one connection pool: without a limit, a wave of thousands queues each
    # vehicle's later requests behind everyone's first, and none finishes for minutes.
    work_slots: int | None = None
    max_connections: int = 100  # HTTP connections to the server at once
    start_rate: float | None = 200.0  # vehicles started per real second; None: all at once
    language: str | None = None  # Accept-Language of every owner
    live: bool = True  # a live Rich summary while running

    def __post_init__(self) -> None:
        for name in ("failure_rate", "offline_rate", "interruption_rate", "lost_answer_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability between 0 and 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.start_rate is not None and self.start_rate <= 0:
            raise ValueError("start_rate must be positive (or None: all at once)")
        if self.progress_events < 0:
            raise ValueError("progress_events must not be negative")
        if self.cpu_slots < 1 or self.max_connections < 1:
            raise ValueError("cpu_slots and max_connections must be at least 1")
        if self.work_slots is not None and self.work_slots < 1:
            raise ValueError("work_slots must be at least 1 (or None: no limit)")
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
            progress_events=self.progress_events,
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
    # CPU seconds the simulating processes spent (user + system), when measured: by
    # `run_sharded` for its own processes, which do nothing else.
    cpu_s: float | None = None

    def installed_versions(self) -> dict[str, str]:
        """ECU serial -> the version it really runs, over the whole fleet."""
        return {s: v for report in self.vehicles.values() for s, v in report.installed.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "stopped_because": self.stopped_because,
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": self.cpu_s,
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
        slots = self.options.work_slots
        work = asyncio.Semaphore(slots) if slots else None
        # `to_thread` runs on the loop's default executor, a handful of threads on a small
        # machine: enough for every CPU slot, or the slots would wait on threads instead.
        self._loop.set_default_executor(
            ThreadPoolExecutor(self.options.cpu_slots + 2, thread_name_prefix="otacm-fleet")
        )
        rate = self.options.start_rate
        spread = 1 / rate if rate else 0.0
        tasks = [
            asyncio.create_task(
                self._vehicle(record, i * spread, http, downloads, tuf_http, cpu, work)
            )
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
        work: asyncio.Semaphore | None,
    ) -> None:
        assert self._stop is not None
        seed = self.options.seed
        seeds = random.Random(f"{seed}:{record.vin}") if seed is not None else random.Random()
        # Separate streams, drawn before anything depends on timing (see VehicleClient).
        client_rng, outage_rng, retry_rng = (random.Random(seeds.getrandbits(64)) for _ in "abc")
        # Drawn after the others, so that a seed gives the same owners and outages as before.
        loss_rng = random.Random(seeds.getrandbits(64))
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
            link = NetworkLink(self.options.lost_answer_rate, loss_rng)
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
                work_slots=work,
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


def merge_progress(parts: Iterable[FleetProgress]) -> FleetProgress:
    """One look at a fleet run in several processes, from each one's latest look."""
    looks = list(parts)
    phases: Counter[str] = Counter()
    for look in looks:
        phases.update(look.phases)
    return FleetProgress(
        elapsed_s=max((p.elapsed_s for p in looks), default=0.0),
        vehicles=sum(p.vehicles for p in looks),
        phases=dict(phases),
        totals=sum_tallies(p.totals for p in looks),
        crashed=sum(p.crashed for p in looks),
    )


def merge_results(parts: Iterable[FleetResult]) -> FleetResult:
    """The result of a fleet run in several processes: every vehicle once, totals summed."""
    results = list(parts)
    reasons = list(dict.fromkeys(r.stopped_because for r in results))
    cpu = [r.cpu_s for r in results]
    return FleetResult(
        vehicles={vin: v for r in results for vin, v in r.vehicles.items()},
        totals=sum_tallies(r.totals for r in results),
        elapsed_s=max((r.elapsed_s for r in results), default=0.0),
        stopped_because="; ".join(reasons),
        crashed={vin: why for r in results for vin, why in r.crashed.items()},
        cpu_s=None if None in cpu else sum(c for c in cpu if c is not None),
    )


def run_sharded(
    records: Sequence[Mapping[str, Any]],
    base_url: str,
    options: FleetOptions | None = None,
    *,
    processes: int = 2,
    stop_when: Callable[[FleetProgress], bool] | None = None,
) -> FleetResult:
    """Run a fleet split over `processes` processes and merge what they return.

    One process verifies, hashes and decrypts for its vehicles on one core; a fleet larger
    than one core can simulate is split, every `processes`-th record to each, so that all of
    them see every wave. `records` are provisioning records as JSON objects (the lines of a
    credentials file): the keys in a parsed record do not cross a process boundary.
    `stop_when` is asked in this process, about twice a second, with the merged progress;
    `start_rate` is shared out, `cpu_slots` and `max_connections` are per process, and the
    live display is off (each process would draw its own).
    """
    options = options or FleetOptions()
    if processes < 1:
        raise ValueError("processes must be at least 1")
    chosen = list(records if options.vehicles is None else records[: options.vehicles])
    processes = max(1, min(processes, len(chosen)))
    rate = options.start_rate
    shard_options = replace(
        options,
        vehicles=None,
        live=False,
        start_rate=rate / processes if rate else None,
    )
    # Spawned, not forked: the caller may hold threads and connections a fork would copy.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    messages: Any = context.Queue()
    workers = [
        context.Process(
            target=_shard,
            args=(i, chosen[i::processes], base_url, shard_options, stop, messages),
            name=f"otacm-fleet-{i}",
            daemon=True,
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    latest: dict[int, FleetProgress] = {}
    results: dict[int, FleetResult] = {}
    failures: dict[int, str] = {}
    asked = 0.0
    try:
        while len(results) + len(failures) < processes:
            try:
                kind, index, payload = messages.get(timeout=WATCH_EVERY_S)
            except KeyboardInterrupt:  # Ctrl-C: the fleet stops, and what it did is kept
                stop.set()
                continue
            except queue.Empty:
                for i, worker in enumerate(workers):
                    if i not in results and i not in failures and not worker.is_alive():
                        failures[i] = f"process {worker.name} ended with {worker.exitcode}"
            else:
                if kind == "progress":
                    latest[index] = payload
                elif kind == "result":
                    results[index] = payload
                else:
                    failures[index] = str(payload)
            now = time.monotonic()
            if stop_when is not None and not stop.is_set() and now - asked >= WATCH_EVERY_S:
                asked = now
                if latest and stop_when(merge_progress(latest.values())):
                    stop.set()
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=GRACE_S * 3)
            if worker.is_alive():
                worker.terminate()
    if failures:
        raise RuntimeError(f"simulator processes failed: {failures}")
    return merge_results(results[i] for i in range(processes))


def _shard(
    index: int,
    records: list[Mapping[str, Any]],
    base_url: str,
    options: FleetOptions,
    stop: Any,
    messages: Any,
) -> None:
    """One process of `run_sharded`: its records, until the parent says stop."""
    # Ctrl-C reaches every process of the terminal's group: the parent alone decides, so
    # that each process still ends its run and sends its result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        parsed = [ProvisioningRecord.from_json(r) for r in records]
        started = os.times()

        def stop_when(progress: FleetProgress) -> bool:
            messages.put(("progress", index, progress))
            return bool(stop.is_set())

        result = asyncio.run(Fleet(parsed, base_url, options).run(stop_when))
        ended = os.times()
        cpu = (ended.user - started.user) + (ended.system - started.system)
        messages.put(("result", index, replace(result, cpu_s=cpu)))
    except BaseException as exc:  # the parent must hear of it rather than wait for a result
        messages.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        raise


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
