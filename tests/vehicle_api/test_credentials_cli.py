"""`otacm vehicles credentials` and `revoke-credentials` as the factory runs them."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work
from otacm.fleet.models import Vehicle
from otacm.vehicle_api.models import VehicleCredential, VehicleOtaState
from tests.targeting.test_preview import add_ecu, add_vehicle

runner = CliRunner()


def otacm(settings: Settings, *args: str) -> tuple[int, str]:
    """Exit code and output, with the error box's borders and line breaks taken out."""
    result = runner.invoke(app, [*args, "--database-url", settings.resolved_database_url()])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def fleet(engine: Engine, count: int = 3) -> list[str]:
    with unit_of_work(make_session_factory(engine)) as session:
        vins = []
        for n in range(count):
            vehicle = add_vehicle(session, n)
            add_ecu(session, vehicle, "BCM")
            vins.append(vehicle.vin)
    return vins


def credentials(engine: Engine) -> list[tuple[str, str, bool]]:
    """(VIN, stored hash, revoked) of every credential ever issued."""
    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.execute(
            select(Vehicle.vin, VehicleCredential.token_hash, VehicleCredential.revoked_at)
            .join(Vehicle, Vehicle.id == VehicleCredential.vehicle_id)
            .order_by(VehicleCredential.id)
        ).all()
    return [(vin, digest, revoked is not None) for vin, digest, revoked in rows]


def test_one_vehicle_gets_a_credential_stored_only_as_its_hash_and_a_new_one_revokes_it(
    settings: Settings, engine: Engine
) -> None:
    vin = fleet(engine)[0]
    code, output = otacm(settings, "vehicles", "credentials", vin.lower())
    assert code == 0, output
    record = json.loads(output)
    assert record["vin"] == vin and record["token"].startswith("otv_")
    assert [e["ecu_type"] for e in record["ecus"]] == ["BCM"]
    assert "signing_key" not in record
    [(_, digest, revoked)] = credentials(engine)
    assert digest == hashlib.sha256(record["token"].encode()).hexdigest() and not revoked
    code, output = otacm(settings, "vehicles", "credentials", vin)
    assert code == 0, output
    assert [r for _, _, r in credentials(engine)] == [True, False]
    code, output = otacm(settings, "vehicles", "revoke-credentials", vin)
    assert code == 0 and "1 credential(s) revoked" in output
    assert [r for _, _, r in credentials(engine)] == [True, True]


def test_a_batch_with_keys_goes_to_a_private_file_and_registers_the_public_keys(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    vins = fleet(engine)
    out = tmp_path / "factory.jsonl"
    code, output = otacm(settings, "vehicles", "credentials", "--all", "--keys", "-o", str(out))
    assert code == 0, output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["vin"] for r in records) == sorted(vins)
    assert len({r["token"] for r in records}) == len(vins)
    assert all(r["signing_key"] and r["encryption_key"] for r in records)
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(func.count()).select_from(VehicleOtaState)) == len(vins)
        assert all(session.scalars(select(Vehicle.vehicle_public_key)))
    assert not list(tmp_path.glob(".*partial")), "no temporary file is left behind"


def test_bad_input_is_refused_naming_it_and_issues_nothing(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    vins = fleet(engine)
    listed = tmp_path / "vins.txt"
    listed.write_text(f"{vins[0]}\nWXA00000000999999\n")
    out = tmp_path / "batch.jsonl"
    code, output = otacm(
        settings, "vehicles", "credentials", "--vin-file", str(listed), "-o", str(out)
    )
    assert code == 2 and "1 VINs are not in the registry, e.g. WXA00000000999999" in output
    assert not out.exists()
    code, output = otacm(
        settings, "vehicles", "credentials", vins[0], "-o", str(tmp_path / "no" / "x")
    )
    assert code == 2 and "cannot write" in output
    code, output = otacm(settings, "vehicles", "credentials", "--all")
    assert code == 2 and "a batch needs --out FILE" in output
    code, output = otacm(settings, "vehicles", "credentials")
    assert code == 2 and "name one VIN" in output
    code, output = otacm(settings, "vehicles", "credentials", "WXA00000000999999")
    assert code != 0 and "no vehicle with VIN" in output
    assert credentials(engine) == [], "nothing was issued"
