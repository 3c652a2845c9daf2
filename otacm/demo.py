"""`otacm demo`: the whole mission in one command, on an embedded database.

A fresh SQLite registry and signing keys; a demo admin and two campaign managers; a generated
fleet imported with a progress bar; the server on localhost; a confidential software update for
the body control modules defined, uploaded and released through the API; its targeting preview;
a campaign created, approved by the second manager and launched in waves (canary, 10 %, the
rest) with thresholds and retries; every vehicle provisioned with a credential and keys; then
the simulated fleet (`otacm.simulator`, the reference client over HTTP) updates itself while
the terminal shows the campaign's progress as the server sees it. The summary at the end is
the server's, checked vehicle by vehicle against what the simulated ECUs really run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import Engine, select

from otacm.campaigns.states import TERMINAL, DeploymentState
from otacm.config import Settings
from otacm.db import engine_from_settings, make_session_factory, unit_of_work, upgrade, utcnow
from otacm.fleet.generator import write_export
from otacm.fleet.importer import run_import
from otacm.fleet.models import Ecu, Vehicle
from otacm.security import service
from otacm.security.audit import SYSTEM
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.updates.samples import sample_update

DEMO_ADMIN = "demo-admin"
MANAGERS = ("demo-manager", "demo-approver")
# Long enough to see the waves, short enough for the demo's two minutes.
DEMO_TIMEOUT_S = 150
FIRMWARE_BYTES = 256 * 1024
# The campaign's markets: enough vehicles for three waves, few enough for two minutes.
SELECTION = {"regions": ["EU", "NA"]}

console = Console()


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return int(probe.getsockname()[1])  # the port itself, or a free one for 0
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


@contextlib.contextmanager
def _server_process(
    settings: Settings, port: int, workers: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """`otacm serve` in its own process: the simulated fleet in this one would otherwise share
    one interpreter lock with the server it is testing."""
    env = {
        **os.environ,
        "OTACM_DATA_DIR": str(settings.data_dir),
        "OTACM_DATABASE_URL": settings.resolved_database_url(),
        "OTACM_ENGINE_INTERVAL": _iso(settings.engine_interval),
        "OTACM_NOTIFICATION_INTERVAL": _iso(settings.notification_interval),
        "OTACM_MAINTENANCE_INTERVAL": _iso(settings.maintenance_interval),
        "OTACM_VEHICLE_POLL_IDLE": _iso(settings.vehicle_poll_idle),
        "OTACM_VEHICLE_POLL_ACTIVE": _iso(settings.vehicle_poll_active),
        "OTACM_VEHICLE_POLL_JITTER": str(settings.vehicle_poll_jitter),
        "OTACM_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "otacm", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _iso(delta: timedelta) -> str:
    return f"PT{delta.total_seconds():g}S"


def _demo_settings(data_dir: Path) -> Settings:
    """The server as `otacm serve` runs it, on a clock fast enough to watch: vehicles poll
    every few seconds, the rollout engine looks every second."""
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{(data_dir / 'otacm.db').as_posix()}",
        engine_interval=timedelta(seconds=1),
        notification_interval=timedelta(seconds=5),
        maintenance_interval=timedelta(minutes=5),
        vehicle_poll_idle=timedelta(seconds=4),
        vehicle_poll_active=timedelta(seconds=1),
    )


def _operators(engine: Engine) -> tuple[str, dict[str, str]]:
    password = secrets.token_urlsafe(12)
    tokens: dict[str, str] = {}
    with unit_of_work(make_session_factory(engine)) as session:
        service.create_user(session, SYSTEM, DEMO_ADMIN, "admin", password)
        tokens[DEMO_ADMIN] = service.create_token(session, SYSTEM, DEMO_ADMIN, "demo", None).secret
        for name in MANAGERS:
            service.create_user(
                session, SYSTEM, name, "campaign_manager", secrets.token_urlsafe(16)
            )
            tokens[name] = service.create_token(session, SYSTEM, name, "demo", None).secret
    return password, tokens


def _import_fleet(engine: Engine, settings: Settings, vehicles: int, seed: int) -> None:
    # Here rather than at the top: otacm.fleet.cli loads otacm.cli, which loads this module.
    from otacm.fleet.cli import _progress, print_report

    export = Path(tempfile.mkdtemp(prefix="otacm-demo-")) / "fleet.jsonl"
    with export.open("w", encoding="utf-8") as out:
        rows = write_export(out, vehicles, seed, "jsonl")
    console.print(f"generated {vehicles:,} vehicles with {rows:,} ECUs into {export}")
    with (
        _progress("importing", export.stat().st_size, bytes_=True) as (progress, task),
        export.open("rb") as stream,
    ):
        report = run_import(
            engine,
            stream,
            settings=settings,
            source_name=export.name,
            on_batch=lambda _r: progress.update(task, completed=stream.tell()),
        )
        progress.update(task, completed=export.stat().st_size)
    print_report(report)
    shutil.rmtree(export.parent, ignore_errors=True)


def _client(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _ok(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.text}"
        )
    return response.json()


def _release_update(api: httpx.Client) -> dict[str, Any]:
    """A confidential update for the body control modules of the generated fleet's Nordras."""
    body = sample_update(
        name="BCM interior light timeout fix (demo)",
        version="4.2.0",
        confidential=True,
        compatible_models=["Nordra"],
        model_year_min=2019,
        model_year_max=2026,
        fuel_types=["diesel", "petrol", "electric", "hybrid", "plug_in_hybrid", "hydrogen",
                    "cng", "lpg"],
        hardware_part_numbers=["3K0937084", "3K0937085"],
        hardware_versions=["A1", "A2", "B1"],
        applicable_version_min="3.8.0",
        applicable_version_max="4.1.9",
        dependencies=[{"ecu_type": "GATEWAY", "min_version": "7.0.0"}],
        estimated_install_minutes=8,
    )  # fmt: skip
    return _publish(api, body, "bcm-4.2.0.bin", FIRMWARE_BYTES)


def _publish(api: httpx.Client, body: dict[str, Any], filename: str, size: int) -> dict[str, Any]:
    """Define the update `body`, upload `size` random bytes as its file, release it."""
    update = _ok(api.post("/api/v1/updates", json=body))
    firmware = secrets.token_bytes(size)
    _ok(
        api.post(
            f"/api/v1/updates/{update['id']}/artifacts",
            params={"filename": filename, "sha256": hashlib.sha256(firmware).hexdigest()},
            content=firmware,
        )
    )
    released: dict[str, Any] = _ok(api.post(f"/api/v1/updates/{update['id']}/release"))
    console.print(
        f"update {released['id']}: {released['ecu_type']} {released['version']}, "
        f"{len(firmware) // 1024} KiB, encrypted per vehicle, release counter "
        f"{released['release_counter']}, signed into the image repository"
    )
    return released


def _preview(api: httpx.Client, update_id: int, selection: dict[str, Any] | None = None) -> int:
    chosen = SELECTION if selection is None else selection
    preview = _ok(
        api.post("/api/v1/targeting/preview", json={"update_ids": [update_id], "selection": chosen})
    )
    table = Table("reason", "vehicles", title="targeting preview: who gets it, and why not")
    for reason in preview["reasons"]:
        table.add_row(reason["reason"], f"{reason['vehicles']:,}")
    console.print(table)
    eligible = int(preview["vehicles_eligible"])
    console.print(f"{eligible:,} of {preview['vehicles_selected']:,} vehicles are eligible")
    return eligible


def _campaign_body(update_id: int) -> dict[str, Any]:
    return {
        "name": "BCM 4.2.0 interior light fix",
        "category": "bug_fix",
        "urgency": "immediate",
        "priority": 500,
        "update_ids": [update_id],
        "selection": SELECTION,
        "user_notice": {
            "en": {
                "purpose": "Fixes the interior light staying on after the doors lock.",
                "what_changes": "The body control module switches the light off on time.",
                "expected_duration_minutes": 8,
                "functions_unavailable": ["central locking", "interior lights"],
                "instructions": "Park the vehicle and switch the ignition off.",
            },
            "de": {
                "purpose": "Behebt, dass das Innenlicht nach dem Verriegeln anbleibt.",
                "what_changes": "Das Karosseriesteuergerät schaltet das Licht rechtzeitig aus.",
                "expected_duration_minutes": 8,
                "functions_unavailable": ["Zentralverriegelung", "Innenlicht"],
                "instructions": "Fahrzeug abstellen und Zündung ausschalten.",
            },
        },
        "rollout": {
            "waves": {
                "steps": [{"count": 10}, {"percent": 10}, {"percent": 100}],
                "soak_time": "PT3S",
                "success_threshold_percent": 80,
                "failure_threshold_percent": 30,
                "failure_min_finished": 10,
            },
            "retries": {
                "max_attempts": 3,
                "retry_on": [
                    "health_check_failed",
                    "download_failed",
                    "network_error",
                    "timed_out",
                ],
                "backoff_base": "PT2S",
                "backoff_cap": "PT10S",
            },
            "timeouts": {"in_progress": "PT2M"},
        },
    }


def _launch(
    base: str,
    tokens: dict[str, str],
    update_id: int,
    expected: int,
    body: dict[str, Any] | None = None,
) -> int:
    """Create the campaign (`body`, or the demo's), submit, approve, launch; its id."""
    with (
        _client(base, tokens[MANAGERS[0]]) as manager,
        _client(base, tokens[MANAGERS[1]]) as second,
    ):
        campaign = _ok(manager.post("/api/v1/campaigns", json=body or _campaign_body(update_id)))
        cid = int(campaign["id"])
        _ok(manager.post(f"/api/v1/campaigns/{cid}/submit"))
        console.print(f"campaign {cid} created and submitted by {MANAGERS[0]}")
        _ok(second.post(f"/api/v1/campaigns/{cid}/approve", json={"comment": "four eyes: ok"}))
        console.print(f"approved by {MANAGERS[1]} (four eyes)")
        launched = _ok(
            manager.post(f"/api/v1/campaigns/{cid}/launch", json={"expected_vehicles": expected})
        )
    sizes = ", ".join(f"wave {w['number']}: {w['size']:,}" for w in launched["waves"])
    console.print(f"launched into {len(launched['waves'])} waves ({sizes})")
    return cid


def _provision(engine: Engine, campaign_id: int) -> list[Any]:
    """`otacm vehicles credentials --all --keys`, in-process: a record per vehicle. The
    simulated fleet is every vehicle of the campaign and every twentieth of the others (idle
    vehicles poll too; all of them would only cost the demo time)."""
    from otacm.simulator.records import ProvisioningRecord

    return [ProvisioningRecord.from_json(r) for r in _provision_json(engine, campaign_id, 20)]


def _provision_json(engine: Engine, campaign_id: int, others_every: int) -> list[dict[str, Any]]:
    """Provisioning records as JSON objects (the lines of a credentials file): every vehicle
    of the campaign, then every `others_every`-th of the rest."""
    from otacm.campaigns.models import Deployment
    from otacm.vehicle_api import credentials

    with unit_of_work(make_session_factory(engine)) as session:
        vehicles = list(session.scalars(select(Vehicle).order_by(Vehicle.id)))
        provisioned = list(credentials.provision(session, SYSTEM, vehicles, utcnow(), keys=True))
        targeted = set(
            session.scalars(
                select(Vehicle.vin)
                .join(Deployment, Deployment.vehicle_id == Vehicle.id)
                .where(Deployment.campaign_id == campaign_id)
            )
        )
    others = [p for p in provisioned if p.vin not in targeted][::others_every]
    chosen = [p for p in provisioned if p.vin in targeted] + others
    console.print(
        f"{len(provisioned):,} vehicles provisioned (a credential, a signing key and an "
        f"encryption key each); simulating the {len(targeted):,} in the campaign and "
        f"{len(others):,} others"
    )
    return [p.as_json() for p in chosen]


def _progress_table(campaign: dict[str, Any], fleet: Any, elapsed: float) -> Group:
    states = ("pending", "offered", "postponed", "accepted", "downloading", "installing",
              "installed", "succeeded", "failed", "rolled_back", "declined")  # fmt: skip
    table = Table(
        "wave", "size", "open", *states, title=f"campaign {campaign['id']}: {campaign['state']}"
    )
    for wave in campaign.get("waves", []):
        counts = wave.get("states", {})
        table.add_row(
            str(wave["number"]),
            f"{wave['size']:,}",
            "done" if wave.get("completed_at") else ("yes" if wave.get("opened_at") else ""),
            *(str(counts.get(s, 0) or "") for s in states),
        )
    progress = campaign.get("progress") or {}
    line = (
        f"{elapsed:5.1f} s   finished {progress.get('finished', 0):,}   remaining "
        f"{progress.get('remaining', 0):,}   failure codes {campaign.get('failure_codes') or {}}"
    )
    if fleet is not None:
        totals = fleet.totals
        line += (
            f"\nsimulated fleet: {totals.polls:,} polls, {totals.downloads:,} verified downloads,"
            f" {totals.installs:,} installs, {totals.rollbacks:,} fall-backs, "
            f"{totals.events_sent:,} events, {totals.manifests_sent:,} manifests"
        )
    return Group(table, line)


def _settled(campaign: dict[str, Any]) -> bool:
    """Every wave open and nothing left in flight: what is left waits on owners (postponed) or
    was refused by them."""
    waves = campaign.get("waves", [])
    if campaign.get("state") in ("completed", "cancelled", "failed"):
        return True
    if not waves or any(w.get("opened_at") is None for w in waves):
        return False
    states = campaign.get("states", {})
    unfinished = sum(n for s, n in states.items() if s not in TERMINAL)
    busy = unfinished - states.get(DeploymentState.POSTPONED, 0)
    # `remaining` counts the unfinished and the failures a retry will come for.
    retries = (campaign.get("progress") or {}).get("remaining", 0) - unfinished
    return bool(busy == 0 and retries <= 0)


def _run_fleet(
    base: str, token: str, cid: int, records: list[Any], work: Path, failure_rate: float
) -> tuple[Any, dict[str, Any], float]:
    from otacm.simulator.fleet import Fleet, FleetOptions
    from otacm.simulator.vehicle import DrivingPattern

    options = FleetOptions(
        failure_rate=failure_rate,
        postpone_rate=0.02,
        decline_rate=0.01,
        offline_rate=0.02,
        offline_s=(60.0, 300.0),
        interruption_rate=0.05,
        install_s=(60.0, 300.0),
        time_scale=0.01,
        seed=7,
        work_dir=work,
        live=False,
        start_rate=400.0,
        max_connections=32,
        # TUF refreshes wait on the network more than they compute: let several overlap.
        cpu_slots=8,
        # Short trips and charged batteries: most cars meet the preconditions within seconds.
        driving=DrivingPattern(
            mean_trip_s=300.0,
            mean_stop_s=4 * 3600.0,
            plugged_in=0.5,
            battery_at_start=(50.0, 100.0),
        ),
    )
    fleet = Fleet(records, base, options, console=console)
    done = threading.Event()
    latest: dict[str, Any] = {}
    started = time.monotonic()

    def watch() -> None:
        with _client(base, token) as api, Live(console=console, refresh_per_second=4) as live:
            while not done.is_set():
                with contextlib.suppress(httpx.HTTPError, RuntimeError):
                    latest.update(_ok(api.get(f"/api/v1/campaigns/{cid}")))
                    live.update(
                        _progress_table(latest, fleet.progress(), time.monotonic() - started)
                    )
                    if _settled(latest) or time.monotonic() - started > DEMO_TIMEOUT_S:
                        fleet.stop("the campaign settled" if _settled(latest) else "time is up")
                        return
                time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    import asyncio

    result = asyncio.run(fleet.run())
    done.set()
    watcher.join(timeout=10)
    return result, latest, time.monotonic() - started


def _compare(engine: Engine, result: Any) -> tuple[int, list[str]]:
    """Vehicles whose ECUs the server records exactly as the simulated ECUs run them."""
    with unit_of_work(make_session_factory(engine)) as session:
        recorded = dict(
            session.execute(
                select(Ecu.serial, Ecu.software_version).where(Ecu.removed_at.is_(None))
            ).all()
        )
    wrong = sorted(
        vin
        for vin, report in result.vehicles.items()
        if any(recorded.get(serial) != version for serial, version in report.installed.items())
    )
    return len(result.vehicles) - len(wrong), wrong


def _summary(
    version: str,
    campaign: dict[str, Any],
    result: Any,
    matching: int,
    wrong: list[str],
    took: float,
) -> None:
    states = Counter(campaign.get("states", {}))
    table = Table("outcome", "vehicles", title=f"campaign {campaign['id']} after {took:.0f} s")
    outcomes = (
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("rolled back (A/B fall-back)", "rolled_back"),
        ("declined by the owner", "declined"),
        ("postponed by the owner", "postponed"),
        ("timed out", "timed_out"),
    )
    for label, key in outcomes:
        table.add_row(label, f"{states.get(key, 0):,}")
    totals = result.totals
    table.add_row("installs that fell back and were retried", f"{totals.rollbacks:,}")
    console.print(table)
    console.print(
        f"ground truth: {matching:,} of {len(result.vehicles):,} simulated vehicles run exactly "
        "the software the server records for them"
        + (f"; DIFFERENT: {', '.join(wrong[:10])}" if wrong else "")
    )
    updated = sum(1 for r in result.vehicles.values() if version in r.installed.values())
    verdict = "matches" if updated == states.get("succeeded", 0) else "DOES NOT MATCH"
    console.print(
        f"the server counts {states.get('succeeded', 0):,} deployments succeeded; "
        f"{updated:,} simulated vehicles run {version}: {verdict}"
    )


def demo(
    vehicles: Annotated[int, typer.Option(min=50, help="Size of the synthetic fleet.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic fleet.")] = 7,
    data_dir: Annotated[Path, typer.Option(help="Where the demo database lives.")] = Path(
        "otacm-data/demo"
    ),
    port: Annotated[int, typer.Option(help="Preferred port (a free one is used if taken).")] = 8080,
    failure_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Installs whose new image fails its health check.")
    ] = 0.05,
    keep_serving: Annotated[bool, typer.Option(help="Leave the server up afterwards.")] = False,
) -> None:
    """Run the whole mission on an embedded database: fleet, update, campaign, and a simulated
    fleet updating over the air.

    The demo database is made afresh each run, with a demo admin whose password and API token
    are printed: it is for trying otacm out, not for real vehicles.
    """
    started = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("otacm.db*"):
        stale.unlink()
    for stale_dir in ("keys", "artifacts", "simulator"):
        shutil.rmtree(data_dir / stale_dir, ignore_errors=True)
    settings = _demo_settings(data_dir)
    engine = engine_from_settings(settings)
    upgrade(engine)
    password, tokens = _operators(engine)
    initialise_keys_and_repository(settings, root_passphrase=None, engine=engine)
    console.print(f"signing keys in {settings.resolved_keys_dir()} (demo: root key unencrypted)")
    console.rule("1. the manufacturing export, imported")
    _import_fleet(engine, settings, vehicles, seed)
    console.rule("2. the server")
    port = _free_port(port)
    base = f"http://127.0.0.1:{port}"
    engine.dispose()  # the server process has the database now; this one only reads
    with _server_process(settings, port) as server:
        console.print(f"serving {base} (API docs {base}/api/v1/docs), process {server.pid}")
        _mission(base, settings, engine, tokens, password, started, failure_rate)
        if keep_serving:
            console.print("serving until Ctrl-C")
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    engine.dispose()


def _mission(
    base: str,
    settings: Settings,
    engine: Engine,
    tokens: dict[str, str],
    password: str,
    started: float,
    failure_rate: float,
) -> None:
    """Steps 3 to 7, against the running server."""
    console.rule("3. a software update, released")
    with _client(base, tokens[DEMO_ADMIN]) as api:
        update = _release_update(api)
        console.rule("4. targeting")
        eligible = _preview(api, int(update["id"]))
    if eligible == 0:
        console.print("[red]no vehicle of the generated fleet is eligible; try another --seed")
        raise typer.Exit(1)
    console.rule("5. a campaign in waves: created, approved, launched")
    cid = _launch(base, tokens, int(update["id"]), eligible)
    console.rule("6. over the air")
    records = _provision(engine, cid)
    console.print(f"console: {base}/   user [bold]{DEMO_ADMIN}[/]   password [bold]{password}[/]")
    result, campaign, took = _run_fleet(
        base, tokens[DEMO_ADMIN], cid, records, settings.data_dir / "simulator", failure_rate
    )
    with _client(base, tokens[DEMO_ADMIN]) as api:
        campaign = _ok(api.get(f"/api/v1/campaigns/{cid}"))
    console.rule("7. summary")
    matching, wrong = _compare(engine, result)
    _summary(str(update["version"]), campaign, result, matching, wrong, took)
    console.print(f"console: {base}/   user [bold]{DEMO_ADMIN}[/]   password [bold]{password}[/]")
    console.print(f"API token: {tokens[DEMO_ADMIN]}")
    console.print(
        f"try: curl -H 'Authorization: Bearer {tokens[DEMO_ADMIN]}' '{base}/api/v1/campaigns/{cid}'"
    )
    console.print(
        f"report: curl -H 'Authorization: Bearer {tokens[DEMO_ADMIN]}' "
        f"'{base}/api/v1/campaigns/{cid}/report?format=csv'"
    )
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")


__all__: list[Any] = ["demo"]
