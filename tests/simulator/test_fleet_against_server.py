"""The simulated fleet against the real server on a socket: every vehicle verifies, downloads
(resuming cut transfers), decrypts, installs and reports; the server's registry ends up where
the vehicles really are."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner

from otacm.app import create_app
from otacm.campaigns.models import Deployment
from otacm.cli import app
from otacm.db import make_session_factory, unit_of_work
from otacm.fleet.models import Ecu, Vehicle
from otacm.simulator.fleet import Fleet, FleetOptions, FleetProgress, FleetResult, run_fleet
from otacm.simulator.records import ProvisioningRecord
from otacm.simulator.vehicle import DrivingPattern
from otacm.updates.models import UpdateArtifact
from otacm.updates.storage import storage_from_settings
from otacm.vehicle_api.models import VehicleSecurityEvent
from tests.live_server import LiveServer, quiet_settings
from tests.vehicle_api.conftest import Ota
from tests.vehicle_api.test_vehicle_api import open_waves


def deployment_states(ota: Ota) -> dict[str, str]:
    """VIN -> the state of its deployment in the campaign, as the server sees it."""
    with unit_of_work(make_session_factory(ota.engine)) as session:
        rows = session.execute(
            select(Vehicle.vin, Deployment.state)
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(Deployment.campaign_id == ota.campaign_id)
        )
        return {vin: state for vin, state in rows}


def registry_versions(ota: Ota) -> dict[str, str]:
    with unit_of_work(make_session_factory(ota.engine)) as session:
        rows = session.execute(select(Ecu.serial, Ecu.software_version))
        return {serial: version for serial, version in rows}


def all_in(ota: Ota, states: set[str]) -> Callable[[FleetProgress], bool]:
    def check(_: FleetProgress) -> bool:
        found = deployment_states(ota)
        return bool(found) and set(found.values()) <= states

    return check


# A seed under which the six vehicles' owners and installs give every outcome at least once.
SEED = 7


def options(tmp_path: Path, **changes: Any) -> FleetOptions:
    """A quick fleet: a compressed clock, cars mostly charged and soon parked."""
    base: dict[str, Any] = {
        "failure_rate": 0.0, "postpone_rate": 0.0, "decline_rate": 0.0, "offline_rate": 0.0,
        "interruption_rate": 1.0, "install_s": (1.0, 5.0), "time_scale": 0.001,
        "driving": DrivingPattern(mean_trip_s=120.0, battery_at_start=(50.0, 100.0)),
        "duration_s": 120.0, "seed": SEED, "work_dir": tmp_path, "start_rate": None,
        "live": False,
    }  # fmt: skip
    return FleetOptions(**{**base, **changes})


def run(ota: Ota, server: LiveServer, fleet: FleetOptions, until: set[str]) -> FleetResult:
    open_waves(ota)
    records = [ProvisioningRecord.from_json(r) for r in ota.records.values()]
    with server.mount(create_app(quiet_settings(ota.settings), ota.engine)) as url:
        result = run_fleet(records, url, fleet, stop_when=all_in(ota, until))
    assert result.stopped_because == "the stop condition was met", result.as_json()
    assert result.crashed == {}
    return result


def test_a_fleet_updates_over_http_and_the_registry_matches_the_vehicles(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    result = run(ota, live_server, options(tmp_path), {"succeeded"})
    truth = result.installed_versions()
    assert set(truth.values()) == {"4.2.0"}
    registry = registry_versions(ota)
    assert {serial: registry[serial] for serial in truth} == truth
    totals = result.totals
    assert totals.installs == len(ota.records)
    # Every download was cut once (interruption_rate 1) and tried again; where the cut came
    # after the first piece was written, the next try asked for the rest with Range.
    assert totals.retries >= len(ota.records)
    assert totals.resumed_downloads >= 1
    assert (totals.failures, totals.rollbacks, totals.errors) == (0, 0, 0)


def test_declines_postponements_and_rollbacks_end_where_the_vehicles_really_are(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    fleet = options(tmp_path, failure_rate=0.4, decline_rate=0.2, postpone_rate=0.2)
    # A postponed offer comes back only an hour later (server time): it stays postponed here.
    result = run(ota, live_server, fleet, {"succeeded", "declined", "rolled_back", "postponed"})
    states = deployment_states(ota)
    registry = registry_versions(ota)
    expected = {
        "succeeded": (1, 0, 0, 0),
        "declined": (0, 1, 0, 0),
        "postponed": (0, 0, 1, 0),
        "rolled_back": (0, 0, 0, 1),
    }
    for vin, vehicle in result.vehicles.items():
        t = vehicle.tally
        assert (t.installs, t.declined, t.postponed, t.rollbacks) == expected[states[vin]], vin
        assert {s: registry[s] for s in vehicle.installed} == vehicle.installed, vin
        wanted = "4.2.0" if states[vin] == "succeeded" else "4.1.0"
        assert set(vehicle.installed.values()) == {wanted}, vin
    assert set(states.values()) == set(expected), states
    # A vehicle whose offer waits (postponed) polls with its ETag and hears 304.
    postponed = [v for vin, v in result.vehicles.items() if states[vin] == "postponed"]
    assert any(v.tally.not_modified for v in postponed)


def test_a_tampered_image_is_refused_reported_and_listed_as_an_attack(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    with unit_of_work(make_session_factory(ota.engine)) as session:
        artifact = session.scalars(
            select(UpdateArtifact).where(UpdateArtifact.update_id == ota.update_id)
        ).one()
        stored = storage_from_settings(ota.settings).local_path(artifact.storage_key)
    assert stored is not None
    tampered = bytearray(stored.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF  # same length: only the hash can tell
    stored.write_bytes(bytes(tampered))
    result = run(ota, live_server, options(tmp_path), {"failed"})
    assert set(result.installed_versions().values()) == {"4.1.0"}
    assert result.totals.verification_failures == len(ota.records)
    with unit_of_work(make_session_factory(ota.engine)) as session:
        codes = set(
            session.scalars(
                select(Deployment.failure_code).where(Deployment.campaign_id == ota.campaign_id)
            )
        )
        attacks = list(
            session.scalars(
                select(VehicleSecurityEvent.detail).where(
                    VehicleSecurityEvent.kind == "vehicle_detected"
                )
            )
        )
    assert codes == {"verification_failed"}
    assert len(attacks) == len(ota.records)
    assert all(a.startswith("tampered_image: deployment ") for a in attacks), attacks
    assert result.totals.errors == 0  # no event or manifest was refused


def test_the_fleet_rides_out_a_server_that_is_down_at_the_start_and_in_the_middle(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    open_waves(ota)
    records = [ProvisioningRecord.from_json(r) for r in ota.records.values()]
    fleet = Fleet(records, live_server.url, options(tmp_path, interruption_rate=0.0))
    results: list[FleetResult] = []
    runner = threading.Thread(
        target=lambda: results.append(asyncio.run(fleet.run(all_in(ota, {"succeeded"}))))
    )
    runner.start()  # while nothing is served: every request answers 503
    time.sleep(1.0)
    settings = quiet_settings(ota.settings)
    with live_server.mount(create_app(settings, ota.engine)):
        deadline = time.monotonic() + 60
        while fleet.progress().totals.events_sent == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(1.5)  # down again, with vehicles in the middle of their work or polling
    with live_server.mount(create_app(settings, ota.engine)):
        runner.join(timeout=120)
    assert not runner.is_alive()
    [result] = results
    assert result.stopped_because == "the stop condition was met", result.as_json()
    assert result.crashed == {}
    assert set(deployment_states(ota).values()) == {"succeeded"}
    assert set(result.installed_versions().values()) == {"4.2.0"}
    assert result.totals.retries > 0


def test_vehicles_restarted_mid_update_pick_up_where_they_stopped(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    begun = {"accepted", "downloading", "downloaded", "installing", "installed", "succeeded"}
    # Installs that take 20 s: the first run stops before any has finished.
    first = run(ota, live_server, options(tmp_path, install_s=(20_000.0, 20_000.0)), begun)
    assert first.totals.installs < len(ota.records), "stopped too late to test a restart"
    # The same work directory: each vehicle's storage survived the restart.
    second = run(ota, live_server, options(tmp_path), {"succeeded"})
    assert first.totals.installs + second.totals.installs == len(ota.records)
    assert first.totals.accepted + second.totals.accepted == len(ota.records)
    assert first.totals.errors + second.totals.errors == 0  # no manifest counter went back
    truth = second.installed_versions()
    registry = registry_versions(ota)
    assert {serial: registry[serial] for serial in truth} == truth
    assert set(truth.values()) == {"4.2.0"}


def test_otacm_simulate_runs_the_provisioned_fleet_against_the_server(
    ota: Ota,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    open_waves(ota)
    credentials = tmp_path / "vehicles.jsonl"
    credentials.write_text("".join(json.dumps(r) + "\n" for r in ota.records.values()))
    report = tmp_path / "truth.json"
    with live_server.mount(create_app(quiet_settings(ota.settings), ota.engine)) as url:
        result = CliRunner().invoke(
            app,
            [
                "simulate", str(credentials), "--server", url, "--duration", "3",
                "--time-scale", "0.001", "--offline-rate", "0", "--work-dir",
                str(tmp_path / "fleet"), "--report", str(report), "--seed", "1",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    truth = json.loads(report.read_text())
    assert truth["stopped_because"] == "ran for 3 s"
    assert truth["crashed"] == {}
    assert sorted(truth["vehicles"]) == sorted(ota.records)
    for vin, vehicle in truth["vehicles"].items():
        assert vehicle["phase"] == "stopped", vin
        assert vehicle["tally"]["manifests_sent"] >= 1, vin
        assert vehicle["tally"]["polls"] >= 1, vin
    assert truth["totals"]["events_sent"] > 0
