"""`otacm demo`: the main job on an embedded database, in one command.

It makes a fresh SQLite registry, generates a synthetic fleet, imports it with a progress bar,
starts the server on localhost and shows the fleet through the API; then it sets up signing
keys, releases a software update into the TUF image repository and has a python-tuf client
verify and download it, as a vehicle would.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import engine_from_settings, make_session_factory, unit_of_work, upgrade
from otacm.fleet.cli import print_report
from otacm.fleet.generator import write_export
from otacm.fleet.importer import run_import
from otacm.security import service
from otacm.security.audit import SYSTEM
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.updates.samples import sample_update

DEMO_ADMIN = "demo-admin"

console = Console()


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return int(probe.getsockname()[1])  # the port itself, or a free one for 0
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


class _BackgroundServer(uvicorn.Server):
    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return thread


def _show_fleet(base: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        first = client.get("/api/v1/vehicles", params={"limit": 5}).json()
        table = Table(
            "VIN", "model", "year", "fuel", "region", title="GET /api/v1/vehicles?limit=5"
        )
        for v in first["items"]:
            table.add_row(
                v["vin"],
                v["model"],
                str(v["model_year"]),
                v["fuel_type"],
                f"{v['region']}/{v['country']}",
            )
        console.print(table)
        electric = client.get(
            "/api/v1/vehicles",
            params={"fuel_type": "electric", "region": "EU", "ecu_type": "BMS", "limit": 1000},
        ).json()
        console.print(f"electric EU vehicles with a BMS (first page): {len(electric['items'])}")
        vin = first["items"][0]["vin"]
        detail = client.get(f"/api/v1/vehicles/{vin}").json()
        ecus = Table(
            "ECU", "serial", "hardware", "protocol", "software", title=f"GET /api/v1/vehicles/{vin}"
        )
        for e in detail["ecus"]:
            ecus.add_row(
                e["ecu_type"],
                e["serial"],
                f"{e['hardware_part_number']} {e['hardware_version']}",
                e["protocol"],
                f"{e['software_part_number']} {e['software_version']}",
            )
        console.print(ecus)


def _release_and_verify(base: str, token: str, work: Path) -> None:
    """Through the API: define, upload and release an update; then verify it as a vehicle."""
    from tuf.ngclient import Updater

    auth = {"Authorization": f"Bearer {token}"}
    firmware = secrets.token_bytes(8 << 20)
    with httpx.Client(base_url=base, headers=auth, timeout=60) as api:
        created = api.post("/api/v1/updates", json=sample_update())
        created.raise_for_status()
        update_id = created.json()["id"]
        api.post(
            f"/api/v1/updates/{update_id}/artifacts",
            params={"filename": "bcm-4.2.0.bin", "sha256": hashlib.sha256(firmware).hexdigest()},
            content=firmware,
        ).raise_for_status()
        released = api.post(f"/api/v1/updates/{update_id}/release")
        released.raise_for_status()
    update = released.json()
    console.print(
        f"released update {update_id}: {update['ecu_type']} {update['version']} "
        f"({update['name']}), release counter {update['release_counter']}"
    )
    (work / "tuf").mkdir(exist_ok=True)
    vehicle = Updater(
        metadata_dir=str(work / "tuf"),
        bootstrap=httpx.get(f"{base}/tuf/image/1.root.json").content,
        metadata_base_url=f"{base}/tuf/image/",
        target_base_url=f"{base}/tuf/image/targets/",
        target_dir=str(work),
    )
    vehicle.refresh()
    info = vehicle.get_targetinfo(f"updates/{update_id}/bcm-4.2.0.bin")
    assert info is not None, "the released file is not in the signed targets"
    path = Path(vehicle.download_target(info))
    verdict = "identical" if path.read_bytes() == firmware else "DIFFERENT"
    console.print(
        f"a python-tuf client verified the signed metadata and downloaded {info.length:,} bytes "
        f"({verdict} to the upload); custom fields: {info.unrecognized_fields['custom']}"
    )


def demo(
    vehicles: Annotated[int, typer.Option(min=1, help="Size of the synthetic fleet.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic fleet.")] = 7,
    data_dir: Annotated[Path, typer.Option(help="Where the demo database lives.")] = Path(
        "otacm-data/demo"
    ),
    port: Annotated[int, typer.Option(help="Preferred port (a free one is used if taken).")] = 8080,
    keep_serving: Annotated[bool, typer.Option(help="Leave the server up afterwards.")] = False,
) -> None:
    """Run the main job on an embedded database: fleet import, the API and the console.

    The demo database is made afresh each run, with a demo admin whose password and API token
    are printed: it is for trying otacm out, not for real vehicles.
    """
    started = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / "otacm.db"
    for stale in data_dir.glob("otacm.db*"):
        stale.unlink()
    for stale_dir in ("keys", "artifacts"):
        shutil.rmtree(data_dir / stale_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{database.as_posix()}")
    engine = engine_from_settings(settings)
    upgrade(engine)
    password = secrets.token_urlsafe(12)
    with unit_of_work(make_session_factory(engine)) as session:
        service.create_user(session, SYSTEM, DEMO_ADMIN, "admin", password)
        token = service.create_token(session, SYSTEM, DEMO_ADMIN, "demo", None).secret
    console.rule("1. the manufacturing export")
    export = Path(tempfile.mkdtemp(prefix="otacm-demo-")) / "fleet.jsonl"
    with export.open("w", encoding="utf-8") as out:
        rows = write_export(out, vehicles, seed, "jsonl")
    console.print(f"generated {vehicles} vehicles with {rows} ECUs into {export}")
    console.rule("2. fleet import")
    from otacm.fleet.cli import _progress

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
    console.rule("3. the server")
    port = _free_port(port)
    base = f"http://127.0.0.1:{port}"
    server = _BackgroundServer(
        uvicorn.Config(
            create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = server.start()
    _show_fleet(base, token)
    console.rule("4. a software update, released and verified")
    initialise_keys_and_repository(settings, root_passphrase=None)
    console.print(f"signing keys in {settings.resolved_keys_dir()} (demo: root key unencrypted)")
    _release_and_verify(base, token, Path(export.parent))
    console.rule("5. watch it yourself")
    console.print(f"console: {base}/   user [bold]{DEMO_ADMIN}[/]   password [bold]{password}[/]")
    console.print(f"API token: {token}")
    console.print(f"try: curl -H 'Authorization: Bearer {token}' '{base}/api/v1/vehicles?limit=3'")
    console.print(f"catalog: curl -H 'Authorization: Bearer {token}' '{base}/api/v1/updates'")
    console.print(f"image repository: {base}/tuf/image/timestamp.json")
    console.print(f"API docs: {base}/api/v1/docs   metrics: {base}/metrics")
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")
    if keep_serving:
        console.print("serving until Ctrl-C")
        with contextlib.suppress(KeyboardInterrupt):
            thread.join()
    server.should_exit = True
    thread.join(timeout=10)


__all__: list[Any] = ["demo"]
