"""The vehicle API against a real database: polls, offers, events, manifests, the director
repository, credentials and the security events of what is refused."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import FetcherInterface, Updater

from otacm.campaigns.engine import tick
from otacm.campaigns.models import Deployment
from otacm.db import make_session_factory, make_write_session_factory, unit_of_work, utcnow
from otacm.fleet.models import Ecu, EcuHistory, Vehicle
from otacm.security import encryption
from otacm.security.audit import SYSTEM
from otacm.updates.service import key_context as update_key_context
from otacm.vehicle_api import credentials
from otacm.vehicle_api.manifest import canonical_bytes
from otacm.vehicle_api.models import CustomerNotice, VehicleSecurityEvent
from tests.vehicle_api.conftest import FIRMWARE, Ota


def refresh_index(ota: Ota) -> None:
    """One refresh of the started app's idle-poll index: it knows what the database says now
    (as it would within one OTACM_VEHICLE_INDEX_REFRESH)."""
    index = ota.app_client.app.state.vehicle_identifier.index  # type: ignore[attr-defined]
    assert ota.app_client.portal is not None
    ota.app_client.portal.call(index.refresh)


def open_waves(ota: Ota) -> None:
    tick(make_write_session_factory(ota.engine), utcnow())
    refresh_index(ota)


def event(name: str, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event": name, "attempt": attempt, **fields}


def post(vehicle: TestClient, deployment_id: int, *events: dict[str, Any]) -> Any:
    response = vehicle.post(
        f"/vehicle/v1/deployments/{deployment_id}/events", json={"events": list(events)}
    )
    assert response.status_code == 200, response.text
    return response.json()


def manifest(
    record: dict[str, Any], counter: int, versions: dict[str, str], **extra: Any
) -> dict[str, Any]:
    signed = {
        "vin": record["vin"],
        "report_counter": counter,
        "ecus": [{"serial": s, "software_version": v} for s, v in versions.items()],
        "attacks_detected": extra.pop("attacks", []),
        **extra,
    }
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(record["signing_key"]))
    signature = base64.b64encode(key.sign(canonical_bytes(signed))).decode()
    return {"signed": signed, "signature": signature}


def security_events(ota: Ota, vin: str) -> list[str]:
    with unit_of_work(make_session_factory(ota.engine)) as session:
        return list(
            session.scalars(
                select(VehicleSecurityEvent.kind)
                .join(Vehicle, Vehicle.id == VehicleSecurityEvent.vehicle_id)
                .where(Vehicle.vin == vin)
                .order_by(VehicleSecurityEvent.id)
            )
        )


def serial_of(record: dict[str, Any]) -> str:
    return str(record["ecus"][0]["serial"])


def served(ota: Ota, vin: str, path: str, **headers: str) -> Any:
    """A GET through the started app, where PostgreSQL polls take the asyncio pool."""
    auth = {"Authorization": f"Bearer {ota.records[vin]['token']}", **headers}
    return ota.app_client.get(path, headers=auth)


def test_an_idle_vehicle_gets_204_and_a_jittered_poll_after(ota: Ota) -> None:
    vehicle = ota.vehicle(ota.vins[0])
    answers = [vehicle.get("/vehicle/v1/updates") for _ in range(3)]
    answers += [served(ota, ota.vins[0], "/vehicle/v1/updates") for _ in range(3)]
    assert {a.status_code for a in answers} == {204}
    waits = {int(a.headers["Poll-After"]) for a in answers}
    idle = ota.settings.vehicle_poll_idle.total_seconds()
    assert all(idle * 0.8 - 1 <= w <= idle * 1.2 + 1 for w in waits)
    assert len(waits) > 1, "jitter: a fleet must not poll in lockstep"


def test_the_offer_carries_notice_preconditions_steps_and_a_key_only_this_vehicle_opens(
    ota: Ota,
) -> None:
    open_waves(ota)
    record = ota.records[ota.vins[0]]
    vehicle = ota.vehicle(record["vin"])
    answer = served(
        ota, record["vin"], "/vehicle/v1/updates", **{"Accept-Language": "de-AT, en;q=0.5"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["poll_after_s"] == int(answer.headers["Poll-After"])
    (offer,) = body["offers"]
    assert offer["state"] == "offered" and offer["attempt"] == 1
    assert offer["campaign"]["id"] == ota.campaign_id
    assert offer["notice"]["language"] == "de"
    assert offer["preconditions"]["min_battery_percent"] == 40
    assert offer["director"] == f"/tuf/director/{record['vin']}/"
    (step,) = offer["steps"]
    assert step["ecu_serial"] == serial_of(record)
    assert step["version"] == "4.2.0" and step["from_version"] == "4.1.0"
    assert step["encrypted"] is True
    # The data key opens with this vehicle's X25519 key and decrypts the released file.
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(record["encryption_key"]))
    data_key = encryption.unwrap_for_vehicle(
        step["wrapped_key"], private, context=update_key_context(ota.update_id)
    )
    name = step["target"].rsplit("/", 1)
    ciphertext = ota.app_client.get(f"/tuf/image/targets/{name[0]}/{step['sha256']}.{name[1]}")
    assert ciphertext.status_code == 200
    assert hashlib.sha256(ciphertext.content).hexdigest() == step["sha256"]
    assert b"".join(encryption.decrypt_stream([ciphertext.content], data_key)) == FIRMWARE
    # Another vehicle's key does not open it.
    other = X25519PrivateKey.from_private_bytes(
        base64.b64decode(ota.records[ota.vins[1]]["encryption_key"])
    )
    with pytest.raises(encryption.KeyUnwrapFailed):
        encryption.unwrap_for_vehicle(
            step["wrapped_key"], other, context=update_key_context(ota.update_id)
        )
    # Unchanged: 304, though the wrapped key is made afresh each time.
    again = vehicle.get(
        "/vehicle/v1/updates",
        headers={"If-None-Match": answer.headers["ETag"], "Accept-Language": "de-AT, en;q=0.5"},
    )
    assert again.status_code == 304
    assert "Poll-After" in again.headers
    # The customer was told once that the update is available.
    with unit_of_work(make_session_factory(ota.engine)) as session:
        kinds = list(
            session.scalars(
                select(CustomerNotice.kind).where(
                    CustomerNotice.deployment_id == offer["deployment_id"]
                )
            )
        )
    assert kinds == ["available"]


def test_events_are_idempotent_never_go_backwards_and_the_manifest_confirms(ota: Ota) -> None:
    open_waves(ota)
    record = ota.records[ota.vins[0]]
    vehicle = ota.vehicle(record["vin"])
    (offer,) = vehicle.get("/vehicle/v1/updates").json()["offers"]
    did = offer["deployment_id"]
    accepted = event("accepted")
    first = post(vehicle, did, accepted, event("download_started"), event("download_finished"))
    assert [r["outcome"] for r in first["results"]] == ["applied", "applied", "applied"]
    assert first["state"] == "downloaded"
    # The same batch again (a lost answer): acknowledged, counted once.
    repeat = post(vehicle, did, accepted)
    assert repeat["results"][0]["outcome"] == "duplicate"
    # Late and out of order: acknowledged, nothing moves back.
    late = post(vehicle, did, event("download_progress"), event("accepted"))
    assert [r["outcome"] for r in late["results"]] == ["ignored", "ignored"]
    assert late["state"] == "downloaded"
    # Declining after consent is a step this deployment cannot take.
    assert post(vehicle, did, event("declined"))["results"][0]["outcome"] == "refused"
    # An event of another attempt is dropped.
    assert (
        post(vehicle, did, event("failed", attempt=7, code="x"))["results"][0]["outcome"]
        == "stale_attempt"
    )
    installed = post(vehicle, did, event("install_started"), event("install_finished"))
    assert installed["state"] == "installed", "installed is not succeeded: the manifest decides"
    with unit_of_work(make_session_factory(ota.engine)) as session:
        assert session.get(Deployment, did).state == "installed"  # type: ignore[union-attr]
    serial = serial_of(record)
    confirmed = vehicle.put("/vehicle/v1/manifest", json=manifest(record, 1, {serial: "4.2.0"}))
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["confirmed_deployments"] == [did]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        deployment = session.get(Deployment, did)
        assert deployment is not None and deployment.state == "succeeded"
        assert deployment.versions == {
            serial: {"ecu_type": "BCM", "before": "4.1.0", "after": "4.2.0"}
        }
        ecu = session.scalar(select(Ecu).where(Ecu.serial == serial))
        assert ecu is not None and (ecu.software_version, ecu.software_source) == (
            "4.2.0",
            "manifest",
        )
        history = session.scalar(select(EcuHistory).where(EcuHistory.ecu_id == ecu.id))
        assert history is not None and (history.change, history.software_version) == (
            "software",
            "4.1.0",
        )
        kinds = list(
            session.scalars(
                select(CustomerNotice.kind)
                .where(CustomerNotice.deployment_id == did)
                .order_by(CustomerNotice.id)
            )
        )
    assert kinds == ["available", "completed"]
    # Nothing more to do: the next poll is idle.
    assert vehicle.get("/vehicle/v1/updates").status_code == 204


def test_a_failure_is_reported_with_its_code_and_the_customer_told(ota: Ota) -> None:
    open_waves(ota)
    vehicle = ota.vehicle(ota.vins[1])
    (offer,) = vehicle.get("/vehicle/v1/updates").json()["offers"]
    did = offer["deployment_id"]
    result = post(
        vehicle, did, event("accepted"), event("install_started"),
        event("rolled_back", code="install_error", detail="bank B did not boot"),
    )  # fmt: skip
    assert result["state"] == "rolled_back"
    detail = ota.manager.get(f"/api/v1/campaigns/{ota.campaign_id}/deployments/{did}").json()
    assert detail["failure_code"] == "install_error"
    with unit_of_work(make_session_factory(ota.engine)) as session:
        notice = session.scalar(
            select(CustomerNotice).where(
                CustomerNotice.deployment_id == did, CustomerNotice.kind == "failed"
            )
        )
    assert notice is not None and notice.content["result"] == "rolled_back"


def test_manifests_that_are_unsigned_forged_replayed_or_for_another_vin_are_refused_and_recorded(
    ota: Ota,
) -> None:
    record = ota.records[ota.vins[2]]
    vehicle = ota.vehicle(record["vin"])
    serial = serial_of(record)
    good = manifest(record, 5, {serial: "4.1.0"})
    assert vehicle.put("/vehicle/v1/manifest", json=good).status_code == 200
    replayed = vehicle.put("/vehicle/v1/manifest", json=good)
    assert replayed.status_code == 409 and replayed.json()["error"] == "manifest_replayed"
    unsigned = vehicle.put("/vehicle/v1/manifest", json={"signed": good["signed"]})
    assert unsigned.json()["error"] == "manifest_unsigned"
    forged = manifest(record, 6, {serial: "9.9.9"})
    forged["signed"]["report_counter"] = 7  # changed after signing
    assert (
        vehicle.put("/vehicle/v1/manifest", json=forged).json()["error"]
        == "manifest_signature_invalid"
    )
    wrong_key = manifest(ota.records[ota.vins[3]], 8, {serial: "4.1.0"})
    wrong_key["signed"]["vin"] = record["vin"]
    assert (
        vehicle.put("/vehicle/v1/manifest", json=wrong_key).json()["error"]
        == "manifest_signature_invalid"
    )
    other_vin = manifest(record, 9, {serial: "4.1.0"}, vin=ota.vins[3])
    assert (
        vehicle.put("/vehicle/v1/manifest", json=other_vin).json()["error"]
        == "manifest_vin_mismatch"
    )
    reported = manifest(
        record, 10, {serial: "4.1.0"}, attacks=["image hash mismatch for updates/1/bcm.bin"]
    )
    assert vehicle.put("/vehicle/v1/manifest", json=reported).status_code == 200
    assert security_events(ota, record["vin"]) == [
        "manifest_replayed", "manifest_unsigned", "manifest_signature_invalid",
        "manifest_signature_invalid", "manifest_vin_mismatch", "vehicle_detected",
    ]  # fmt: skip
    with unit_of_work(make_session_factory(ota.engine)) as session:
        ecu = session.scalar(select(Ecu).where(Ecu.serial == serial))
        assert ecu is not None and ecu.software_version == "4.1.0", "nothing refused was applied"


def test_a_vehicle_sees_only_its_own_data(ota: Ota) -> None:
    open_waves(ota)
    mine, theirs = ota.vehicle(ota.vins[0]), ota.vehicle(ota.vins[1])
    (offer,) = theirs.get("/vehicle/v1/updates").json()["offers"]
    stolen = mine.post(
        f"/vehicle/v1/deployments/{offer['deployment_id']}/events",
        json={"events": [event("accepted")]},
    )
    assert stolen.status_code == 404 and stolen.json()["error"] == "deployment_not_found"
    assert mine.get(f"/tuf/director/{ota.vins[1]}/timestamp.json").status_code == 404
    assert mine.get(f"/tuf/director/{ota.vins[1]}/1.root.json").status_code == 404
    assert theirs.get(f"/tuf/director/{ota.vins[1]}/timestamp.json").status_code == 200
    anonymous = TestClient(ota.app_client.app)
    assert anonymous.get("/vehicle/v1/updates").status_code == 401
    assert anonymous.get(f"/tuf/director/{ota.vins[1]}/timestamp.json").status_code == 401
    bad = TestClient(ota.app_client.app, headers={"Authorization": "Bearer otv_not-a-credential"})
    assert bad.get("/vehicle/v1/updates").json()["error"] == "vehicle_unauthorized"
    # An operator's token is not a vehicle credential.
    assert ota.manager.get("/vehicle/v1/updates").status_code == 401


def test_a_revoked_credential_is_refused_and_recorded_and_a_new_one_works(ota: Ota) -> None:
    vin = ota.vins[3]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        assert credentials.revoke(session, SYSTEM, vin, utcnow()) == 1
    refresh_index(ota)
    revoked = ota.vehicle(vin).get("/vehicle/v1/updates")
    assert revoked.status_code == 401
    assert served(ota, vin, "/vehicle/v1/updates").status_code == 401
    assert security_events(ota, vin) == ["revoked_credential", "revoked_credential"]
    with unit_of_work(make_session_factory(ota.engine)) as session:
        fresh = credentials.provision_vin(session, SYSTEM, vin, utcnow())
    client = TestClient(ota.app_client.app, headers={"Authorization": f"Bearer {fresh.token}"})
    assert client.get("/vehicle/v1/updates").status_code == 204
    with unit_of_work(make_session_factory(ota.engine)) as session:
        stored = session.scalar(select(func.count()).select_from(credentials.VehicleCredential))
    assert stored == len(ota.vins) + 1
    assert fresh.token not in str(stored)


class _ClientFetcher(FetcherInterface):
    """ngclient over the test client, with the vehicle's credential."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self.client.get(url)
        if response.status_code != 200:
            raise DownloadHTTPError(f"{url}: {response.status_code}", response.status_code)
        return iter([response.content])


def director_updater(ota: Ota, vin: str, work: Path) -> Updater:
    client = ota.vehicle(vin)
    root = client.get(f"/tuf/director/{vin}/1.root.json")
    assert root.status_code == 200, root.text
    work.mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(work),
        metadata_base_url=f"http://testserver/tuf/director/{vin}/",
        target_base_url="http://testserver/tuf/image/targets/",
        bootstrap=root.content,
        fetcher=_ClientFetcher(client),
    )


def verified_targets(work: Path) -> Targets:
    """The targets metadata ngclient verified and kept."""
    return Metadata[Targets].from_file(str(work / "targets.json")).signed


def test_the_director_lists_what_each_ecu_installs_and_names_the_vin_when_nothing(
    ota: Ota, tmp_path: Path
) -> None:
    record = ota.records[ota.vins[0]]
    vin = record["vin"]
    updater = director_updater(ota, vin, tmp_path / "director")
    updater.refresh()
    empty = verified_targets(tmp_path / "director")
    assert empty.targets == {}
    assert empty.unrecognized_fields["custom"] == {"vin": vin, "deployments": []}
    open_waves(ota)
    vehicle = ota.vehicle(vin)
    (offer,) = vehicle.get("/vehicle/v1/updates").json()["offers"]
    (step,) = offer["steps"]
    fresh = director_updater(
        ota, vin, tmp_path / "director"
    )  # the same metadata dir: newer versions
    fresh.refresh()
    info = fresh.get_targetinfo(step["target"])
    assert info is not None
    assert info.length == step["length"] and info.hashes == {"sha256": step["sha256"]}
    custom = info.unrecognized_fields["custom"]
    assert custom["ecu_identifier"] == step["ecu_serial"]
    assert custom["hardware_id"] == "HW-A"
    assert custom["deployment_id"] == offer["deployment_id"]
    assert custom["release_counter"] >= 1
    signed = verified_targets(tmp_path / "director")
    assert signed.version == 2 and signed.unrecognized_fields["custom"]["vin"] == vin
    # Asking again changes nothing: no new version is signed.
    again = director_updater(ota, vin, tmp_path / "director")
    again.refresh()
    assert verified_targets(tmp_path / "director").version == 2
