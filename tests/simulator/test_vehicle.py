"""The simulated car and the wire shapes: offers as docs/vehicle-api.md shows them, events,
preconditions, the owner, A/B banks, the state that survives a restart, provisioning records."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from otacm.campaigns.states import VEHICLE_EVENTS
from otacm.simulator.records import InvalidRecord, ProvisioningRecord, read_records
from otacm.simulator.vehicle import (
    ConditionModel,
    Conditions,
    Consent,
    Image,
    OwnerBehaviour,
    VehicleState,
    unmet,
)
from otacm.simulator.wire import (
    Event,
    EventKind,
    MalformedAnswer,
    Preconditions,
    parse_offers,
    parse_poll_after,
)

# The example of docs/vehicle-api.md, with its elisions filled in.
DOC_OFFERS = {
    "poll_after_s": 27,
    "offers": [
        {
            "deployment_id": 4711,
            "attempt": 1,
            "state": "offered",
            "campaign": {"id": 3, "name": "BCM 4.2.0", "category": "bug_fix",
                         "urgency": "immediate", "priority": 100, "ends_at": None},
            "consent_required": True,
            "preconditions": {"parked": True, "min_battery_percent": 40, "charging": False,
                              "ignition_off": True},
            "maintenance_window": {"closes_at": "2026-11-27T22:00:00Z"},
            "notice": {"language": "en", "purpose": "p", "what_changes": "w",
                       "expected_duration_minutes": 15, "functions_unavailable": ["x"],
                       "instructions": "i"},
            "director": "/tuf/director/WVWZZZ1KZ6W000001/",
            "steps": [
                {"order": 2, "ecu_serial": "ESP-1", "ecu_type": "ESP", "update_id": 8,
                 "version": "2.0", "from_version": "1.0", "target": "updates/8/esp.bin",
                 "length": 10, "sha256": "cd" * 32, "encrypted": False,
                 "estimated_install_minutes": 5},
                {"order": 1, "ecu_serial": "BCM-7F3A21", "ecu_type": "BCM", "update_id": 7,
                 "version": "4.2.0", "from_version": "4.1.0",
                 "target": "updates/7/bcm-4.2.0.bin", "length": 8388652, "sha256": "ab" * 32,
                 "encrypted": True,
                 "wrapped_key": {"alg": "X25519-HKDF-SHA256-A256GCM", "epk": "e",
                                 "nonce": "n", "wrapped_key": "w"},
                 "estimated_install_minutes": 10},
            ],
        }
    ],
}  # fmt: skip


def test_the_documented_offer_parses_with_steps_in_install_order() -> None:
    [offer] = parse_offers(DOC_OFFERS)
    assert (offer.deployment_id, offer.attempt, offer.state) == (4711, 1, "offered")
    assert offer.consent_required and offer.urgency == "immediate"
    assert offer.preconditions == Preconditions(
        parked=True, min_battery_percent=40, charging=False, ignition_off=True
    )
    assert offer.window_closes_at == datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert [s.ecu_serial for s in offer.steps] == ["BCM-7F3A21", "ESP-1"]
    bcm = offer.steps[0]
    assert bcm.encrypted and bcm.wrapped_key is not None and bcm.wrapped_key["epk"] == "e"
    assert offer.steps[1].wrapped_key is None


def test_a_missing_or_mistyped_field_is_a_malformed_answer() -> None:
    broken = json.loads(json.dumps(DOC_OFFERS))
    broken["offers"][0]["steps"][0]["length"] = "10"
    with pytest.raises(MalformedAnswer, match="'length'"):
        parse_offers(broken)
    broken = json.loads(json.dumps(DOC_OFFERS))
    del broken["offers"][0]["deployment_id"]
    with pytest.raises(MalformedAnswer, match="'deployment_id'"):
        parse_offers(broken)
    broken = json.loads(json.dumps(DOC_OFFERS))
    broken["offers"][0]["attempt"] = True  # a flag is not a number
    with pytest.raises(MalformedAnswer, match="'attempt'"):
        parse_offers(broken)
    broken = json.loads(json.dumps(DOC_OFFERS))
    broken["offers"][0]["maintenance_window"]["closes_at"] = "tonight"
    with pytest.raises(MalformedAnswer, match="tonight"):
        parse_offers(broken)


def test_poll_after_falls_back_when_absent_or_unreadable() -> None:
    assert parse_poll_after("27", 300.0) == 27.0
    assert parse_poll_after(None, 300.0) == 300.0
    assert parse_poll_after("soon", 300.0) == 300.0
    assert parse_poll_after("-5", 300.0) == 300.0


def test_events_carry_a_fresh_uuid_the_attempt_and_a_utc_time() -> None:
    first = Event(EventKind.FAILED, 2, "verification_failed", "why")
    second = Event(EventKind.FAILED, 2, "verification_failed", "why")
    body = first.as_json()
    assert body["event"] == "failed" and body["attempt"] == 2
    assert (body["code"], body["detail"]) == ("verification_failed", "why")
    assert uuid.UUID(body["event_id"]).version == 4
    assert body["event_id"] != second.as_json()["event_id"]
    assert body["at"].endswith("Z")
    assert datetime.fromisoformat(body["at"].replace("Z", "+00:00")).tzinfo is not None


def test_unmet_names_each_precondition_that_does_not_hold() -> None:
    strict = Preconditions(parked=True, min_battery_percent=40, charging=True, ignition_off=True)
    driving = Conditions(battery_percent=35, parked=False, ignition_on=True, charging=False)
    assert unmet(strict, driving) == [
        "not parked", "ignition on", "battery 35 % < 40 %", "not charging",
    ]  # fmt: skip
    ready = Conditions(battery_percent=40, parked=True, ignition_on=False, charging=True)
    assert unmet(strict, ready) == []
    # A false flag asks for nothing: charging=false is not "must not be charging".
    assert unmet(Preconditions(), driving) == []


def test_the_car_parks_and_drives_and_its_battery_follows() -> None:
    model = ConditionModel(random.Random(5))
    seen = set()
    for _ in range(500):
        now = model.advance(600)
        assert 5 <= now.battery_percent <= 100
        assert now.ignition_on is not now.parked
        assert not (now.charging and not now.parked)
        seen.add(now.parked)
    assert seen == {True, False}


def test_the_owner_answers_with_the_configured_shares() -> None:
    rng = random.Random(11)
    owner = OwnerBehaviour(postpone_rate=0.2, decline_rate=0.1)
    answers = [owner.decide(rng) for _ in range(10_000)]
    assert 0.17 < answers.count(Consent.POSTPONE) / 10_000 < 0.23
    assert 0.08 < answers.count(Consent.DECLINE) / 10_000 < 0.12
    assert {OwnerBehaviour().decide(rng) for _ in range(100)} == {Consent.ACCEPT}
    assert {OwnerBehaviour(decline_rate=1).decide(rng) for _ in range(100)} == {Consent.DECLINE}
    with pytest.raises(ValueError):
        OwnerBehaviour(postpone_rate=0.6, decline_rate=0.6)


def record(**extra: object) -> dict[str, object]:
    return {
        "vin": "WVWZZZ1KZ6W000001",
        "token": "otv_abc",
        "ecus": [{"serial": "BCM-7F3A21", "ecu_type": "BCM", "hardware_id": "5Q0937084",
                  "software_version": "4.1.0"}],
        **extra,
    }  # fmt: skip


def test_a_record_with_keys_gives_usable_key_pairs(tmp_path: Path) -> None:
    signing, encryption = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    keys = {
        "signing_key": base64.b64encode(signing.private_bytes_raw()).decode(),
        "encryption_key": base64.b64encode(encryption.private_bytes_raw()).decode(),
    }
    path = tmp_path / "vehicles.jsonl"
    path.write_text(json.dumps(record(**keys)) + "\n\n" + json.dumps(record()) + "\n")
    with_keys, without = list(read_records(path))
    assert with_keys.signing_key is not None and with_keys.encryption_key is not None
    assert with_keys.signing_key.public_key() == signing.public_key()
    assert with_keys.encryption_key.public_key() == encryption.public_key()
    assert without.signing_key is None and without.ecus[0].software_version == "4.1.0"


def test_a_bad_record_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "vehicles.jsonl"
    path.write_text(json.dumps(record()) + "\n" + json.dumps({"vin": "X", "token": "t"}) + "\n")
    with pytest.raises(InvalidRecord, match=r"vehicles.jsonl:2: .*'ecus'"):
        list(read_records(path))
    path.write_text(json.dumps(record(signing_key="AAAA")) + "\n")
    with pytest.raises(InvalidRecord, match=r":1: signing_key must decode to 32 bytes"):
        list(read_records(path))
    path.write_text("{not json\n")
    with pytest.raises(InvalidRecord, match=r":1: "):
        list(read_records(path))


def test_ab_banks_switch_and_fall_back(tmp_path: Path) -> None:
    state = VehicleState.as_built(ProvisioningRecord.from_json(record()))
    ecu = state.ecus["BCM-7F3A21"]
    assert ecu.active == Image("4.1.0", None, 0)
    ecu.switch_to(Image("4.2.0", "ab" * 32, 3))
    assert state.installed() == {"BCM-7F3A21": "4.2.0"}
    ecu.fall_back()
    assert ecu.active == Image("4.1.0", None, 0) and ecu.fallback is None
    ecu.fall_back()  # nothing to fall back to: stays
    assert ecu.active.version == "4.1.0"


def test_the_vehicle_state_survives_a_restart(tmp_path: Path) -> None:
    provisioned = ProvisioningRecord.from_json(record())
    path = tmp_path / "vehicle" / "state.json"
    assert VehicleState.load(path, provisioned) == VehicleState.as_built(provisioned)
    state = VehicleState.as_built(provisioned)
    state.ecus["BCM-7F3A21"].switch_to(Image("4.2.0", "ab" * 32, 3))
    state.report_counter = 41
    state.attacks.append("rollback: deployment 4711: release counter 2 is lower")
    state.outcomes["4711/1"] = "installed"
    state.save(path)
    assert VehicleState.load(path, provisioned) == state
    assert not list(path.parent.glob("*.tmp"))


def test_the_clients_events_are_exactly_those_the_server_takes_from_vehicles() -> None:
    # The reference client spells the protocol out on its own (docs/vehicle-api.md) rather than
    # importing the server's states; this keeps the two vocabularies the same.
    assert {kind.value for kind in EventKind} == {event.value for event in VEHICLE_EVENTS}
