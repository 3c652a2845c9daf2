"""`otacm bench fleet`: a simulated fleet completes a campaign against one server.

The whole mission as `otacm demo` runs it (a generated fleet imported, `otacm serve` in its own
process, an update defined, uploaded and released, a campaign created, approved and launched in
waves), but every imported vehicle is simulated, the update is one every vehicle can take (the
gateway ECU, fitted to all of them), and the simulated fleet is split over several processes
(`otacm.simulator.fleet.run_sharded`), since one process verifies TUF metadata, checks Ed25519
signatures and decrypts images for its vehicles on one core.

The vehicles misbehave as real ones do: owners decline, installs fail their health check and
fall back (and are retried), vehicles drop off the network, downloads break midway, and answers
of the vehicle API are lost after the server acted on the request, so that the same event
really reaches the server twice. The run ends when the campaign completes; then the server's
records are checked against what the simulated vehicles did:

- every event a vehicle sent and had acknowledged has its receipt (none lost), no receipt
  names an event no vehicle sent, and the deployments' history holds exactly one move per
  applied receipt (a resent event counted once);
- the campaign's tallies equal its deployment rows counted by state, and so does what the
  operator API shows;
- no deployment is left unfinished or waiting for a retry;
- every deployment's state is the vehicle's own last word on its last attempt, and every
  ECU's version in the registry is the version the simulated ECU runs;
- no simulated vehicle crashed, and (with lost answers on) events were really resent.

A failed check is reported as FAILED and makes the command exit with status 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

from otacm import demo
from otacm.bench.common import Report, Result, console, scratch_postgres_database
from otacm.campaigns.models import Deployment, DeploymentEventRecord, DeploymentTally
from otacm.campaigns.states import TERMINAL, VEHICLE_EVENTS
from otacm.config import Settings
from otacm.db import make_engine, upgrade
from otacm.fleet.models import Ecu, Vehicle
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.simulator import client
from otacm.simulator.fleet import FleetOptions, FleetProgress, FleetResult, run_sharded
from otacm.simulator.vehicle import Consent, DrivingPattern
from otacm.updates import versions
from otacm.updates.samples import sample_update
from otacm.vehicle_api.models import VehicleEventReceipt

# Every generated vehicle has a gateway, always on Ethernet: an update for it can reach all.
TARGET_ECU = "GATEWAY"
TARGET_PROTOCOL = "ETHERNET"
VERSION = "90.0.0"
# Real seconds per simulated second: installs of minutes take seconds, and so do outages.
TIME_SCALE = 0.01
PROGRESS_EVERY_S = 15.0
ASK_SERVER_EVERY_S = 2.0
# The vehicle's last word on an attempt -> the deployment state it must have led to.
EXPECTED_STATE = {
    client.DONE: "succeeded",
    client.FAILED: "failed",
    client.ROLLED_BACK: "rolled_back",
    Consent.DECLINE.value: "declined",
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class FleetBench:
    report: Report
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        self.report.facts[f"check: {name}"] = f"{'ok' if ok else 'FAILED'}: {detail}"
        console.print(f"  check {name}: {'ok' if ok else '[red]FAILED[/]'}: {detail}")


@dataclass(frozen=True)
class BenchOptions:
    vehicles: int = 10_000
    seed: int = 7
    processes: int = 2  # simulator processes
    workers: int = 2  # `otacm serve --workers`
    postgres_url: str | None = None  # administrative URL; None: SQLite in work_dir
    work_dir: Path = Path("bench-data/fleet")
    timeout_s: float = 1800.0  # real seconds the campaign may take before the run fails
    poll_idle_s: float = 120.0  # real seconds between idle polls
    poll_active_s: float = 2.0  # real seconds between polls with a deployment in flight
    start_rate: float = 50.0  # vehicles started per real second, over all processes
    lost_answer_rate: float = 0.02
    failure_rate: float = 0.05
    decline_rate: float = 0.01
    offline_rate: float = 0.05
    interruption_rate: float = 0.05
    firmware_bytes: int = 32 * 1024
    cpu_slots: int = 8  # per simulator process: TUF refreshes wait on the server, mostly
    work_slots: int = 150  # per simulator process: vehicles acting on an offer at once
    keep_work_dir: bool = False  # keep the run's directory (server data, vehicles) afterwards


def run(options: BenchOptions, command: str) -> FleetBench:
    database = "PostgreSQL" if options.postgres_url else "SQLite"
    bench = FleetBench(
        Report(
            f"Fleet simulation: {options.vehicles:,} vehicles complete one campaign "
            f"({database}, {options.workers} server worker(s), "
            f"{options.processes} simulator process(es))",
            command,
        )
    )
    options.work_dir.mkdir(parents=True, exist_ok=True)
    # A directory of its own: two runs side by side never share keys or vehicles.
    here = replace(options, work_dir=Path(tempfile.mkdtemp(prefix="run-", dir=options.work_dir)))
    try:
        with _database(here) as (engine, url):
            _run(bench, here, engine, url)
    finally:
        if not options.keep_work_dir:
            shutil.rmtree(here.work_dir, ignore_errors=True)
    return bench


@contextlib.contextmanager
def _database(options: BenchOptions) -> Iterator[tuple[Engine, str]]:
    if options.postgres_url:
        with scratch_postgres_database(options.postgres_url, "otacm_bench_fleet") as engine:
            yield engine, engine.url.render_as_string(hide_password=False)
        return
    url = f"sqlite:///{(options.work_dir / 'otacm.db').as_posix()}"
    engine = make_engine(url)
    try:
        yield engine, url
    finally:
        engine.dispose()


def _settings(options: BenchOptions, url: str) -> Settings:
    """The server's clock in simulated seconds: the vehicles scale every `Poll-After` by
    `TIME_SCALE`, so a period of `poll_idle_s` real seconds is `poll_idle_s / TIME_SCALE`
    on the server. The engine looks every second, so waves open as soon as they may."""
    return Settings(
        data_dir=options.work_dir / "server",
        database_url=url,
        engine_interval=timedelta(seconds=1),
        notification_interval=timedelta(seconds=5),
        maintenance_interval=timedelta(minutes=5),
        vehicle_poll_idle=timedelta(seconds=options.poll_idle_s / TIME_SCALE),
        vehicle_poll_active=timedelta(seconds=options.poll_active_s / TIME_SCALE),
        vehicle_poll_jitter=0.3,
    )


def _run(bench: FleetBench, options: BenchOptions, engine: Engine, url: str) -> None:
    settings = _settings(options, url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    upgrade(engine)
    _, tokens = demo._operators(engine)
    initialise_keys_and_repository(settings, root_passphrase=None, engine=engine)
    demo._import_fleet(engine, settings, options.vehicles, options.seed)
    body = _update_for_everyone(engine)
    port = demo._free_port(0)
    base = f"http://127.0.0.1:{port}"
    engine.dispose()
    with demo._server_process(settings, port, options.workers) as server:
        with demo._client(base, tokens[demo.DEMO_ADMIN]) as api:
            update = demo._publish(api, body, "gateway.bin", options.firmware_bytes)
            eligible = demo._preview(api, int(update["id"]), {})
        if eligible == 0:
            raise RuntimeError("no vehicle of the generated fleet is eligible")
        cid = demo._launch(
            base, tokens, int(update["id"]), eligible, _campaign_body(int(update["id"]))
        )
        records = demo._provision_json(engine, cid, 1)
        setup_s = time.monotonic() - started
        cpu_before = _cpu_ticks(server.pid, url)
        watch = _Watch(base, tokens[demo.DEMO_ADMIN], cid, options.timeout_s)
        result = run_sharded(
            records, base, _fleet_options(options), processes=options.processes,
            stop_when=watch,
        )  # fmt: skip
        server_cpu, database_cpu = _cpu_seconds(cpu_before, _cpu_ticks(server.pid, url))
        with demo._client(base, tokens[demo.DEMO_ADMIN]) as api:
            campaign = demo._ok(api.get(f"/api/v1/campaigns/{cid}"))
    _report(bench, options, engine, cid, campaign, result, watch, len(records))
    bench.report.facts["setup (import, keys, release, launch, credentials)"] = f"{setup_s:.0f} s"
    # PostgreSQL's backends are not the server's children: those serving the run's database
    # at both readings are counted, a lower bound when the pools opened new connections.
    bench.report.facts["CPU seconds: server / simulators / database (at least)"] = (
        f"{server_cpu:.0f} / {result.cpu_s or 0:.0f} / "
        + (f"{database_cpu:.0f}" if database_cpu is not None else "n/a (SQLite, in the server)")
    )
    _verify(bench, options, engine, cid, campaign, result)


def _update_for_everyone(engine: Engine) -> dict[str, Any]:
    """An update of the gateway that every vehicle of the registry can take: its models,
    years, fuels, hardware and installed versions are the registry's own."""
    with engine.connect() as conn:
        models = sorted(conn.scalars(select(Vehicle.model).distinct()))
        fuels = sorted(conn.scalars(select(Vehicle.fuel_type).distinct()))
        low, high = conn.execute(
            select(func.min(Vehicle.model_year), func.max(Vehicle.model_year))
        ).one()
        gateways = select(Ecu).where(Ecu.ecu_type == TARGET_ECU, Ecu.removed_at.is_(None))
        parts = sorted(
            conn.scalars(gateways.with_only_columns(Ecu.hardware_part_number).distinct())
        )
        hardware = sorted(conn.scalars(gateways.with_only_columns(Ecu.hardware_version).distinct()))
        installed = list(conn.scalars(gateways.with_only_columns(Ecu.software_version).distinct()))
    ordered = sorted(installed, key=versions.version_key)
    return sample_update(
        name="Gateway diagnostics fix (fleet benchmark)",
        version=VERSION,
        ecu_type=TARGET_ECU,
        software_part_number="3Q0907530ZZ",
        protocol=TARGET_PROTOCOL,
        confidential=True,
        compatible_models=models,
        model_year_min=low,
        model_year_max=high,
        fuel_types=fuels,
        hardware_part_numbers=parts,
        hardware_versions=hardware,
        applicable_version_min=ordered[0],
        applicable_version_max=ordered[-1],
        dependencies=[],
        rollback_version=ordered[0],
        estimated_install_minutes=5,
        # A parked car below 30 % is at a charger (`DrivingPattern`), so a car waits for
        # 25 % minutes, not hours: the run measures the server, not flat batteries.
        preconditions={"parked": True, "ignition_off": True, "min_battery_percent": 25},
    )


def _campaign_body(update_id: int) -> dict[str, Any]:
    """The demo's campaign, for the whole fleet, with waves that advance within seconds.
    Owners never postpone here (see `_fleet_options`)."""
    body = demo._campaign_body(update_id)
    body["name"] = "Gateway diagnostics fix, whole fleet (benchmark)"
    body["selection"] = {}
    body["rollout"] = {
        "waves": {
            "steps": [{"percent": 1}, {"percent": 10}, {"percent": 100}],
            "soak_time": "PT2S",
            "success_threshold_percent": 80,
            "failure_threshold_percent": 30,
            "failure_min_finished": 10,
        },
        "retries": {
            "max_attempts": 3,
            "retry_on": ["health_check_failed", "download_failed", "network_error", "timed_out"],
            "backoff_base": "PT2S",
            "backoff_cap": "PT10S",
        },
        # Far above what a vehicle needs even on a loaded machine: a timeout here would be
        # the server giving up on a vehicle that is merely slow, not what is measured.
        "timeouts": {"in_progress": "PT15M"},
    }
    return body


def _fleet_options(options: BenchOptions) -> FleetOptions:
    return FleetOptions(
        failure_rate=options.failure_rate,
        # The server offers a postponed update again only after an hour of real time, which
        # would hold the campaign open for that long: nobody postpones in this run.
        postpone_rate=0.0,
        decline_rate=options.decline_rate,
        offline_rate=options.offline_rate,
        offline_s=(60.0, 300.0),
        online_mean_s=1800.0,
        interruption_rate=options.interruption_rate,
        lost_answer_rate=options.lost_answer_rate,
        install_s=(60.0, 300.0),
        # One progress report per download rather than three: each is a request and a
        # transaction on the server, and one is enough to exercise them.
        progress_events=1,
        time_scale=TIME_SCALE,
        seed=options.seed,
        work_dir=options.work_dir / "vehicles",
        live=False,
        start_rate=options.start_rate,
        max_connections=32,
        cpu_slots=options.cpu_slots,
        work_slots=options.work_slots,
        # Short trips and charged batteries: most cars meet the preconditions within seconds.
        driving=DrivingPattern(
            mean_trip_s=300.0,
            mean_stop_s=4 * 3600.0,
            plugged_in=0.5,
            battery_at_start=(50.0, 100.0),
        ),
    )


class _Watch:
    """The fleet's stop condition: the campaign has ended (completed, or paused or cancelled,
    which the checks then report), or time is up. Prints the progress now and then."""

    def __init__(self, base: str, token: str, campaign_id: int, timeout_s: float) -> None:
        self.base, self.token, self.campaign_id = base, token, campaign_id
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.asked = self.printed = 0.0
        self.campaign: dict[str, Any] = {}
        self.ended_after: float | None = None
        self.reason = ""

    def __call__(self, progress: FleetProgress) -> bool:
        now = time.monotonic()
        if now - self.asked >= ASK_SERVER_EVERY_S:
            self.asked = now
            with (
                contextlib.suppress(httpx.HTTPError, RuntimeError),
                demo._client(self.base, self.token) as api,
            ):
                self.campaign = demo._ok(api.get(f"/api/v1/campaigns/{self.campaign_id}"))
        state = self.campaign.get("state", "")
        if now - self.printed >= PROGRESS_EVERY_S:
            self.printed = now
            t = progress.totals
            console.print(
                f"  {now - self.started:6.0f} s  campaign {state}: {self.campaign.get('states')}"
                f"  fleet: {t.polls:,} polls, {t.events_sent:,} events ({t.events_resent:,} "
                f"resent), {t.installs:,} installs, phases {progress.phases}"
            )
        if state in ("completed", "cancelled", "failed", "paused"):
            self.reason = f"the campaign is {state}"
        elif now - self.started > self.timeout_s:
            self.reason = f"time is up ({self.timeout_s:g} s)"
        else:
            return False
        self.ended_after = now - self.started
        return True


# --- measures ---------------------------------------------------------------------------


def _report(
    bench: FleetBench,
    options: BenchOptions,
    engine: Engine,
    cid: int,
    campaign: dict[str, Any],
    result: FleetResult,
    watch: _Watch,
    simulated: int,
) -> None:
    t = result.totals
    took = watch.ended_after or result.elapsed_s
    deployments = sum(campaign.get("states", {}).values())
    with engine.connect() as conn:
        recorded = conn.scalar(
            select(func.count())
            .select_from(VehicleEventReceipt)
            .join(Deployment, Deployment.id == VehicleEventReceipt.deployment_id)
            .where(Deployment.campaign_id == cid)
        )
    report = bench.report
    report.add(
        Result(
            "campaign: fleet start to completed", took, deployments, unit="deployments",
            note=f"ended because {watch.reason or result.stopped_because}",
        )
    )  # fmt: skip
    report.add(Result("vehicle polls served", result.elapsed_s, t.polls, unit="polls"))
    report.add(Result("deployment events recorded", took, recorded, unit="events"))
    report.facts["vehicles simulated / in the campaign"] = f"{simulated:,} / {deployments:,}"
    report.facts["deployments by state"] = ", ".join(
        f"{k} {v:,}" for k, v in sorted(campaign.get("states", {}).items())
    )
    report.facts["events: sent / resent / recorded"] = (
        f"{sum(1 for _ in _sent(result)):,} / {t.events_resent:,} / {recorded:,} "
        f"(the server acknowledged {t.duplicates_acknowledged:,} as duplicates; "
        f"{t.answers_lost:,} answers lost on the way back)"
    )
    report.facts["fleet"] = (
        f"{t.installs:,} installs, {t.rollbacks:,} fall-backs, {t.failures:,} failures, "
        f"{t.declined:,} declines, {t.downloads:,} downloads ({t.resumed_downloads:,} "
        f"resumed), {t.manifests_sent:,} manifests, {t.retries:,} retried requests"
    )
    report.facts["server"] = (
        f"otacm serve --workers {options.workers}; vehicles poll every {options.poll_idle_s:g} "
        f"s idle, {options.poll_active_s:g} s with a deployment in flight (real seconds)"
    )


def _cpu_ticks(server_pid: int, url: str) -> dict[int, int]:
    """CPU clock ticks so far of the server's processes (the pid and its descendants), and
    of the PostgreSQL backends serving the benchmark's database (negative keys)."""
    ticks: dict[int, int] = {}
    todo = [server_pid]
    while todo:
        pid = todo.pop()
        ticks[pid] = _ticks(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    name = url.rsplit("/", 1)[-1].encode()
    if url.startswith("postgresql"):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                title = (entry / "cmdline").read_bytes()
                if title.startswith(b"postgres: ") and b" " + name + b" " in title:
                    ticks[-int(entry.name)] = _ticks(int(entry.name))
    return ticks


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _cpu_seconds(before: dict[int, int], after: dict[int, int]) -> tuple[float, float | None]:
    """Server and database CPU seconds between the two readings (a process that ended in
    between is not counted; the server's workers live as long as the run)."""
    hz = os.sysconf("SC_CLK_TCK")
    server = sum(v - before.get(pid, 0) for pid, v in after.items() if pid > 0) / hz
    backends = [v - before.get(pid, 0) for pid, v in after.items() if pid < 0]
    return server, (sum(backends) / hz if backends else None)


# --- checks -----------------------------------------------------------------------------


def _sent(result: FleetResult) -> Iterator[Any]:
    """Every event that left a vehicle at least once."""
    for vehicle in result.vehicles.values():
        for event in vehicle.events:
            if event.sends > 0:
                yield event


def _verify(
    bench: FleetBench,
    options: BenchOptions,
    engine: Engine,
    cid: int,
    campaign: dict[str, Any],
    result: FleetResult,
) -> None:
    in_campaign = Deployment.campaign_id == cid
    with engine.connect() as conn:
        receipts = {
            (d, e): (name, outcome)
            for d, e, name, outcome in conn.execute(
                select(
                    VehicleEventReceipt.deployment_id,
                    VehicleEventReceipt.event_id,
                    VehicleEventReceipt.event,
                    VehicleEventReceipt.outcome,
                )
                .join(Deployment, Deployment.id == VehicleEventReceipt.deployment_id)
                .where(in_campaign)
            )
        }
        vehicle_moves = Counter(
            dict(
                conn.execute(
                    select(DeploymentEventRecord.event, func.count())
                    .where(
                        DeploymentEventRecord.campaign_id == cid,
                        DeploymentEventRecord.event.in_([e.value for e in VEHICLE_EVENTS]),
                    )
                    .group_by(DeploymentEventRecord.event)
                ).all()
            )
        )
        rows_by_state = Counter(
            dict(
                conn.execute(
                    select(Deployment.state, func.count())
                    .where(in_campaign)
                    .group_by(Deployment.state)
                ).all()
            )
        )
        tallied = Counter(
            dict(
                conn.execute(
                    select(DeploymentTally.state, func.sum(DeploymentTally.delta))
                    .where(DeploymentTally.campaign_id == cid)
                    .group_by(DeploymentTally.state)
                ).all()
            )
        )
        unfinished = conn.scalar(
            select(func.count())
            .select_from(Deployment)
            .where(
                in_campaign,
                Deployment.state.not_in([s.value for s in TERMINAL])
                | Deployment.next_attempt_at.is_not(None),
            )
        )
        deployments = conn.execute(
            select(Vehicle.vin, Deployment.id, Deployment.attempts, Deployment.state)
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(in_campaign)
        ).all()
        registry = dict(
            conn.execute(
                select(Ecu.serial, Ecu.software_version).where(Ecu.removed_at.is_(None))
            ).all()
        )
    engine.dispose()

    sent = {(e.deployment_id, e.event_id): e for e in _sent(result)}
    acknowledged = {k for k, e in sent.items() if e.acknowledged}
    lost = acknowledged - receipts.keys()
    unknown = receipts.keys() - sent.keys()
    bench.check(
        "no acknowledged event lost",
        not lost,
        f"{len(acknowledged):,} acknowledged events, {len(lost):,} without a receipt"
        + (f", e.g. {sorted(lost)[:3]}" if lost else ""),
    )
    bench.check(
        "no event recorded that no vehicle sent",
        not unknown,
        f"{len(receipts):,} receipts, {len(unknown):,} of unknown events",
    )
    applied = Counter(name for name, outcome in receipts.values() if outcome == "applied")
    bench.check(
        "each event applied at most once",
        applied == vehicle_moves,
        f"{sum(applied.values()):,} receipts applied, {sum(vehicle_moves.values()):,} moves "
        "by vehicle events in the deployments' history"
        + ("" if applied == vehicle_moves else f": {dict(applied)} vs {dict(vehicle_moves)}"),
    )
    resent = [e for e in sent.values() if e.sends > 1]
    # A receipt is unique by (deployment, event id), so "recorded" here is "recorded once";
    # that it was applied once is the history check above.
    resent_recorded = sum(1 for e in resent if (e.deployment_id, e.event_id) in receipts)
    resent_acknowledged = sum(1 for e in resent if e.acknowledged)
    duplicates = sum(1 for e in resent if e.outcome == "duplicate")
    bench.check(
        "resent events counted once",
        (bool(resent) or options.lost_answer_rate == 0) and resent_recorded >= resent_acknowledged,
        f"{len(resent):,} events sent more than once ({sum(e.sends - 1 for e in resent):,} "
        f"resends), {resent_recorded:,} of them with their one receipt, {duplicates:,} "
        "answered as duplicates",
    )
    api_states = Counter({k: v for k, v in campaign.get("states", {}).items() if v})
    rows = +rows_by_state
    bench.check(
        "tallies equal the deployment rows",
        +tallied == rows and api_states == rows,
        f"rows {dict(rows)}"
        + ("" if +tallied == rows else f"; tallies {dict(+tallied)}")
        + ("" if api_states == rows else f"; operator API {dict(api_states)}"),
    )
    bench.check(
        "campaign completed, nothing left unfinished",
        campaign.get("state") == "completed" and unfinished == 0,
        f"campaign {campaign.get('state')}, {unfinished:,} deployments unfinished or awaiting "
        "a retry",
    )
    wrong_state = []
    for vin, deployment_id, attempts, state in deployments:
        vehicle = result.vehicles.get(vin)
        word = vehicle.outcomes.get(f"{deployment_id}/{attempts + 1}") if vehicle else None
        if EXPECTED_STATE.get(word or "") != state:
            wrong_state.append(f"{vin}: server {state}, vehicle {word}")
    bench.check(
        "deployment states equal the vehicles' truth",
        not wrong_state,
        f"{len(deployments) - len(wrong_state):,} of {len(deployments):,} match"
        + (f"; e.g. {wrong_state[:3]}" if wrong_state else ""),
    )
    wrong_ecus = sorted(
        vin
        for vin, vehicle in result.vehicles.items()
        if any(registry.get(serial) != version for serial, version in vehicle.installed.items())
    )
    running = sum(1 for v in result.vehicles.values() if VERSION in v.installed.values())
    bench.check(
        "ECU versions equal the vehicles' truth",
        not wrong_ecus and running == rows.get("succeeded", 0),
        f"{len(result.vehicles) - len(wrong_ecus):,} of {len(result.vehicles):,} vehicles as "
        f"recorded; {running:,} run {VERSION}, {rows.get('succeeded', 0):,} deployments "
        "succeeded" + (f"; different: {wrong_ecus[:5]}" if wrong_ecus else ""),
    )
    bench.check(
        "no simulated vehicle crashed",
        not result.crashed,
        f"{len(result.crashed):,} crashed"
        + (f": {list(result.crashed.items())[:3]}" if result.crashed else ""),
    )
