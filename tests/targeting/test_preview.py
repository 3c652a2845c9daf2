"""The bulk preview against the pure definition, and the targeting endpoints.

The property test builds random small fleets and random released updates in a real database
(SQLite and PostgreSQL) and checks that the SQL preview gives every vehicle exactly the reason
`eligibility.evaluate` gives it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from otacm.db import make_session_factory, unit_of_work, utcnow
from otacm.fleet.models import Ecu, Vehicle
from otacm.targeting import preview, service
from otacm.targeting.eligibility import Reason, RegionRule, evaluate
from otacm.targeting.schemas import PreviewRequest, RegionRestriction
from otacm.updates.models import SoftwareUpdate
from otacm.updates.versions import sortable_version
from tests.builders import vin

MODELS = ["Nordra", "Castellan", "Haulix"]
FUELS = ["electric", "petrol", "diesel"]
REGIONS = ["EU", "NA", "CN"]
VERSIONS = ["3.0.0", "3.2.0", "4.0.0", "4.01", "4.1", "4.1.0", "4.9.2", "4.10.0", "5.0-rc1"]
HARDWARE = ["HW-A", "HW-B"]
REVISIONS = ["B1", "B2"]
PROTOCOLS = ["CAN", "CAN_FD"]
serials = itertools.count()


def add_vehicle(session: Any, n: int, *, status: str = "active", **fields: Any) -> Vehicle:
    now = utcnow()
    vehicle = Vehicle(
        vin=vin(n),
        engine_number=f"E{n}",
        chassis_number=f"C{n}",
        model=fields.get("model", "Nordra"),
        model_year=fields.get("model_year", 2024),
        fuel_type=fields.get("fuel_type", "electric"),
        region=fields.get("region", "EU"),
        country=fields.get("country", "DE"),
        manufactured_at=now,
        exported_at=now,
        status=status,
        attributes={},
        created_at=now,
        updated_at=now,
    )
    session.add(vehicle)
    session.flush()
    return vehicle


def add_ecu(session: Any, vehicle: Vehicle, ecu_type: str, **fields: Any) -> Ecu:
    now = utcnow()
    ecu = Ecu(
        vehicle_id=vehicle.id,
        ecu_type=ecu_type,
        serial=f"{ecu_type}-{next(serials)}",
        hardware_part_number=fields.get("hardware_part_number", "HW-A"),
        hardware_version=fields.get("hardware_version", "B1"),
        protocol=fields.get("protocol", "CAN"),
        software_part_number="SW",
        software_version=fields.get("software_version", "4.0.0"),
        software_source="import",
        software_observed_at=now,
        removed_at=fields.get("removed_at"),
        updated_at=now,
    )
    session.add(ecu)
    return ecu


def add_update(session: Any, update_id: int, **fields: Any) -> SoftwareUpdate:
    now = utcnow()
    version = fields.get("version", "4.1.0")
    update = SoftwareUpdate(
        id=update_id,
        name=f"update {update_id}",
        version=version,
        version_sort=sortable_version(version),
        ecu_type=fields.get("ecu_type", "BCM"),
        software_part_number=f"SW-{update_id}",
        protocol=fields.get("protocol", "CAN"),
        category="bug_fix",
        state=fields.get("state", "released"),
        confidential=False,
        compatible_models=fields.get("compatible_models", MODELS),
        model_year_min=fields.get("model_year_min"),
        model_year_max=fields.get("model_year_max"),
        fuel_types=fields.get("fuel_types", FUELS),
        hardware_part_numbers=fields.get("hardware_part_numbers", ["HW-A"]),
        hardware_versions=fields.get("hardware_versions", ["B1", "B2"]),
        applicable_versions=fields.get("applicable_versions", []),
        applicable_version_min=fields.get("applicable_version_min"),
        applicable_version_max=fields.get("applicable_version_max"),
        dependencies=fields.get("dependencies", []),
        release_notes="",
        preconditions={},
        install_order=fields.get("install_order", 0),
        regulatory={},
        release_counter=fields.get("release_counter", update_id),
        created_at=now,
        created_by="test",
        updated_at=now,
    )
    session.add(update)
    session.flush()
    return update


def expected_reasons(
    session: Any, request: PreviewRequest, regions: RegionRule
) -> dict[str, Reason]:
    updates = service.targetable_updates(session, request.update_ids)
    rules = [service.rule_of(u) for u in updates]
    counters = service.known_counters(session)
    found: dict[str, Reason] = {}
    for vehicle in session.scalars(select(Vehicle)):
        ecus = session.scalars(
            select(Ecu).where(Ecu.vehicle_id == vehicle.id, Ecu.removed_at.is_(None))
        ).all()
        busy = bool(set(preview.busy_ecu_types(session, vehicle.id)) & {r.ecu_type for r in rules})
        decision = evaluate(
            service.vehicle_facts(vehicle, busy=busy),
            [service.ecu_facts(e) for e in ecus],
            rules,
            regions=regions,
            known_counters=counters,
            allow_downgrade=request.allow_downgrade,
        )
        found[vehicle.vin] = decision.reason
    return found


def sql_reasons(session: Any, request: PreviewRequest) -> dict[str, Reason]:
    return {row["vin"]: Reason(row["reason"]) for row in service.preview_rows(session, request, [])}


# The property -----------------------------------------------------------------------------

ecu_st = st.fixed_dictionaries(
    {
        "ecu_type": st.sampled_from(["BCM", "GATEWAY"]),
        "hardware_part_number": st.sampled_from(HARDWARE),
        "hardware_version": st.sampled_from(REVISIONS),
        "protocol": st.sampled_from(PROTOCOLS),
        "software_version": st.sampled_from(VERSIONS),
        "removed": st.booleans(),
    }
)
vehicle_st = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "model_year": st.integers(2020, 2026),
        "fuel_type": st.sampled_from(FUELS),
        "region": st.sampled_from(REGIONS),
        "status": st.sampled_from(["active", "active", "active", "inactive"]),
        "ecus": st.lists(ecu_st, max_size=4),
    }
)
maybe_version = st.none() | st.sampled_from(VERSIONS)
update_st = st.fixed_dictionaries(
    {
        "version": st.sampled_from(VERSIONS),
        "protocol": st.sampled_from(PROTOCOLS),
        "compatible_models": st.lists(st.sampled_from(MODELS), min_size=1, unique=True),
        "model_year_min": st.none() | st.integers(2020, 2024),
        "model_year_max": st.none() | st.integers(2023, 2026),
        "fuel_types": st.lists(st.sampled_from(FUELS), min_size=1, unique=True),
        "hardware_part_numbers": st.lists(st.sampled_from(HARDWARE), min_size=1, unique=True),
        "hardware_versions": st.lists(st.sampled_from(REVISIONS), min_size=1, unique=True),
        "applicable_versions": st.lists(st.sampled_from(VERSIONS), max_size=2, unique=True),
        "applicable_version_min": maybe_version,
        "applicable_version_max": st.none(),
        "release_counter": st.integers(1, 5),
    }
)


@pytest.fixture
def factory(engine: Engine) -> Callable[[], Any]:
    return lambda: unit_of_work(make_session_factory(engine))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    vehicles=st.lists(vehicle_st, min_size=1, max_size=12),
    bcm=update_st,
    gateway=st.none() | update_st,
    needs_gateway=st.none() | maybe_version,
    allowed_regions=st.lists(st.sampled_from(REGIONS), max_size=2, unique=True),
    allow_downgrade=st.booleans(),
)
def test_the_sql_preview_agrees_with_the_pure_rules(
    factory: Callable[[], Any],
    vehicles: list[dict[str, Any]],
    bcm: dict[str, Any],
    gateway: dict[str, Any] | None,
    needs_gateway: str | None,
    allowed_regions: list[str],
    allow_downgrade: bool,
) -> None:
    with factory() as session:
        session.execute(delete(Ecu))
        session.execute(delete(Vehicle))
        session.execute(delete(SoftwareUpdate))
        for n, spec in enumerate(vehicles):
            fields = {k: v for k, v in spec.items() if k != "ecus"}
            vehicle = add_vehicle(session, n, **fields)
            for ecu in spec["ecus"]:
                removed = utcnow() if ecu["removed"] else None
                add_ecu(
                    session,
                    vehicle,
                    **{k: v for k, v in ecu.items() if k != "removed"},
                    removed_at=removed,
                )
        dependencies = (
            [{"ecu_type": "GATEWAY", "min_version": needs_gateway}]
            if needs_gateway is not None
            else []
        )
        add_update(session, 1, ecu_type="BCM", dependencies=dependencies, **bcm)
        ids = [1]
        if gateway is not None:
            add_update(session, 2, ecu_type="GATEWAY", **gateway)
            ids.append(2)
        # An older release of another version, whose counter can block downgrades.
        add_update(
            session, 3, ecu_type="BCM", version="4.9.2", release_counter=9, state="withdrawn"
        )
    request = PreviewRequest(
        update_ids=ids,
        regions=RegionRestriction.model_validate({"allowed_regions": allowed_regions}),
        allow_downgrade=allow_downgrade,
    )
    rule = RegionRule(allowed_regions=frozenset(allowed_regions))
    with factory() as session:
        assert sql_reasons(session, request) == expected_reasons(session, request, rule)
        counts = service.run_preview(session, request)
    expected_counts: dict[Reason, int] = {}
    for reason in expected_reasons_cache(factory, request, rule).values():
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
    assert {r.reason: r.vehicles for r in counts.reasons} == expected_counts
    assert counts.vehicles_selected == len(vehicles)


def expected_reasons_cache(
    factory: Callable[[], Any], request: PreviewRequest, rule: RegionRule
) -> dict[str, Reason]:
    with factory() as session:
        return expected_reasons(session, request, rule)


# Endpoints --------------------------------------------------------------------------------


@pytest.fixture
def fleet(factory: Callable[[], Any]) -> Iterator[None]:
    with factory() as session:
        versions = ["4.0.0", "4.0.0", "4.1.0", "4.2.0", "3.9.0"]
        for n, version in enumerate(versions):
            v = add_vehicle(session, n, model="Nordra" if n < 4 else "Castellan")
            add_ecu(session, v, "BCM", software_version=version)
            add_ecu(session, v, "GATEWAY", software_version="3.2.0" if n != 1 else "3.0.0")
        add_vehicle(session, 10, status="scrapped")
        v = add_vehicle(session, 11, region="CN", country="CN")
        add_ecu(session, v, "BCM", software_version="4.0.0")
        add_update(
            session,
            1,
            version="4.2.0",
            compatible_models=["Nordra"],
            applicable_version_min="4.0.0",
            dependencies=[{"ecu_type": "GATEWAY", "min_version": "3.2.0"}],
        )
        add_update(session, 2, version="9.9.9", state="draft")
    yield


def test_preview_endpoint_counts_every_reason(client: TestClient, fleet: None) -> None:
    response = client.post(
        "/api/v1/targeting/preview",
        json={"update_ids": [1], "regions": {"excluded_regions": ["CN"]}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    reasons = {r["reason"]: r["vehicles"] for r in body["reasons"]}
    assert reasons == {
        "eligible": 2,
        "dependency_unmet": 1,
        "already_up_to_date": 1,
        "model_incompatible": 1,
        "vehicle_inactive": 1,
        "region_not_allowed": 1,
    }
    assert body["vehicles_selected"] == 7
    assert body["vehicles_eligible"] == 2
    assert body["ecus_eligible"] == 2
    eligible = next(r for r in body["reasons"] if r["reason"] == "eligible")
    assert eligible["sample_vins"] == sorted([vin(0), vin(2)])
    assert body["breakdowns"]["model"]["Castellan"] == {"model_incompatible": 1}
    [installed] = body["installed_versions"]
    assert installed["versions"]["4.0.0"] == {
        "eligible": 1,
        "dependency_unmet": 1,
        "region_not_allowed": 1,
    }


def test_preview_refuses_unreleased_or_unknown_updates(client: TestClient, fleet: None) -> None:
    draft = client.post("/api/v1/targeting/preview", json={"update_ids": [2]})
    assert draft.status_code == 409
    assert draft.json()["error"] == "update_not_targetable"
    unknown = client.post("/api/v1/targeting/preview", json={"update_ids": [99]})
    assert unknown.status_code == 404


def test_preview_list_streams_csv_and_jsonl_filtered_by_reason(
    client: TestClient, fleet: None
) -> None:
    body = {"update_ids": [1]}
    lines = client.post(
        "/api/v1/targeting/preview/vehicles", json=body, params={"reason": "eligible"}
    ).text.splitlines()
    assert len(lines) == 2
    as_csv = client.post(
        "/api/v1/targeting/preview/vehicles",
        json=body,
        params={"format": "csv", "reason": ["eligible", "vehicle_inactive"]},
    ).text.splitlines()
    assert as_csv[0].startswith("vin,reason,")
    assert len(as_csv) == 1 + 3


def test_selection_query_narrows_the_preview(client: TestClient, fleet: None) -> None:
    response = client.post(
        "/api/v1/targeting/preview",
        json={"update_ids": [1], "selection": {"query": "model==Castellan"}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["vehicles_selected"] == 1


def test_a_vehicles_updates_and_ecu_compliance(client: TestClient, fleet: None) -> None:
    eligible = client.get(f"/api/v1/vehicles/{vin(0)}/updates").json()
    assert [v["update"]["id"] for v in eligible["applicable"]] == [1]
    bcm = next(e for e in eligible["ecus"] if e["ecu_type"] == "BCM")
    assert bcm["status"] == "update_available"
    assert bcm["latest_release"] == "4.2.0"
    current = client.get(f"/api/v1/vehicles/{vin(3)}/updates").json()
    assert current["not_applicable"][0]["reason"] == "already_up_to_date"
    assert next(e for e in current["ecus"] if e["ecu_type"] == "BCM")["status"] == "on_latest"
    assert client.get("/api/v1/vehicles/WXAAB12C0S9999999/updates").status_code == 404


def test_fleet_compliance(client: TestClient, fleet: None) -> None:
    rows = client.get("/api/v1/fleet/compliance").json()["rows"]
    by_key = {(r["ecu_type"], r["model"]): r for r in rows}
    assert by_key[("BCM", "Nordra")]["on_latest"] == 1
    assert by_key[("BCM", "Nordra")]["behind"] == 4  # three of Nordra plus the CN vehicle
    assert by_key[("GATEWAY", "Nordra")]["no_release"] == 4


def test_preview_on_an_empty_selection(client: TestClient, fleet: None) -> None:
    response = client.post(
        "/api/v1/targeting/preview",
        json={"update_ids": [1], "selection": {"vins": ["WXAAB12C0S9999999"]}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["vehicles_selected"] == 0
    assert response.json()["reasons"] == []


def test_pure_and_sql_agree_on_the_fixed_fleet(factory: Callable[[], Any], fleet: None) -> None:
    request = PreviewRequest(update_ids=[1])
    with factory() as session:
        assert sql_reasons(session, request) == expected_reasons(session, request, RegionRule())
    assert preview.REASON_OF_CODE[10] is Reason.ELIGIBLE


def test_targeting_commands(fleet: None, settings: Any, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from otacm.cli import app

    db = ["--database-url", settings.database_url]
    runner = CliRunner()
    shown = runner.invoke(app, ["targeting", "preview", "--update", "1", *db])
    assert shown.exit_code == 0, shown.output
    assert "7 vehicles selected, 2 eligible" in " ".join(shown.output.split())
    listed = tmp_path / "eligible.csv"
    written = runner.invoke(
        app,
        ["targeting", "list", "--update", "1", "--reason", "eligible", "--out", str(listed), *db],
    )
    assert written.exit_code == 0, written.output
    assert len(listed.read_text().splitlines()) == 1 + 2
    one = runner.invoke(app, ["targeting", "vehicle", vin(0), *db])
    assert one.exit_code == 0, one.output
    assert "update_available" in one.output
    bad = runner.invoke(
        app, ["targeting", "preview", "--update", "1", "--query", "model=Nordra", *db]
    )
    assert bad.exit_code != 0
    assert "position" in bad.output or "expected" in bad.output


def test_a_bad_query_answers_with_its_position(client: TestClient, fleet: None) -> None:
    response = client.post(
        "/api/v1/targeting/preview",
        json={"update_ids": [1], "selection": {"query": "model==Nordra;fuel_type=electric"}},
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_query"
    assert body["field"] == "query"
    assert body["position"] == 23
    assert "==" in body["expected"]


@pytest.mark.parametrize("abs_version", ["8.0.0", "9.0.0"])
def test_chains_and_cycles_of_dependencies_agree_with_the_rules(
    factory: Callable[[], Any], abs_version: str
) -> None:
    """BCM needs GATEWAY ≥ 3.2, the gateway update needs ABS ≥ 9, the ABS update needs the
    BCM 5 of the selection (a cycle through all three)."""
    with factory() as session:
        for n, installed in enumerate(["3.0.0", "3.5.0"]):
            v = add_vehicle(session, n)
            add_ecu(session, v, "BCM", software_version="4.0.0")
            add_ecu(session, v, "GATEWAY", software_version=installed)
            add_ecu(session, v, "ABS", software_version=abs_version)
        add_update(
            session, 1, version="5.0.0",
            dependencies=[{"ecu_type": "GATEWAY", "min_version": "3.2.0"}],
        )  # fmt: skip
        add_update(
            session, 2, ecu_type="GATEWAY", version="3.2.0",
            dependencies=[{"ecu_type": "ABS", "min_version": "9.0.0"}],
        )  # fmt: skip
        add_update(
            session, 3, ecu_type="ABS", version="9.0.0",
            dependencies=[{"ecu_type": "BCM", "min_version": "5.0.0"}],
        )  # fmt: skip
    for ids in ([1, 2], [1, 2, 3], [2, 3], [1]):
        request = PreviewRequest(update_ids=ids)
        with factory() as session:
            expected = expected_reasons(session, request, RegionRule())
            assert sql_reasons(session, request) == expected, ids


def test_many_distinct_installed_versions_are_bound_as_one_list(
    factory: Callable[[], Any],
) -> None:
    """Past SHORT_LIST versions the lists travel as one parameter (an array, or JSON)."""
    count = preview.SHORT_LIST * 2 + 5
    with factory() as session:
        for n in range(count):
            v = add_vehicle(session, n)
            add_ecu(session, v, "BCM", software_version=f"4.0.{n}")
            add_ecu(session, v, "GATEWAY", software_version=f"3.{n}.0")
        add_update(
            session, 1, version=f"4.0.{count // 2}", applicable_version_min="4.0.10",
            dependencies=[{"ecu_type": "GATEWAY", "min_version": "3.20.0"}],
        )  # fmt: skip
    request = PreviewRequest(update_ids=[1])
    with factory() as session:
        expected = expected_reasons(session, request, RegionRule())
        assert sql_reasons(session, request) == expected
        out = service.run_preview(session, request)
    assert {r.reason for r in out.reasons} == {
        Reason.ELIGIBLE,
        Reason.DEPENDENCY_UNMET,
        Reason.INSTALLED_VERSION_NOT_APPLICABLE,
        Reason.ALREADY_UP_TO_DATE,
        Reason.DOWNGRADE_BLOCKED,
    }
    versions = out.installed_versions[0].versions
    assert len(versions) == count
    assert versions[f"4.0.{count // 2}"] == {Reason.ALREADY_UP_TO_DATE: 1}


def test_a_vehicle_in_another_live_campaign_is_busy(
    factory: Callable[[], Any], fleet: None, client: TestClient
) -> None:
    from otacm.campaigns.models import Campaign, CampaignUpdate, Deployment

    now = utcnow()
    with factory() as session:
        add_update(session, 4, ecu_type="GATEWAY", version="3.3.0")
        vehicles = {v.vin: v.id for v in session.scalars(select(Vehicle))}
        # Campaign 3 is running too, but for another ECU type: it makes no one busy here.
        for n, state, update_id in [(1, "running", 1), (2, "completed", 1), (3, "running", 4)]:
            session.add(
                Campaign(
                    id=n, name=f"other {n}", category="bug_fix", urgency="immediate",
                    priority=500, state=state, created_at=now, created_by="test",
                    updated_at=now,
                )
            )  # fmt: skip
            session.flush()
            session.add(CampaignUpdate(campaign_id=n, update_id=update_id, position=0))
        session.flush()
        for campaign_id, vin_number, state in [
            (1, 0, "pending"),
            (1, 2, "succeeded"),
            (2, 3, "pending"),
            (3, 2, "offered"),
        ]:
            session.add(
                Deployment(
                    campaign_id=campaign_id, vehicle_id=vehicles[vin(vin_number)], wave=1,
                    state=state, attempts=0, state_entered_at=now, created_at=now, updated_at=now,
                )
            )  # fmt: skip
    request = PreviewRequest(update_ids=[1])
    with factory() as session:
        reasons = sql_reasons(session, request)
        assert reasons == expected_reasons(session, request, RegionRule())
    # Unfinished in a running campaign for the same ECU type: busy. Finished, in a completed
    # campaign, or for another ECU type: not.
    assert reasons[vin(0)] is Reason.BUSY_IN_OTHER_CAMPAIGN
    assert reasons[vin(2)] is Reason.ELIGIBLE
    assert reasons[vin(3)] is Reason.ALREADY_UP_TO_DATE
    view = client.get(f"/api/v1/vehicles/{vin(0)}/updates").json()
    assert view["not_applicable"][0]["reason"] == "busy_in_other_campaign"
    # Its BCM is being updated; the gateway of vehicle 2 too (campaign 3), not its BCM.
    assert {e["ecu_type"]: e["status"] for e in view["ecus"]}["BCM"] == "in_progress"
    view = client.get(f"/api/v1/vehicles/{vin(2)}/updates").json()
    assert {e["ecu_type"]: e["status"] for e in view["ecus"]}["BCM"] != "in_progress"
    rows = client.get("/api/v1/fleet/compliance").json()["rows"]
    by_key = {(r["ecu_type"], r["model"]): r for r in rows}
    assert by_key[("BCM", "Nordra")]["in_progress"] == 1
    assert by_key[("GATEWAY", "Nordra")]["in_progress"] == 1
