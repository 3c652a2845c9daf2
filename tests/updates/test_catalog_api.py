"""The update catalog over HTTP: drafts, edits, release checks, withdrawal, search, roles, audit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work
from otacm.security import audit
from tests.builders import update_document
from tests.updates.helpers import (
    AUDIT,
    UPDATES,
    audit_actions,
    catalog_state,
    create,
    error,
    mark_released,
    rows,
    stored_files,
    upload,
)

BODY = b"\x7fELF" + bytes(range(256)) * 40


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [u["name"] for u in response.json()["items"]]


def contains(actual: Any, expected: Any) -> bool:
    """`expected` is within `actual`: equal, or (for objects) every key it has matches."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


# Creating and reading drafts


def test_create_a_draft_with_every_field_and_read_it_back(
    client: TestClient, engine: Engine
) -> None:
    document = update_document(confidential=False)
    response = client.post("/api/v1/updates", json=document)
    assert response.status_code == 201, response.text
    created = response.json()

    assert created["state"] == "draft"
    assert created["created_by"] == "test-admin"
    assert created["artifacts"] == [] and created["release_counter"] is None
    assert created["support_status"] == "supported"
    for name, value in document.items():
        assert contains(created[name], value), (name, created[name], value)
    # What was not sent comes back with its default, never missing.
    assert created["dependencies"] == [
        {"ecu_type": "GATEWAY", "min_version": "3.2.0", "max_version": None}
    ]
    assert created["preconditions"]["charging"] is False
    assert created["regulatory"]["rxswin_before"] is None

    assert client.get(f"/api/v1/updates/{created['id']}").json() == created
    [row] = rows(engine, UPDATES)
    assert (row["state"], row["support_contact"], row["end_of_support"]) == (
        "draft",
        "bcm-team@example.com",
        date(2030, 12, 31),
    )
    assert audit_actions(engine, created["id"]) == ["update.create"]


def test_a_draft_needs_only_its_identity_and_gets_defaults(client: TestClient) -> None:
    identity = {
        "name": "Gateway routing table",
        "version": "3.3.0",
        "ecu_type": "GATEWAY",
        "software_part_number": "GW-100-A",
        "protocol": "ETHERNET",
        "category": "feature",
    }
    response = client.post("/api/v1/updates", json=identity)
    assert response.status_code == 201, response.text
    draft = response.json()
    assert contains(draft, identity)
    assert draft["compatible_models"] == [] and draft["applicable_versions"] == []
    assert draft["model_year_min"] is None and draft["rollback_version"] is None
    assert draft["release_notes"] == "" and draft["install_order"] == 0
    assert draft["preconditions"] == {
        "parked": True,
        "min_battery_percent": None,
        "charging": False,
        "ignition_off": True,
    }
    assert draft["support"] == {"contact": None, "documentation_url": None, "end_of_support": None}
    assert draft["confidential"] is False


def test_input_is_normalised(client: TestClient) -> None:
    draft = create(
        client,
        name="  BCM fixes  ",
        ecu_type=" bcm ",
        compatible_models=["Nordra", "Castellan", "Nordra"],
        fuel_types=["electric", "electric"],
        dependencies=[{"ecu_type": "gateway", "min_version": "3.2.0"}],
    )
    assert draft["name"] == "BCM fixes"
    assert draft["ecu_type"] == "BCM"
    assert draft["compatible_models"] == ["Nordra", "Castellan"]
    assert draft["fuel_types"] == ["electric"]
    assert draft["dependencies"][0]["ecu_type"] == "GATEWAY"


# Each: (what is changed in the document, the field the error must name).
INVALID_DRAFTS: list[tuple[dict[str, Any], str]] = [
    ({"name": "   "}, "name"),
    ({"version": ""}, "version"),
    ({"version": "..."}, "version"),
    ({"version": "1" * 100}, "version"),
    ({"ecu_type": "B C M"}, "ecu_type"),
    ({"protocol": "SMOKE_SIGNALS"}, "protocol"),
    ({"category": "misc"}, "category"),
    ({"model_year_min": 1900}, "model_year_min"),
    ({"model_year_min": 2027}, "model_year_max"),
    ({"fuel_types": ["electric", "steam"]}, "fuel_types"),
    ({"applicable_versions": ["4.1.0", "-"]}, "applicable_versions"),
    ({"applicable_version_min": "5.0"}, "applicable_version_max"),
    ({"rollback_version": ""}, "rollback_version"),
    ({"dependencies": [{"ecu_type": "GW"}, {"ecu_type": "gw"}]}, "dependencies"),
    (
        {"dependencies": [{"ecu_type": "GW", "min_version": "2.0", "max_version": "1.9"}]},
        "dependencies.max_version",
    ),
    ({"dependencies": [{"ecu_type": "BCM"}]}, "dependencies"),
    ({"support": {"documentation_url": "ftp://docs.example.com"}}, "support.documentation_url"),
    ({"support": {"end_of_support": "someday"}}, "support.end_of_support"),
    ({"preconditions": {"min_battery_percent": 101}}, "preconditions.min_battery_percent"),
    ({"estimated_install_minutes": 0}, "estimated_install_minutes"),
    ({"install_order": -1}, "install_order"),
    ({"regulatory": {"purpose": "x", "rxswin": "R156-1"}}, "regulatory.rxswin"),
    ({"colour": "red"}, "colour"),
    ({"software_part_number": None}, "software_part_number"),
]


def test_invalid_drafts_are_refused_naming_the_field(client: TestClient, engine: Engine) -> None:
    for change, field in INVALID_DRAFTS:
        document = {k: v for k, v in update_document(**change).items() if v is not None}
        response = client.post("/api/v1/updates", json=document)
        error(response, 422, "validation_failed", field)
    assert rows(engine, UPDATES) == []
    assert audit_actions(engine) == []


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/api/v1/updates", content=b"{name:", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"


def test_the_same_identity_twice_is_refused(client: TestClient, engine: Engine) -> None:
    first = create(client)
    response = client.post("/api/v1/updates", json=update_document(name="again"))
    body = error(response, 409, "update_exists", "version")
    assert body["update_id"] == first["id"]
    # Another part number or ECU type is another update.
    create(client, software_part_number="5Q0937084AD")
    create(client, ecu_type="BMS", dependencies=[])
    assert len(rows(engine, UPDATES)) == 3


def test_unknown_update_is_404(client: TestClient) -> None:
    error(client.get("/api/v1/updates/999"), 404, "update_not_found")
    error(client.patch("/api/v1/updates/999", json={"name": "x"}), 404, "update_not_found")
    error(client.post("/api/v1/updates/999/release", json={}), 404, "update_not_found")


# Editing drafts


def test_edit_changes_the_fields_sent_and_nothing_else(client: TestClient, engine: Engine) -> None:
    draft = create(client)
    response = client.patch(
        f"/api/v1/updates/{draft['id']}",
        json={
            "release_notes": "Fixes the interior light timeout and the mirror fold.",
            "hardware_versions": ["B2", "C1"],
            "support": {"contact": "bcm-oncall@example.com"},
            "version": "4.2.1",
        },
    )
    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["release_notes"].endswith("mirror fold.")
    assert edited["hardware_versions"] == ["B2", "C1"]
    assert edited["version"] == "4.2.1"
    # A nested object is replaced as a whole.
    assert edited["support"] == {
        "contact": "bcm-oncall@example.com",
        "documentation_url": None,
        "end_of_support": None,
    }
    untouched = {"name", "compatible_models", "regulatory", "dependencies", "created_at"}
    assert {k: edited[k] for k in untouched} == {k: draft[k] for k in untouched}
    assert edited["updated_at"] > draft["updated_at"]
    # The version's sort key follows the new version.
    assert names(client.get("/api/v1/updates", params={"version": "4.2.1"})) == [draft["name"]]
    assert names(client.get("/api/v1/updates", params={"version": "4.2.0"})) == []


def test_edit_clears_optional_fields_but_not_the_identity(
    client: TestClient, engine: Engine
) -> None:
    draft = create(client)
    cleared = client.patch(
        f"/api/v1/updates/{draft['id']}",
        json={"rollback_version": None, "compatible_models": None, "model_year_max": None},
    ).json()
    assert cleared["rollback_version"] is None and cleared["compatible_models"] == []
    assert cleared["model_year_max"] is None
    before = catalog_state(engine)
    for name in ("name", "version", "ecu_type", "software_part_number", "protocol", "category"):
        error(
            client.patch(f"/api/v1/updates/{draft['id']}", json={name: None}),
            422,
            "validation_failed",
            name,
        )
    assert catalog_state(engine) == before


def test_groups_are_replaced_whole_and_null_restores_defaults(client: TestClient) -> None:
    draft = create(
        client,
        preconditions={"parked": False, "min_battery_percent": 60, "charging": True},
        install_order=7,
        dependencies=[{"ecu_type": "GATEWAY", "min_version": "3.2.0"}],
    )
    url = f"/api/v1/updates/{draft['id']}"
    # What a group leaves out takes its default, not its stored value.
    response = client.patch(
        url,
        json={
            "preconditions": {"min_battery_percent": 30},
            "regulatory": {"purpose": "Fix the light", "safety_confirmed": True},
            "support": {"end_of_support": "2031-06-30"},
        },
    )
    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["preconditions"] == {
        "parked": True,
        "min_battery_percent": 30,
        "charging": False,
        "ignition_off": True,
    }
    assert edited["regulatory"] == {
        "purpose": "Fix the light",
        "affected_systems": [],
        "type_approval_affected": False,
        "rxswin_before": None,
        "rxswin_after": None,
        "execution_conditions": None,
        "safety_confirmed": True,
        "verification_reference": None,
    }
    assert edited["support"] == {
        "contact": None,
        "documentation_url": None,
        "end_of_support": "2031-06-30",
    }
    assert edited["support_status"] == "supported"
    # Null gives back what a new draft has.
    groups = ["preconditions", "regulatory", "support", "dependencies", "install_order"]
    cleared = client.patch(url, json={**dict.fromkeys(groups), "release_notes": None}).json()
    identity = ("name", "ecu_type", "software_part_number", "protocol", "category")
    fresh = client.post(
        "/api/v1/updates", json={**{k: draft[k] for k in identity}, "version": "9.9.9"}
    ).json()
    assert {k: cleared[k] for k in [*groups, "release_notes"]} == {
        k: fresh[k] for k in [*groups, "release_notes"]
    }
    assert cleared["release_notes"] == "" and cleared["install_order"] == 0


def test_edit_is_checked_against_what_is_stored(client: TestClient, engine: Engine) -> None:
    draft = create(client)  # model years 2022-2026, applicable 4.0.0-4.1.9
    other = create(client, version="4.3.0")
    before = catalog_state(engine)
    url = f"/api/v1/updates/{draft['id']}"
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"model_year_max": 2020}, 422, "validation_failed", "model_year_max"),
        ({"model_year_min": 2027}, 422, "validation_failed", "model_year_max"),
        ({"applicable_version_max": "3.9"}, 422, "validation_failed", "applicable_version_max"),
        ({"dependencies": [{"ecu_type": "BCM"}]}, 422, "validation_failed", "dependencies"),
        ({"ecu_type": "GATEWAY"}, 422, "validation_failed", "dependencies"),
        ({"version": other["version"]}, 409, "update_exists", "version"),
        ({"unknown": 1}, 422, "validation_failed", "unknown"),
    ]
    for change, status, code, field in cases:
        error(client.patch(url, json=change), status, code, field)
    assert catalog_state(engine) == before
    assert audit_actions(engine, draft["id"]) == ["update.create"]


def test_confidentiality_changes_only_without_files(client: TestClient, engine: Engine) -> None:
    draft = create(client)
    url = f"/api/v1/updates/{draft['id']}"
    assert client.patch(url, json={"confidential": True}).json()["confidential"] is True
    [row] = rows(engine, UPDATES)
    assert row["wrapped_data_key"]
    assert client.patch(url, json={"confidential": False}).json()["confidential"] is False
    assert rows(engine, UPDATES)[0]["wrapped_data_key"] is None

    assert upload(client, draft["id"], BODY).status_code == 201
    error(client.patch(url, json={"confidential": True}), 409, "conflict", "confidential")
    assert client.get(url).json()["confidential"] is False


# Release checks and the released state


def test_release_of_an_incomplete_draft_lists_what_is_missing(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(
        client,
        release_notes="  ",
        fuel_types=[],
        support={"documentation_url": "https://docs.example.com/bcm"},
        regulatory={"purpose": "Fix the light", "type_approval_affected": True},
        estimated_install_minutes=None,
    )
    before = catalog_state(engine), stored_files(settings)
    response = client.post(f"/api/v1/updates/{draft['id']}/release", json={})
    body = error(response, 422, "update_incomplete")
    assert body["missing"] == [
        "artifacts",
        "fuel_types",
        "release_notes",
        "estimated_install_minutes",
        "support.contact",
        "regulatory.affected_systems",
        "regulatory.execution_conditions",
        "regulatory.verification_reference",
        "regulatory.rxswin_before",
        "regulatory.rxswin_after",
        "regulatory.safety_confirmed",
    ]
    for name in body["missing"]:
        assert name in body["detail"]
    assert (catalog_state(engine), stored_files(settings)) == before
    assert audit_actions(engine, draft["id"]) == ["update.create"]


def test_a_complete_draft_still_needs_a_file(client: TestClient, engine: Engine) -> None:
    draft = create(client)
    body = error(client.post(f"/api/v1/updates/{draft['id']}/release"), 422, "update_incomplete")
    assert body["missing"] == ["artifacts"]
    assert rows(engine, UPDATES)[0]["state"] == "draft"


def test_a_released_update_never_changes(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    draft = create(client)
    assert upload(client, draft["id"], BODY).status_code == 201
    mark_released(engine, draft["id"])
    before = catalog_state(engine), stored_files(settings)
    url = f"/api/v1/updates/{draft['id']}"

    body = error(client.patch(url, json={"release_notes": "changed"}), 409, "update_immutable")
    assert body["state"] == "released" and "released" in body["detail"]
    error(upload(client, draft["id"], BODY, "other.bin"), 409, "update_immutable")
    error(client.delete(f"{url}/artifacts/bcm.bin"), 409, "update_immutable")
    error(client.post(f"{url}/release"), 409, "update_immutable")

    assert (catalog_state(engine), stored_files(settings)) == before
    assert audit_actions(engine, draft["id"]) == ["update.create", "update.artifact.upload"]


def test_withdraw_a_released_update_with_a_reason(client: TestClient, engine: Engine) -> None:
    draft = create(client)
    url = f"/api/v1/updates/{draft['id']}/withdraw"
    body = error(client.post(url, json={"reason": "not yet released"}), 409, "conflict")
    assert body["state"] == "draft"
    mark_released(engine, draft["id"])
    error(client.post(url, json={"reason": "  x "}), 422, "validation_failed", "reason")
    error(client.post(url, json={}), 422, "validation_failed", "reason")

    response = client.post(url, json={"reason": "Bricks BCMs with hardware B1"})
    assert response.status_code == 200, response.text
    withdrawn = response.json()
    assert withdrawn["state"] == "withdrawn"
    assert withdrawn["withdrawal_reason"] == "Bricks BCMs with hardware B1"
    assert withdrawn["withdrawn_by"] == "test-admin" and withdrawn["withdrawn_at"]

    before = catalog_state(engine)
    error(client.post(url, json={"reason": "again"}), 409, "conflict")
    error(
        client.patch(f"/api/v1/updates/{draft['id']}", json={"name": "x"}), 409, "update_immutable"
    )
    assert catalog_state(engine) == before


# The catalog: filters, natural order, pages


@pytest.fixture
def catalog(client: TestClient, engine: Engine) -> dict[str, int]:
    """Six updates, names A..F, differing in every filterable attribute."""
    made = {
        "A": create(client, name="A"),
        "B": create(
            client,
            name="B",
            version="4.10.0",
            category="security_patch",
            compatible_models=["Nordra"],
            fuel_types=["diesel"],
            release_notes="Closes CVE-2026-1234 (50% of the fleet)",
        ),
        "C": create(
            client,
            name="C",
            ecu_type="BMS",
            software_part_number="BMS-77",
            version="2.0.0",
            protocol="CAN_FD",
            dependencies=[],
            compatible_models=["Castellan"],
            hardware_part_numbers=["BMS-HW-1"],
            hardware_versions=["A0"],
            support={"contact": "bms@example.com", "end_of_support": "2020-01-01"},
        ),
        "D": create(
            client,
            name="D",
            ecu_type="TCU",
            software_part_number="TCU-5",
            version="SW.04.12.003",
            protocol="ETHERNET",
            category="feature",
            fuel_types=["hydrogen"],
        ),
        "E": create(client, name="E", version="4.9.2", category="recall"),
        "F": create(client, name="F", version="4.2.1", confidential=True),
    }
    mark_released(engine, made["B"]["id"])
    mark_released(engine, made["E"]["id"])
    assert client.post(
        f"/api/v1/updates/{made['E']['id']}/withdraw", json={"reason": "superseded"}
    ).is_success
    return {name: u["id"] for name, u in made.items()}


# Each: (query parameters, the names of the updates found, in order).
FILTERS: list[tuple[dict[str, Any], str]] = [
    ({}, "B E F A C D"),
    ({"version": "4.10.0"}, "B"),
    ({"version": "4.10"}, ""),
    ({"version": "SW.4.12.3"}, "D"),
    ({"version": "sw-04-12-003"}, "D"),
    ({"protocol": "CAN"}, "B E F A"),
    ({"protocol": ["CAN_FD", "ETHERNET"]}, "C D"),
    ({"model": "Nordra"}, "B E F A D"),
    ({"model": ["Castellan", "Unknown"]}, "E F A C D"),
    ({"model": "nordra"}, ""),
    ({"fuel_type": "diesel"}, "B"),
    ({"fuel_type": ["hydrogen", "diesel"]}, "B D"),
    ({"ecu_type": "bms"}, "C"),
    ({"ecu_type": ["BMS", "TCU"]}, "C D"),
    ({"hardware_part_number": "BMS-HW-1"}, "C"),
    ({"hardware_version": "B1"}, "B E F A D"),
    ({"hardware_version": "A0"}, "C"),
    ({"state": "draft"}, "F A C D"),
    ({"state": ["released", "withdrawn"]}, "B E"),
    ({"support_status": "end_of_support"}, "C"),
    ({"support_status": "supported"}, "B E F A D"),
    ({"category": "recall"}, "E"),
    ({"category": ["security_patch", "feature"]}, "B D"),
    ({"q": "cve-2026"}, "B"),
    ({"q": "50%"}, "B"),
    ({"q": "5_%"}, ""),
    ({"q": "BMS-7"}, "C"),
    ({"q": "4.9"}, "E"),
    ({"ecu_type": "BCM", "state": "draft", "category": "bug_fix"}, "F A"),
    ({"order": "oldest"}, "D C A F E B"),
]


def test_catalog_filters(client: TestClient, catalog: dict[str, int]) -> None:
    for params, expected in FILTERS:
        found = names(client.get("/api/v1/updates", params=params))
        assert found == expected.split(), params


def test_bad_filter_values_name_the_parameter(client: TestClient) -> None:
    for params, field in [
        ({"version": "1" * 100}, "version"),
        ({"version": "1" * 101}, "version"),
        ({"fuel_type": "steam"}, "fuel_type"),
        ({"protocol": "X"}, "protocol"),
        ({"state": "published"}, "state"),
        ({"support_status": "maybe"}, "support_status"),
        ({"category": "misc"}, "category"),
        ({"order": "random"}, "order"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ2MiIsICJ4IiwgMV0"}, "cursor"),  # ["v2", "x", 1]
    ]:
        error(client.get("/api/v1/updates", params=params), 422, "validation_failed", field)


def test_versions_sort_naturally(client: TestClient) -> None:
    bcm = ["4.9.2", "4.10.0", "4.2.0", "1.2.0", "1.2.0-rc1", "1.2.0.1", "4.10.0-beta"]
    tcu = ["SW.04.9.010", "SW.04.12.003", "SW.4.10.1", "SW.04.12.0"]
    for version in bcm:
        create(client, name=f"BCM {version}", version=version)
    for version in tcu:
        create(client, name=f"TCU {version}", version=version, ecu_type="TCU", dependencies=[])

    def versions(**params: Any) -> list[str]:
        response = client.get("/api/v1/updates", params=params)
        assert response.status_code == 200, response.text
        return [u["version"] for u in response.json()["items"]]

    expected_bcm = ["4.10.0", "4.10.0-beta", "4.9.2", "4.2.0", "1.2.0.1", "1.2.0", "1.2.0-rc1"]
    assert versions(ecu_type="BCM") == expected_bcm
    assert versions(ecu_type="BCM", order="oldest") == expected_bcm[::-1]
    assert versions(ecu_type="TCU") == ["SW.04.12.003", "SW.04.12.0", "SW.4.10.1", "SW.04.9.010"]


def test_pages_follow_the_cursor_without_gaps_or_repeats(client: TestClient) -> None:
    # Equal versions on different ECU types: the order is broken by id.
    for i, version in enumerate(["1.0", "1.10", "1.2", "1.2", "1.2", "2.0", "1.9.9"]):
        create(client, name=f"U{i}", version=version, ecu_type=f"ECU{i}", dependencies=[])
    for order in ("newest", "oldest"):
        everything = names(client.get("/api/v1/updates", params={"order": order}))
        assert len(everything) == 7
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"order": order, "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/api/v1/updates", params=params).json()
            seen += [u["name"] for u in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == everything and pages == 3
    newest = names(client.get("/api/v1/updates"))
    assert newest[:2] == ["U5", "U1"] and newest[3:6] == ["U4", "U3", "U2"]


def test_an_exactly_full_page_has_no_next_cursor(client: TestClient) -> None:
    for i in range(3):
        create(client, name=f"U{i}", version=f"1.{i}")
    page = client.get("/api/v1/updates", params={"limit": 3}).json()
    assert len(page["items"]) == 3 and page["next_cursor"] is None


def test_support_status_follows_the_end_of_support_date(client: TestClient) -> None:
    yesterday = (date.today() - timedelta(days=2)).isoformat()
    ended = create(client, support={"contact": "x@example.com", "end_of_support": yesterday})
    assert ended["support_status"] == "end_of_support"


# Roles and the audit log


READ_ONLY_ROLES = ["viewer", "campaign_manager", "fleet_admin"]


def test_read_only_roles_read_and_are_refused_every_change(
    client: TestClient, engine: Engine, settings: Settings, make_operator: Callable[..., str]
) -> None:
    draft = create(client)
    assert upload(client, draft["id"], BODY).status_code == 201
    url = f"/api/v1/updates/{draft['id']}"
    before = catalog_state(engine), stored_files(settings)
    for role in READ_ONLY_ROLES:
        client.headers["Authorization"] = f"Bearer {make_operator(role, role)}"
        assert client.get("/api/v1/updates").status_code == 200
        assert client.get(url).status_code == 200
        for response, permission in [
            (client.post("/api/v1/updates", json=update_document(version="9.0")), "write"),
            (client.patch(url, json={"name": "x"}), "write"),
            (upload(client, draft["id"], BODY, "x.bin"), "write"),
            (client.delete(f"{url}/artifacts/bcm.bin"), "write"),
            (client.post(f"{url}/release"), "release"),
            (client.post(f"{url}/withdraw", json={"reason": "because"}), "release"),
        ]:
            body = error(response, 403, "forbidden")
            assert body["permission"] == f"updates.{permission}", (role, body)
        refused = [
            r for r in rows(engine, AUDIT) if r["actor"] == role and r["outcome"] == "refused"
        ]
        assert len(refused) == 6, refused
    assert (catalog_state(engine), stored_files(settings)) == before


def test_an_engineer_writes_and_releases(
    client: TestClient, engine: Engine, make_operator: Callable[..., str]
) -> None:
    client.headers["Authorization"] = f"Bearer {make_operator('engineer', 'erin')}"
    draft = create(client)
    assert draft["created_by"] == "erin"
    url = f"/api/v1/updates/{draft['id']}"
    assert client.patch(url, json={"install_order": 3}).status_code == 200
    assert upload(client, draft["id"], BODY).status_code == 201
    assert client.delete(f"{url}/artifacts/bcm.bin").status_code == 204
    # Allowed, and refused for what the draft lacks rather than for the role.
    error(client.post(f"{url}/release"), 422, "update_incomplete")
    mark_released(engine, draft["id"])
    assert client.post(f"{url}/withdraw", json={"reason": "test"}).status_code == 200


def test_without_credentials_nothing_is_answered(client: TestClient, engine: Engine) -> None:
    draft = create(client)
    anonymous = TestClient(client.app)
    url = f"/api/v1/updates/{draft['id']}"
    before = catalog_state(engine)
    for response in [
        anonymous.get("/api/v1/updates"),
        anonymous.get(url),
        anonymous.post("/api/v1/updates", json=update_document(version="9.0")),
        anonymous.patch(url, json={"name": "x"}),
        upload(anonymous, draft["id"], BODY),
        anonymous.post(f"{url}/withdraw", json={"reason": "because"}),
    ]:
        error(response, 401, "not_authenticated")
    assert catalog_state(engine) == before


def test_every_change_is_audited_in_its_transaction(
    client: TestClient, engine: Engine, make_operator: Callable[..., str]
) -> None:
    draft = create(client)
    uid = draft["id"]
    url = f"/api/v1/updates/{uid}"
    client.patch(url, json={"release_notes": "Better notes"}, headers={"X-Request-ID": "r-edit"})
    sha = upload(client, uid, BODY).json()["plaintext_sha256"]
    assert client.delete(f"{url}/artifacts/bcm.bin").status_code == 204
    mark_released(engine, uid)
    client.post(f"{url}/withdraw", json={"reason": "Superseded by 4.2.1"})
    # Refused and failed attempts leave no success entry behind.
    error(client.patch(url, json={"name": "late"}), 409, "update_immutable")

    response = client.get("/api/v1/audit", params={"object_type": "update", "object_id": str(uid)})
    assert response.status_code == 200, response.text
    entries = response.json()["items"][::-1]
    assert [e["action"] for e in entries] == [
        "update.create",
        "update.edit",
        "update.artifact.upload",
        "update.artifact.delete",
        "update.withdraw",
    ]
    assert {e["actor"] for e in entries} == {"test-admin"}
    assert {e["outcome"] for e in entries} == {"success"}

    raw = {r["action"]: r for r in rows(engine, AUDIT) if r["object_id"] == str(uid)}
    assert raw["update.create"]["after"] == {
        "name": "BCM comfort fixes",
        "version": "4.2.0",
        "ecu_type": "BCM",
        "software_part_number": "5Q0937084AC",
        "state": "draft",
    }
    assert raw["update.edit"]["after"]["fields"] == ["release_notes"]
    assert raw["update.edit"]["request_id"] == "r-edit"
    assert raw["update.artifact.upload"]["after"] == {
        "filename": "bcm.bin",
        "length": len(BODY),
        "sha256": sha,
        "encrypted": False,
    }
    assert raw["update.artifact.delete"]["before"] == {"filename": "bcm.bin", "sha256": sha}
    assert raw["update.withdraw"]["detail"] == "Superseded by 4.2.1"
    assert raw["update.withdraw"]["before"]["state"] == "released"
    assert raw["update.withdraw"]["after"]["state"] == "withdrawn"

    with unit_of_work(make_session_factory(engine)) as session:
        checked, broken = audit.verify(session)
    assert broken is None and checked >= 5
