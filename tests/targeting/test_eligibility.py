"""Eligibility, the pure definition (`otacm/targeting/eligibility.py`), without a database.

Every reason with a minimal example; the order of the checks (a vehicle failing several gets the
earliest); model years, fuel types and ECUs; natural version order, downgrades and applicable
versions; dependencies inside a selection; several updates; region rules; the install order; and
properties over random vehicles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otacm.targeting.eligibility import (
    AWAITING_DEPENDENCIES,
    ELIGIBLE,
    STAGE,
    STAGES,
    VEHICLE_REASONS,
    DependencyRule,
    EcuFacts,
    Reason,
    RegionRule,
    UpdateRule,
    VehicleDecision,
    VehicleFacts,
    evaluate,
    install_order,
    installed_version_stage,
    vehicle_fits,
)
from otacm.updates.versions import reading_key

# A number longer than natural ordering reads (99 digits at most): an unparseable version.
UNPARSEABLE = "1." + "9" * 100


# --- builders --------------------------------------------------------------------------------


def vehicle(**changes: Any) -> VehicleFacts:
    """An active Aurora 2022, electric, in Germany, not busy: fits `update()`."""
    base = VehicleFacts(
        vin="WAUZZZ8V0JA000001",
        status="active",
        model="Aurora",
        model_year=2022,
        fuel_type="electric",
        region="EU",
        country="DE",
    )
    return replace(base, **changes)


def bcm(**changes: Any) -> EcuFacts:
    """A body control module running 1.0.0: takes `update()`."""
    base = EcuFacts(
        ecu_type="BCM",
        serial="BCM-1",
        hardware_part_number="PN-100",
        hardware_version="B1",
        protocol="UDS",
        software_version="1.0.0",
    )
    return replace(base, **changes)


def gateway(version: str = "3.1.0", **changes: Any) -> EcuFacts:
    """A gateway running `version`: takes `gw_update()` when older than 3.0.0."""
    base = bcm(
        ecu_type="GW",
        serial="GW-1",
        hardware_part_number="PN-900",
        hardware_version="G1",
        software_version=version,
    )
    return replace(base, **changes)


def update(**changes: Any) -> UpdateRule:
    """BCM 2.0.0 (release counter 5) for Aurora/Borealis 2020-2024, electric or hybrid."""
    base = UpdateRule(
        id=1,
        ecu_type="BCM",
        version="2.0.0",
        protocol="UDS",
        release_counter=5,
        compatible_models=frozenset({"Aurora", "Borealis"}),
        model_year_min=2020,
        model_year_max=2024,
        fuel_types=frozenset({"electric", "hybrid"}),
        hardware_part_numbers=frozenset({"PN-100", "PN-101"}),
        hardware_versions=frozenset({"B1", "B2"}),
    )
    return replace(base, **changes)


def gw_update(**changes: Any) -> UpdateRule:
    """Gateway 3.0.0 (id 2) for the same vehicles."""
    base = update(
        id=2,
        ecu_type="GW",
        version="3.0.0",
        hardware_part_numbers=frozenset({"PN-900"}),
        hardware_versions=frozenset({"G1"}),
    )
    return replace(base, **changes)


def needs_gateway(min_version: str | None = "3.0.0", max_version: str | None = None) -> UpdateRule:
    """`update()` that needs a gateway in [min_version, max_version]."""
    return update(dependencies=(DependencyRule("GW", min_version, max_version),))


def reason_of(
    v: VehicleFacts, ecus: Sequence[EcuFacts], u: UpdateRule | Sequence[UpdateRule], **kw: Any
) -> Reason:
    updates = [u] if isinstance(u, UpdateRule) else list(u)
    return evaluate(v, ecus, updates, **kw).reason


def decision_of(decision: VehicleDecision, update_id: int) -> Reason:
    (found,) = [d for d in decision.updates if d.update_id == update_id]
    return found.reason


def counters_for(ecu_type: str, version: str, counter: int) -> dict[tuple[str, str], int]:
    """Known release counters keyed as `service.known_counters` builds them: how the version
    reads (`reading_key`), so 4.1 and 4.01 share an entry."""
    return {(ecu_type, reading_key(version)): counter}


# --- every reason, with a minimal example ----------------------------------------------------

EXAMPLES: dict[Reason, tuple[VehicleFacts, list[EcuFacts], list[UpdateRule], dict[str, Any]]] = {
    Reason.ELIGIBLE: (vehicle(), [bcm()], [update()], {}),
    Reason.MODEL_INCOMPATIBLE: (vehicle(model="Zephyr"), [bcm()], [update()], {}),
    Reason.FUEL_TYPE_INCOMPATIBLE: (vehicle(fuel_type="diesel"), [bcm()], [update()], {}),
    Reason.NO_MATCHING_ECU: (vehicle(), [gateway()], [update()], {}),
    Reason.HARDWARE_INCOMPATIBLE: (
        vehicle(),
        [bcm(hardware_part_number="PN-999")],
        [update()],
        {},
    ),
    Reason.PROTOCOL_MISMATCH: (vehicle(), [bcm(protocol="DoIP")], [update()], {}),
    Reason.DOWNGRADE_BLOCKED: (vehicle(), [bcm(software_version="2.1.0")], [update()], {}),
    Reason.ALREADY_UP_TO_DATE: (vehicle(), [bcm(software_version="2.0.0")], [update()], {}),
    Reason.INSTALLED_VERSION_NOT_APPLICABLE: (
        vehicle(),
        [bcm()],
        [update(applicable_versions=frozenset({"1.5.0"}))],
        {},
    ),
    Reason.DEPENDENCY_UNMET: (vehicle(), [bcm(), gateway("2.0.0")], [needs_gateway()], {}),
    Reason.REGION_NOT_ALLOWED: (
        vehicle(),
        [bcm()],
        [update()],
        {"regions": RegionRule(allowed_regions=frozenset({"NA"}))},
    ),
    Reason.VEHICLE_INACTIVE: (vehicle(status="scrapped"), [bcm()], [update()], {}),
    Reason.BUSY_IN_OTHER_CAMPAIGN: (vehicle(busy=True), [bcm()], [update()], {}),
}


def test_every_reason_has_an_example() -> None:
    assert set(EXAMPLES) == set(Reason)
    assert set(STAGES) | set(VEHICLE_REASONS) == set(Reason)
    assert not set(STAGES) & set(VEHICLE_REASONS)


@pytest.mark.parametrize("reason", list(EXAMPLES), ids=str)
def test_minimal_example(reason: Reason) -> None:
    v, ecus, updates, kw = EXAMPLES[reason]
    assert reason_of(v, ecus, updates, **kw) is reason


def test_the_stage_table_is_the_documented_one() -> None:
    assert [(STAGE[r], r.value) for r in STAGES] == [
        (1, "model_incompatible"),
        (2, "fuel_type_incompatible"),
        (3, "no_matching_ecu"),
        (4, "hardware_incompatible"),
        (5, "protocol_mismatch"),
        (6, "downgrade_blocked"),
        (7, "already_up_to_date"),
        (8, "installed_version_not_applicable"),
        (9, "dependency_unmet"),
        (10, "eligible"),
    ]
    assert AWAITING_DEPENDENCIES == 9 and ELIGIBLE == 10
    assert VEHICLE_REASONS == (
        Reason.VEHICLE_INACTIVE,
        Reason.REGION_NOT_ALLOWED,
        Reason.BUSY_IN_OTHER_CAMPAIGN,
    )


def test_an_eligible_decision_names_the_ecu_and_others_name_none() -> None:
    decision = evaluate(vehicle(), [bcm(), gateway()], [update()])
    assert decision.reason is Reason.ELIGIBLE
    assert decision.updates[0].ecu_serials == ("BCM-1",)
    assert decision.updates[0].stage == ELIGIBLE
    for reason, (v, ecus, updates, kw) in EXAMPLES.items():
        if reason is not Reason.ELIGIBLE and reason not in VEHICLE_REASONS:
            (d,) = evaluate(v, ecus, updates, **kw).updates
            assert d.reason is reason and d.ecu_serials == ()


# --- precedence of the stages ----------------------------------------------------------------

# One way to fail each per-update check, in stage order; they combine freely.
FAILURES = (
    "model",
    "fuel",
    "no_ecu",
    "hardware",
    "protocol",
    "downgrade",
    "up_to_date",
    "not_applicable",
    "dependency",
)


def failing(
    failures: set[str],
) -> tuple[VehicleFacts, list[EcuFacts], UpdateRule, dict[tuple[str, str], int]]:
    v, ecu, gw = vehicle(), bcm(), gateway("3.1.0")
    u = needs_gateway("3.0.0")
    if "model" in failures:
        v = replace(v, model="Zephyr")
    if "fuel" in failures:
        v = replace(v, fuel_type="diesel")
    if "no_ecu" in failures:
        ecu = replace(ecu, ecu_type="ABS")
    if "hardware" in failures:
        ecu = replace(ecu, hardware_part_number="PN-999")
    if "protocol" in failures:
        ecu = replace(ecu, protocol="DoIP")
    if "up_to_date" in failures:
        ecu = replace(ecu, software_version=u.version)
    counters: dict[tuple[str, str], int] = {}
    if "downgrade" in failures:
        # A released image of the installed version carries a higher release counter; this
        # combines with every other failure, including "installed is the update's version".
        counters = counters_for("BCM", ecu.software_version, u.release_counter + 1)
    if "not_applicable" in failures:
        u = replace(u, applicable_versions=frozenset({"0.1.0"}))
    if "dependency" in failures:
        gw = replace(gw, software_version="2.0.0")
    return v, [ecu, gw], u, counters


def test_the_failure_builder_fails_nothing_by_default() -> None:
    v, ecus, u, counters = failing(set())
    assert reason_of(v, ecus, u, known_counters=counters) is Reason.ELIGIBLE


@pytest.mark.parametrize("index", range(len(FAILURES)), ids=FAILURES)
def test_each_failure_alone_gives_its_stage(index: int) -> None:
    v, ecus, u, counters = failing({FAILURES[index]})
    assert reason_of(v, ecus, u, known_counters=counters) is STAGES[index]


@pytest.mark.parametrize(
    ("first", "second"),
    list(combinations(range(len(FAILURES)), 2)),
    ids=[f"{FAILURES[a]}+{FAILURES[b]}" for a, b in combinations(range(len(FAILURES)), 2)],
)
def test_of_two_failures_the_earlier_stage_wins(first: int, second: int) -> None:
    v, ecus, u, counters = failing({FAILURES[first], FAILURES[second]})
    assert reason_of(v, ecus, u, known_counters=counters) is STAGES[first]


def test_of_any_failures_the_earliest_stage_wins() -> None:
    for size in range(1, len(FAILURES) + 1):
        for chosen in combinations(range(len(FAILURES)), size):
            v, ecus, u, counters = failing({FAILURES[i] for i in chosen})
            got = reason_of(v, ecus, u, known_counters=counters)
            assert got is STAGES[min(chosen)], [FAILURES[i] for i in chosen]


def test_downgrade_by_version_precedes_not_applicable_and_dependencies() -> None:
    u = replace(needs_gateway(), applicable_versions=frozenset({"0.1.0"}))
    ecus = [bcm(software_version="9.0.0"), gateway("1.0.0")]
    assert reason_of(vehicle(), ecus, u) is Reason.DOWNGRADE_BLOCKED


def test_up_to_date_precedes_not_applicable_and_dependencies() -> None:
    u = replace(needs_gateway(), applicable_versions=frozenset({"0.1.0"}))
    ecus = [bcm(software_version="2.0.0"), gateway("1.0.0")]
    assert reason_of(vehicle(), ecus, u) is Reason.ALREADY_UP_TO_DATE


def test_an_ecu_of_another_type_is_never_checked_for_hardware() -> None:
    # The gateway's hardware is in no list of the BCM update: still "no BCM", not "hardware".
    other = bcm(ecu_type="GW", hardware_part_number="PN-999", protocol="DoIP")
    assert reason_of(vehicle(), [other], update()) is Reason.NO_MATCHING_ECU


# --- vehicle-level reasons -------------------------------------------------------------------

VEHICLE_FAILURES = ("inactive", "region", "busy")


def vehicle_failing(failures: set[str], **changes: Any) -> tuple[VehicleFacts, RegionRule]:
    v = vehicle(**changes)
    if "inactive" in failures:
        v = replace(v, status="inactive")
    if "busy" in failures:
        v = replace(v, busy=True)
    excluded = frozenset({v.region}) if "region" in failures else frozenset()
    return v, RegionRule(excluded_regions=excluded)


@pytest.mark.parametrize(
    "chosen",
    [c for n in range(1, 4) for c in combinations(range(3), n)],
    ids=lambda c: "+".join(VEHICLE_FAILURES[i] for i in c),
)
def test_vehicle_reasons_in_order_inactive_region_busy(chosen: tuple[int, ...]) -> None:
    v, regions = vehicle_failing({VEHICLE_FAILURES[i] for i in chosen})
    assert reason_of(v, [bcm()], update(), regions=regions) is VEHICLE_REASONS[min(chosen)]


@pytest.mark.parametrize("vehicle_failure", VEHICLE_FAILURES)
@pytest.mark.parametrize("update_failure", [None, *FAILURES])
def test_vehicle_reasons_precede_every_update_reason(
    vehicle_failure: str, update_failure: str | None
) -> None:
    v, ecus, u, counters = failing({update_failure} if update_failure else set())
    v, regions = vehicle_failing({vehicle_failure}, model=v.model, fuel_type=v.fuel_type)
    decision = evaluate(v, ecus, [u], regions=regions, known_counters=counters)
    assert decision.reason is VEHICLE_REASONS[VEHICLE_FAILURES.index(vehicle_failure)]
    # The per-update answer is still there, as if the vehicle were free.
    expected = STAGES[FAILURES.index(update_failure)] if update_failure else Reason.ELIGIBLE
    assert [d.reason for d in decision.updates] == [expected]


@pytest.mark.parametrize("status", ["inactive", "scrapped", "Active", "ACTIVE", "", "active "])
def test_any_status_but_active_is_inactive(status: str) -> None:
    assert reason_of(vehicle(status=status), [bcm()], update()) is Reason.VEHICLE_INACTIVE


def test_no_region_rule_and_an_empty_one_allow_everything() -> None:
    v = vehicle(region="MEA", country="AE")
    assert reason_of(v, [bcm()], update()) is Reason.ELIGIBLE
    assert reason_of(v, [bcm()], update(), regions=RegionRule()) is Reason.ELIGIBLE


# --- the vehicle: model, model year, fuel type -----------------------------------------------


@pytest.mark.parametrize(
    ("year_min", "year_max", "year", "fits"),
    [
        (2020, 2024, 2020, True),
        (2020, 2024, 2024, True),
        (2020, 2024, 2022, True),
        (2020, 2024, 2019, False),
        (2020, 2024, 2025, False),
        (2022, 2022, 2022, True),
        (2022, 2022, 2023, False),
        (None, 2024, 1990, True),
        (None, 2024, 2024, True),
        (None, 2024, 2025, False),
        (2020, None, 2099, True),
        (2020, None, 2020, True),
        (2020, None, 2019, False),
        (None, None, 1900, True),
        (None, None, 2100, True),
    ],
)
def test_model_year_bounds_are_inclusive_and_optional(
    year_min: int | None, year_max: int | None, year: int, fits: bool
) -> None:
    u = update(model_year_min=year_min, model_year_max=year_max)
    expected = Reason.ELIGIBLE if fits else Reason.MODEL_INCOMPATIBLE
    assert reason_of(vehicle(model_year=year), [bcm()], u) is expected
    assert vehicle_fits(vehicle(model_year=year), u) == (None if fits else 1)


@pytest.mark.parametrize(
    ("model", "fits"),
    [("Aurora", True), ("Borealis", True), ("Zephyr", False), ("aurora", False), ("", False)],
)
def test_the_model_must_be_in_the_list(model: str, fits: bool) -> None:
    expected = Reason.ELIGIBLE if fits else Reason.MODEL_INCOMPATIBLE
    assert reason_of(vehicle(model=model), [bcm()], update()) is expected


def test_a_model_in_the_list_out_of_the_years_is_model_incompatible() -> None:
    assert reason_of(vehicle(model_year=2030), [bcm()], update()) is Reason.MODEL_INCOMPATIBLE


@pytest.mark.parametrize(
    ("fuel_type", "fits"),
    [("electric", True), ("hybrid", True), ("diesel", False), ("petrol", False), ("", False)],
)
def test_fuel_types(fuel_type: str, fits: bool) -> None:
    expected = Reason.ELIGIBLE if fits else Reason.FUEL_TYPE_INCOMPATIBLE
    assert reason_of(vehicle(fuel_type=fuel_type), [bcm()], update()) is expected
    assert vehicle_fits(vehicle(fuel_type=fuel_type), update()) == (None if fits else 2)


def test_a_single_fuel_type_update() -> None:
    u = update(fuel_types=frozenset({"diesel"}))
    assert reason_of(vehicle(fuel_type="diesel"), [bcm()], u) is Reason.ELIGIBLE
    assert reason_of(vehicle(fuel_type="electric"), [bcm()], u) is Reason.FUEL_TYPE_INCOMPATIBLE


# --- the ECUs: hardware, protocol, several of one type ---------------------------------------


@pytest.mark.parametrize(
    ("part_number", "hardware_version", "fits"),
    [
        ("PN-100", "B1", True),
        ("PN-101", "B2", True),
        ("PN-100", "B2", True),
        ("PN-999", "B1", False),
        ("PN-100", "B9", False),
        ("PN-999", "B9", False),
    ],
)
def test_hardware_part_number_and_version_must_both_be_listed(
    part_number: str, hardware_version: str, fits: bool
) -> None:
    ecu = bcm(hardware_part_number=part_number, hardware_version=hardware_version)
    expected = Reason.ELIGIBLE if fits else Reason.HARDWARE_INCOMPATIBLE
    assert reason_of(vehicle(), [ecu], update()) is expected


def test_the_protocol_must_be_the_updates() -> None:
    assert reason_of(vehicle(), [bcm(protocol="DoIP")], update()) is Reason.PROTOCOL_MISMATCH
    u = update(protocol="DoIP")
    assert reason_of(vehicle(), [bcm(protocol="DoIP")], u) is Reason.ELIGIBLE


def test_no_ecu_at_all() -> None:
    assert reason_of(vehicle(), [], update()) is Reason.NO_MATCHING_ECU


def test_ecu_types_are_compared_exactly() -> None:
    assert reason_of(vehicle(), [bcm(ecu_type="bcm")], update()) is Reason.NO_MATCHING_ECU


def test_of_several_ecus_of_the_type_the_furthest_decides_and_is_named() -> None:
    wrong_hardware = bcm(serial="BCM-A", hardware_part_number="PN-999")
    fits = bcm(serial="BCM-B")
    decision = evaluate(vehicle(), [wrong_hardware, fits], [update()])
    assert decision.reason is Reason.ELIGIBLE
    assert decision.updates[0].ecu_serials == ("BCM-B",)


def test_several_eligible_ecus_of_the_type_are_all_named_sorted() -> None:
    ecus = [bcm(serial="BCM-2"), bcm(serial="BCM-1"), bcm(serial="BCM-3", protocol="DoIP")]
    decision = evaluate(vehicle(), ecus, [update()])
    assert decision.reason is Reason.ELIGIBLE
    assert decision.updates[0].ecu_serials == ("BCM-1", "BCM-2")
    assert decision.eligible_updates == decision.updates


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (bcm(hardware_version="B9"), bcm(protocol="DoIP"), Reason.PROTOCOL_MISMATCH),
        (bcm(protocol="DoIP"), bcm(software_version="3.0.0"), Reason.DOWNGRADE_BLOCKED),
        (bcm(software_version="3.0.0"), bcm(software_version="2.0.0"), Reason.ALREADY_UP_TO_DATE),
        (bcm(software_version="2.0.0"), bcm(software_version="0.5.0"), Reason.ELIGIBLE),
    ],
)
def test_of_two_ecus_of_the_type_the_further_one_decides(
    first: EcuFacts, second: EcuFacts, expected: Reason
) -> None:
    u = update(applicable_versions=frozenset({"0.5.0"}))
    a, b = replace(first, serial="A"), replace(second, serial="B")
    assert reason_of(vehicle(), [a, b], u) is expected
    assert reason_of(vehicle(), [b, a], u) is expected


def test_an_up_to_date_ecu_and_an_older_one_only_the_older_takes_it() -> None:
    ecus = [bcm(serial="NEW", software_version="2.0.0"), bcm(serial="OLD")]
    assert evaluate(vehicle(), ecus, [update()]).updates[0].ecu_serials == ("OLD",)


def test_several_ecus_waiting_for_a_dependency_name_none() -> None:
    ecus = [bcm(serial="A"), bcm(serial="B"), gateway("1.0.0")]
    (d,) = evaluate(vehicle(), ecus, [needs_gateway()]).updates
    assert d.reason is Reason.DEPENDENCY_UNMET and d.ecu_serials == ()


def test_removed_ecus_are_left_out_by_the_caller() -> None:
    # `evaluate` takes the vehicle's fitted ECUs: it neither knows nor filters removed ones.
    removed = bcm(serial="REMOVED")
    fitted = [gateway()]
    assert reason_of(vehicle(), fitted, update()) is Reason.NO_MATCHING_ECU
    assert reason_of(vehicle(), [removed, *fitted], update()) is Reason.ELIGIBLE
    # The same holds for dependencies: only the ECUs given can satisfy one.
    assert reason_of(vehicle(), [bcm()], needs_gateway()) is Reason.DEPENDENCY_UNMET


# --- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "target"),
    [
        ("4.9.2", "4.10.0"),
        ("4.10.0", "4.10.1"),
        ("SW.04.12.003", "SW.4.12.10"),
        ("SW.4.9.999", "SW.04.12.003"),
        ("1.2.0-rc1", "1.2.0"),
        ("1.2.0-rc1", "1.2.0-rc2"),
        ("1.2.0-alpha", "1.2.0-beta"),
        ("1.2.0", "1.2.0.1"),
        ("1.2.a", "1.2.3"),
        ("v1.9", "v1.10"),
        ("R2023B", "R2024A"),
        ("2", "10"),
    ],
)
def test_natural_order_older_installed_takes_newer_and_newer_blocks_older(
    installed: str, target: str
) -> None:
    upgrade = update(version=target)
    assert reason_of(vehicle(), [bcm(software_version=installed)], upgrade) is Reason.ELIGIBLE
    downgrade = update(version=installed)
    got = reason_of(vehicle(), [bcm(software_version=target)], downgrade)
    assert got is Reason.DOWNGRADE_BLOCKED


@pytest.mark.parametrize(
    ("installed", "target", "stage"),
    [
        ("4.9.2", "4.10.0", 9),
        ("4.10.0", "4.9.2", 6),
        ("1.2.0", "1.2.0-rc1", 6),
        ("1.2.0-rc1", "1.2.0", 9),
        ("2.0.0", "2.0.0", 7),
        ("SW.04.12.003", "SW.04.12.003", 7),
        (UNPARSEABLE, "2.0.0", 8),
        ("1.0.0", UNPARSEABLE, 8),
    ],
)
def test_installed_version_stage(installed: str, target: str, stage: int) -> None:
    assert installed_version_stage(installed, update(version=target), {}) == stage


def test_the_same_text_is_up_to_date() -> None:
    for version in ("2.0.0", "SW.04.12.003", "1.2.0-rc1", "R2024A"):
        ecu = bcm(software_version=version)
        assert reason_of(vehicle(), [ecu], update(version=version)) is Reason.ALREADY_UP_TO_DATE


@pytest.mark.parametrize(
    ("installed", "target"),
    [
        ("4.01", "4.1"),
        ("4.1", "4.01"),
        ("SW.04.12.003", "SW.4.12.3"),
        ("SW.4.12.3", "SW.04.12.003"),
        ("1.2.0-RC1", "1.2.0-rc1"),
        ("1_2_0", "1.2.0"),
    ],
)
def test_the_same_version_written_differently_is_up_to_date(installed: str, target: str) -> None:
    ecu = bcm(software_version=installed)
    assert reason_of(vehicle(), [ecu], update(version=target)) is Reason.ALREADY_UP_TO_DATE


def test_downgrade_blocked_by_a_higher_release_counter_of_the_installed_version() -> None:
    # 1.5.0 is older than 2.0.0 but was released later (a hotfix train) with counter 9 > 5.
    ecu = bcm(software_version="1.5.0")
    counters = counters_for("BCM", "1.5.0", 9)
    assert reason_of(vehicle(), [ecu], update(), known_counters=counters) is (
        Reason.DOWNGRADE_BLOCKED
    )
    assert installed_version_stage("1.5.0", update(), counters) == 6


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ({}, Reason.ELIGIBLE),
        (counters_for("BCM", "1.0.0", 6), Reason.DOWNGRADE_BLOCKED),
        (counters_for("BCM", "1.0.0", 5), Reason.ELIGIBLE),  # equal: not higher
        (counters_for("BCM", "1.0.0", 1), Reason.ELIGIBLE),
        (counters_for("GW", "1.0.0", 9), Reason.ELIGIBLE),  # another ECU type
        (counters_for("BCM", "1.0.1", 9), Reason.ELIGIBLE),  # another version
        # The key is how the version reads (`reading_key`), never the plain version.
        ({("BCM", "1.0.0"): 9}, Reason.ELIGIBLE),
        (
            {**counters_for("BCM", "1.0.0", 9), **counters_for("BCM", "1.0.1", 1)},
            Reason.DOWNGRADE_BLOCKED,
        ),
    ],
)
def test_known_counters_are_keyed_by_ecu_type_and_reading(
    counters: dict[tuple[str, str], int], expected: Reason
) -> None:
    assert reason_of(vehicle(), [bcm()], update(), known_counters=counters) is expected


def test_a_higher_counter_of_the_updates_own_version_blocks_before_up_to_date() -> None:
    counters = counters_for("BCM", "2.0.0", 9)
    ecu = bcm(software_version="2.0.0")
    assert reason_of(vehicle(), [ecu], update(), known_counters=counters) is (
        Reason.DOWNGRADE_BLOCKED
    )


def test_a_higher_counter_of_the_installed_version_written_differently_blocks() -> None:
    counters = counters_for("BCM", "4.1", 9)
    ecu = bcm(software_version="4.01")
    u = update(version="5.0")
    assert reason_of(vehicle(), [ecu], u, known_counters=counters) is Reason.DOWNGRADE_BLOCKED


@pytest.mark.parametrize(
    ("installed", "counters", "applicable", "expected"),
    [
        ("3.0.0", {}, frozenset(), Reason.ELIGIBLE),  # a rollback
        ("1.0.0", counters_for("BCM", "1.0.0", 9), frozenset(), Reason.ELIGIBLE),
        ("2.0.0", {}, frozenset(), Reason.ALREADY_UP_TO_DATE),
        ("3.0.0", {}, frozenset({"2.5.0"}), Reason.INSTALLED_VERSION_NOT_APPLICABLE),
        ("3.0.0", {}, frozenset({"3.0.0"}), Reason.ELIGIBLE),
        (UNPARSEABLE, {}, frozenset(), Reason.INSTALLED_VERSION_NOT_APPLICABLE),
    ],
)
def test_allow_downgrade(
    installed: str,
    counters: dict[tuple[str, str], int],
    applicable: frozenset[str],
    expected: Reason,
) -> None:
    u = update(applicable_versions=applicable)
    ecu = bcm(software_version=installed)
    got = reason_of(vehicle(), [ecu], u, known_counters=counters, allow_downgrade=True)
    assert got is expected
    if expected is Reason.ELIGIBLE:
        assert reason_of(vehicle(), [ecu], u, known_counters=counters) is (Reason.DOWNGRADE_BLOCKED)


@pytest.mark.parametrize(
    ("installed", "listed", "low", "high", "applies"),
    [
        # neither a list nor a range: any (older) installed version applies
        ("1.0.0", (), None, None, True),
        ("0.0.1", (), None, None, True),
        ("unknown", (), None, None, True),
        ("", (), None, None, True),
        # list only
        ("1.0.0", ("1.0.0", "1.1.0"), None, None, True),
        ("1.1.0", ("1.0.0", "1.1.0"), None, None, True),
        ("1.0.5", ("1.0.0", "1.1.0"), None, None, False),
        # range only: bounds inclusive, either optional
        ("1.0.0", (), "1.0.0", "1.5.0", True),
        ("1.5.0", (), "1.0.0", "1.5.0", True),
        ("1.2.0", (), "1.0.0", "1.5.0", True),
        ("0.9.9", (), "1.0.0", "1.5.0", False),
        ("1.5.1", (), "1.0.0", "1.5.0", False),
        ("1.0.0-rc1", (), "1.0.0", "1.5.0", False),
        ("1.10.0", (), "1.0.0", "1.9.0", False),
        ("1.0.0", (), "1.0.0", None, True),
        ("1.9.9", (), "1.0.0", None, True),
        ("0.9.0", (), "1.0.0", None, False),
        ("1.5.0", (), None, "1.5.0", True),
        ("0.0.1", (), None, "1.5.0", True),
        ("1.5.1", (), None, "1.5.0", False),
        # both: either matches
        ("0.5.0", ("0.5.0",), "1.0.0", "1.5.0", True),
        ("1.2.0", ("0.5.0",), "1.0.0", "1.5.0", True),
        ("0.7.0", ("0.5.0",), "1.0.0", "1.5.0", False),
        ("1.7.0", ("0.5.0",), "1.0.0", "1.5.0", False),
    ],
)
def test_applicable_versions_list_and_range(
    installed: str, listed: tuple[str, ...], low: str | None, high: str | None, applies: bool
) -> None:
    u = update(
        applicable_versions=frozenset(listed),
        applicable_version_min=low,
        applicable_version_max=high,
    )
    expected = Reason.ELIGIBLE if applies else Reason.INSTALLED_VERSION_NOT_APPLICABLE
    assert reason_of(vehicle(), [bcm(software_version=installed)], u) is expected


@pytest.mark.parametrize(
    ("installed", "listed", "low", "high"),
    [
        ("4.01", ("4.1",), None, None),
        ("SW.04.12.003", ("SW.4.12.3",), None, None),
        ("4.01", (), "4.1", None),
        ("4.1", (), None, "4.01"),
    ],
)
def test_applicable_versions_written_differently_apply(
    installed: str, listed: tuple[str, ...], low: str | None, high: str | None
) -> None:
    u = update(
        version="5.0",
        applicable_versions=frozenset(listed),
        applicable_version_min=low,
        applicable_version_max=high,
    )
    assert reason_of(vehicle(), [bcm(software_version=installed)], u) is Reason.ELIGIBLE


@pytest.mark.parametrize(
    "u",
    [
        update(version=UNPARSEABLE),
        update(applicable_version_min=UNPARSEABLE),
        update(applicable_version_max=UNPARSEABLE),
    ],
    ids=["update-version", "range-min", "range-max"],
)
def test_unparseable_update_versions_apply_to_nothing(u: UpdateRule) -> None:
    assert reason_of(vehicle(), [bcm()], u) is Reason.INSTALLED_VERSION_NOT_APPLICABLE


def test_an_unparseable_installed_version_is_not_applicable() -> None:
    ecu = bcm(software_version=UNPARSEABLE)
    assert reason_of(vehicle(), [ecu], update()) is Reason.INSTALLED_VERSION_NOT_APPLICABLE
    # ... and another ECU of the type still gets its chance.
    ecus = [ecu, bcm(serial="BCM-2")]
    assert evaluate(vehicle(), ecus, [update()]).updates[0].ecu_serials == ("BCM-2",)


def test_an_unparseable_applicable_version_matches_nothing() -> None:
    u = update(applicable_versions=frozenset({UNPARSEABLE}))
    got = reason_of(vehicle(), [bcm()], u)
    assert got is Reason.INSTALLED_VERSION_NOT_APPLICABLE


# --- dependencies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "version", "admits"),
    [
        (DependencyRule("GW"), "0.0.1", True),
        (DependencyRule("GW"), "anything", True),
        (DependencyRule("GW", "3.0.0"), "3.0.0", True),
        (DependencyRule("GW", "3.0.0"), "3.10.0", True),
        (DependencyRule("GW", "3.0.0"), "2.99.0", False),
        (DependencyRule("GW", "3.0.0"), "3.0.0-rc1", False),
        (DependencyRule("GW", None, "3.0.0"), "3.0.0", True),
        (DependencyRule("GW", None, "3.0.0"), "1.0.0", True),
        (DependencyRule("GW", None, "3.0.0"), "3.0.1", False),
        (DependencyRule("GW", "3.0.0", "3.5.0"), "3.0.0", True),
        (DependencyRule("GW", "3.0.0", "3.5.0"), "3.5.0", True),
        (DependencyRule("GW", "3.0.0", "3.5.0"), "3.2.0", True),
        (DependencyRule("GW", "3.0.0", "3.5.0"), "3.5.1", False),
        (DependencyRule("GW", "3.0.0", "3.5.0"), UNPARSEABLE, False),
        (DependencyRule("GW", UNPARSEABLE), "3.0.0", False),
        (DependencyRule("GW", None, UNPARSEABLE), "3.0.0", False),
    ],
)
def test_dependency_rule_admits(rule: DependencyRule, version: str, admits: bool) -> None:
    assert rule.admits(version) is admits


@pytest.mark.parametrize(
    ("low", "high", "installed", "met"),
    [
        ("3.0.0", None, "3.0.0", True),
        ("3.0.0", None, "4.0.0", True),
        ("3.0.0", None, "2.9.9", False),
        (None, "3.0.0", "3.0.0", True),
        (None, "3.0.0", "1.0.0", True),
        (None, "3.0.0", "3.0.1", False),
        ("3.0.0", "3.5.0", "3.0.0", True),
        ("3.0.0", "3.5.0", "3.5.0", True),
        ("3.0.0", "3.5.0", "3.6.0", False),
        (None, None, "0.0.1", True),
        ("3.0.0", None, UNPARSEABLE, False),
    ],
)
def test_a_dependency_met_by_an_installed_ecu(
    low: str | None, high: str | None, installed: str, met: bool
) -> None:
    ecus = [bcm(), gateway(installed)]
    expected = Reason.ELIGIBLE if met else Reason.DEPENDENCY_UNMET
    assert reason_of(vehicle(), ecus, needs_gateway(low, high)) is expected


def test_a_dependency_on_an_ecu_type_the_vehicle_lacks_is_unmet() -> None:
    assert reason_of(vehicle(), [bcm()], needs_gateway(None, None)) is Reason.DEPENDENCY_UNMET


def test_any_ecu_of_the_type_can_meet_a_dependency() -> None:
    ecus = [bcm(), gateway("1.0.0", serial="GW-old"), gateway("3.2.0", serial="GW-new")]
    assert reason_of(vehicle(), ecus, needs_gateway()) is Reason.ELIGIBLE


@pytest.mark.parametrize(
    ("low", "high", "installed"), [("3.00", None, "3.0"), (None, "3.0", "3.00")]
)
def test_a_dependency_bound_written_differently_is_met(
    low: str | None, high: str | None, installed: str
) -> None:
    ecus = [bcm(), gateway(installed)]
    assert reason_of(vehicle(), ecus, needs_gateway(low, high)) is Reason.ELIGIBLE


def test_a_dependency_met_by_another_update_of_the_selection() -> None:
    ecus = [bcm(), gateway("2.0.0")]
    decision = evaluate(vehicle(), ecus, [needs_gateway("3.0.0"), gw_update()])
    assert decision.reason is Reason.ELIGIBLE
    assert decision_of(decision, 1) is Reason.ELIGIBLE
    assert decision_of(decision, 2) is Reason.ELIGIBLE
    assert [d.update_id for d in decision.eligible_updates] == [1, 2]
    # Alone, the BCM update waits for the gateway.
    assert reason_of(vehicle(), ecus, needs_gateway("3.0.0")) is Reason.DEPENDENCY_UNMET


def test_a_selected_update_meets_a_dependency_only_within_the_bounds() -> None:
    ecus = [bcm(), gateway("2.0.0")]
    too_new = evaluate(vehicle(), ecus, [needs_gateway("2.5.0", "2.9.0"), gw_update()])
    assert decision_of(too_new, 1) is Reason.DEPENDENCY_UNMET
    at_max = evaluate(vehicle(), ecus, [needs_gateway("2.5.0", "3.0.0"), gw_update()])
    assert decision_of(at_max, 1) is Reason.ELIGIBLE


def test_a_selected_update_of_another_type_meets_nothing() -> None:
    abs_update = gw_update(ecu_type="ABS")
    ecus = [bcm(), gateway("2.0.0"), gateway("2.0.0", ecu_type="ABS", serial="ABS-1")]
    decision = evaluate(vehicle(), ecus, [needs_gateway(), abs_update])
    assert decision_of(decision, 2) is Reason.ELIGIBLE  # reaches stage 9, but is no gateway
    assert decision_of(decision, 1) is Reason.DEPENDENCY_UNMET


@pytest.mark.parametrize(
    ("gw", "gw_reason"),
    [
        (gateway("2.0.0", hardware_version="G9"), Reason.HARDWARE_INCOMPATIBLE),
        (gateway("2.0.0", protocol="DoIP"), Reason.PROTOCOL_MISMATCH),
        (gateway("2.0.0", ecu_type="ABS"), Reason.NO_MATCHING_ECU),
        (gateway("1.0.0"), Reason.INSTALLED_VERSION_NOT_APPLICABLE),
        (gateway("3.5.0"), Reason.DOWNGRADE_BLOCKED),
    ],
)
def test_a_selected_update_that_fails_earlier_for_the_vehicle_meets_nothing(
    gw: EcuFacts, gw_reason: Reason
) -> None:
    u = needs_gateway("3.0.0", "3.0.0")  # only the selected 3.0.0 can meet it
    g = gw_update(applicable_versions=frozenset({"2.0.0"}))
    decision = evaluate(vehicle(), [bcm(), gw], [u, g])
    assert decision_of(decision, 2) is gw_reason
    assert decision_of(decision, 1) is Reason.DEPENDENCY_UNMET
    assert decision.reason is Reason.DEPENDENCY_UNMET


def test_a_selected_update_failing_on_the_vehicle_itself_meets_nothing() -> None:
    g = gw_update(compatible_models=frozenset({"Zephyr"}))
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0")], [needs_gateway(), g])
    assert decision_of(decision, 2) is Reason.MODEL_INCOMPATIBLE
    assert decision_of(decision, 1) is Reason.DEPENDENCY_UNMET


def test_an_up_to_date_selected_update_does_not_meet_but_the_installed_version_does() -> None:
    # The gateway already runs 3.0.0: the selected gateway update is up to date (stage 7), and
    # the dependency is met by what is installed.
    decision = evaluate(vehicle(), [bcm(), gateway("3.0.0")], [needs_gateway(), gw_update()])
    assert decision_of(decision, 2) is Reason.ALREADY_UP_TO_DATE
    assert decision_of(decision, 1) is Reason.ELIGIBLE


def test_a_selected_update_waiting_for_its_own_dependency_meets_none() -> None:
    # A provider counts only once it is itself eligible: a chain whose first link fails fails
    # whole, or the dependent would be installed next to the old version.
    g = gw_update(dependencies=(DependencyRule("ABS", "9.0.0"),))
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0")], [needs_gateway(), g])
    assert decision_of(decision, 2) is Reason.DEPENDENCY_UNMET
    assert decision_of(decision, 1) is Reason.DEPENDENCY_UNMET


def test_a_chain_of_dependencies_resolves_from_its_first_link() -> None:
    abs_update = update(id=3, ecu_type="ABS", version="9.0.0")
    g = gw_update(dependencies=(DependencyRule("ABS", "9.0.0"),))
    ecus = [bcm(), gateway("2.0.0"), bcm(ecu_type="ABS", serial="ABS-1", software_version="8.0.0")]
    decision = evaluate(vehicle(), ecus, [needs_gateway(), g, abs_update])
    assert [d.reason for d in decision.updates] == [Reason.ELIGIBLE] * 3
    assert install_order([needs_gateway(), g, abs_update], {}) == [3, 2, 1]


def test_an_installed_dependency_broken_by_a_selected_update_is_unmet() -> None:
    # The gateway is on 3.5.0 (enough), but the selection also takes it to 4.0.0, above the
    # dependency's maximum: after the campaign the dependency would not hold.
    capped = update(dependencies=(DependencyRule("GW", "3.0.0", "3.9.9"),))
    newer_gateway = gw_update(version="4.0.0")
    ecus = [bcm(), gateway("3.5.0")]
    assert reason_of(vehicle(), ecus, capped) is Reason.ELIGIBLE
    decision = evaluate(vehicle(), ecus, [capped, newer_gateway])
    assert decision_of(decision, capped.id) is Reason.DEPENDENCY_UNMET
    assert decision_of(decision, newer_gateway.id) is Reason.ELIGIBLE


def test_an_update_never_meets_its_own_dependency() -> None:
    u = update(dependencies=(DependencyRule("BCM", "2.0.0"),))
    assert reason_of(vehicle(), [bcm()], u) is Reason.DEPENDENCY_UNMET
    assert reason_of(vehicle(), [bcm()], update(dependencies=(DependencyRule("BCM"),))) is (
        Reason.ELIGIBLE  # no bound: the installed BCM itself meets it
    )


def test_several_dependencies_are_all_required() -> None:
    u = update(dependencies=(DependencyRule("GW", "3.0.0"), DependencyRule("ABS", "2.0.0")))
    abs_ecu = bcm(ecu_type="ABS", serial="ABS-1", software_version="2.1.0")
    assert reason_of(vehicle(), [bcm(), gateway("3.1.0"), abs_ecu], u) is Reason.ELIGIBLE
    old_abs = replace(abs_ecu, software_version="1.0.0")
    assert reason_of(vehicle(), [bcm(), gateway("3.1.0"), old_abs], u) is Reason.DEPENDENCY_UNMET
    assert reason_of(vehicle(), [bcm(), gateway("2.0.0"), abs_ecu], u) is Reason.DEPENDENCY_UNMET
    assert reason_of(vehicle(), [bcm(), abs_ecu], u) is Reason.DEPENDENCY_UNMET


def test_one_dependency_installed_another_from_the_selection() -> None:
    u = update(dependencies=(DependencyRule("GW", "3.0.0"), DependencyRule("ABS", "2.0.0")))
    abs_ecu = bcm(ecu_type="ABS", serial="ABS-1", software_version="2.1.0")
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0"), abs_ecu], [u, gw_update()])
    assert decision_of(decision, 1) is Reason.ELIGIBLE


def test_two_dependencies_on_one_type_must_both_hold() -> None:
    # At least 3.0.0 and at most 2.0.0: nothing meets both.
    u = update(dependencies=(DependencyRule("GW", "3.0.0"), DependencyRule("GW", None, "2.0.0")))
    assert reason_of(vehicle(), [bcm(), gateway("3.1.0")], u) is Reason.DEPENDENCY_UNMET
    # Different ECUs of the type may meet different rules.
    ecus = [bcm(), gateway("3.1.0"), gateway("1.0.0", serial="GW-2")]
    assert reason_of(vehicle(), ecus, u) is Reason.ELIGIBLE


def test_mutual_dependencies_between_two_selected_updates() -> None:
    a = needs_gateway("3.0.0")
    b = gw_update(dependencies=(DependencyRule("BCM", "2.0.0"),))
    ecus = [bcm(), gateway("2.0.0")]
    decision = evaluate(vehicle(), ecus, [a, b])
    # No install order satisfies a cycle: neither goes.
    assert decision.reason is Reason.DEPENDENCY_UNMET
    assert [d.reason for d in decision.updates] == [Reason.DEPENDENCY_UNMET] * 2
    # Either alone waits for the other.
    assert reason_of(vehicle(), ecus, a) is Reason.DEPENDENCY_UNMET
    assert reason_of(vehicle(), ecus, b) is Reason.DEPENDENCY_UNMET
    # When one of them cannot be installed, neither is met.
    wrong_gw = [bcm(), gateway("2.0.0", protocol="DoIP")]
    decision = evaluate(vehicle(), wrong_gw, [a, b])
    assert [d.reason for d in decision.updates] == [
        Reason.DEPENDENCY_UNMET,
        Reason.PROTOCOL_MISMATCH,
    ]


# --- several updates -------------------------------------------------------------------------


def test_eligible_when_any_update_is() -> None:
    wrong_gw = gw_update(hardware_versions=frozenset({"G9"}))
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0")], [wrong_gw, update()])
    assert decision.reason is Reason.ELIGIBLE
    assert [(d.update_id, d.reason) for d in decision.updates] == [
        (2, Reason.HARDWARE_INCOMPATIBLE),
        (1, Reason.ELIGIBLE),
    ]
    assert [(d.update_id, d.ecu_serials) for d in decision.eligible_updates] == [(1, ("BCM-1",))]


def test_eligible_updates_lists_every_eligible_one_in_order() -> None:
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0")], [update(), gw_update()])
    assert [(d.update_id, d.ecu_serials) for d in decision.eligible_updates] == [
        (1, ("BCM-1",)),
        (2, ("GW-1",)),
    ]


def test_eligible_updates_is_empty_unless_eligible() -> None:
    decision = evaluate(vehicle(), [bcm(software_version="2.0.0")], [update()])
    assert decision.eligible_updates == ()
    busy = evaluate(vehicle(busy=True), [bcm()], [update()])
    # The vehicle is busy, the update itself would fit: its decision stays eligible.
    assert busy.reason is Reason.BUSY_IN_OTHER_CAMPAIGN
    assert [d.update_id for d in busy.eligible_updates] == [1]


@pytest.mark.parametrize("reverse", [False, True])
def test_otherwise_the_reason_of_the_update_that_got_furthest(reverse: bool) -> None:
    hardware = gw_update(hardware_versions=frozenset({"G9"}))  # stage 4 for the gateway
    not_applicable = update(applicable_versions=frozenset({"0.1.0"}))  # stage 8 for the BCM
    fuel = update(id=3, ecu_type="ABS", fuel_types=frozenset({"diesel"}))  # stage 2
    selection = [hardware, not_applicable, fuel]
    if reverse:
        selection.reverse()
    decision = evaluate(vehicle(), [bcm(), gateway("2.0.0")], selection)
    assert decision.reason is Reason.INSTALLED_VERSION_NOT_APPLICABLE
    assert {d.update_id: d.reason for d in decision.updates} == {
        1: Reason.INSTALLED_VERSION_NOT_APPLICABLE,
        2: Reason.HARDWARE_INCOMPATIBLE,
        3: Reason.FUEL_TYPE_INCOMPATIBLE,
    }


def test_an_empty_selection_has_no_matching_ecu() -> None:
    decision = evaluate(vehicle(), [bcm()], [])
    assert decision.reason is Reason.NO_MATCHING_ECU and decision.updates == ()


# --- region rules ----------------------------------------------------------------------------


def rule(
    allowed_regions: str = "",
    excluded_regions: str = "",
    allowed_countries: str = "",
    excluded_countries: str = "",
) -> RegionRule:
    def split(text: str) -> frozenset[str]:
        return frozenset(text.split()) if text else frozenset()

    return RegionRule(
        split(allowed_regions),
        split(excluded_regions),
        split(allowed_countries),
        split(excluded_countries),
    )


@pytest.mark.parametrize(
    ("regions", "region", "country", "allowed"),
    [
        (rule(), "EU", "DE", True),
        # allowed regions
        (rule(allowed_regions="EU"), "EU", "DE", True),
        (rule(allowed_regions="EU UK"), "UK", "GB", True),
        (rule(allowed_regions="EU"), "NA", "US", False),
        # excluded regions
        (rule(excluded_regions="EU"), "EU", "DE", False),
        (rule(excluded_regions="EU"), "NA", "US", True),
        # allowed countries
        (rule(allowed_countries="DE FR"), "EU", "FR", True),
        (rule(allowed_countries="DE FR"), "EU", "IT", False),
        # excluded countries
        (rule(excluded_countries="DE"), "EU", "DE", False),
        (rule(excluded_countries="DE"), "EU", "FR", True),
        # allowed region, one country of it excluded
        (rule(allowed_regions="EU", excluded_countries="DE"), "EU", "DE", False),
        (rule(allowed_regions="EU", excluded_countries="DE"), "EU", "FR", True),
        (rule(allowed_regions="EU", excluded_countries="DE"), "NA", "US", False),
        # allowed regions and allowed countries: both must hold
        (rule(allowed_regions="EU", allowed_countries="DE"), "EU", "DE", True),
        (rule(allowed_regions="EU", allowed_countries="DE"), "EU", "FR", False),
        (rule(allowed_regions="EU", allowed_countries="DE"), "NA", "DE", False),
        # excluded region, allowed country
        (rule(excluded_regions="NA", allowed_countries="DE US"), "EU", "DE", True),
        (rule(excluded_regions="NA", allowed_countries="DE US"), "NA", "US", False),
        # excluded region and excluded country
        (rule(excluded_regions="CN", excluded_countries="RU"), "EU", "DE", True),
        (rule(excluded_regions="CN", excluded_countries="RU"), "CN", "CN", False),
        (rule(excluded_regions="CN", excluded_countries="RU"), "EU", "RU", False),
        # an exclusion wins over an allowance of the same kind
        (rule(allowed_regions="EU", excluded_regions="EU"), "EU", "DE", False),
        (rule(allowed_countries="DE", excluded_countries="DE"), "EU", "DE", False),
        # everything at once
        (rule("EU UK", "NA", "DE GB FR", "FR"), "EU", "DE", True),
        (rule("EU UK", "NA", "DE GB FR", "FR"), "UK", "GB", True),
        (rule("EU UK", "NA", "DE GB FR", "FR"), "EU", "FR", False),
        (rule("EU UK", "NA", "DE GB FR", "FR"), "EU", "IT", False),
        (rule("EU UK", "NA", "DE GB FR", "FR"), "NA", "DE", False),
    ],
)
def test_region_rules(regions: RegionRule, region: str, country: str, allowed: bool) -> None:
    assert regions.allows(region, country) is allowed
    v = vehicle(region=region, country=country)
    expected = Reason.ELIGIBLE if allowed else Reason.REGION_NOT_ALLOWED
    assert reason_of(v, [bcm()], update(), regions=regions) is expected


# --- install order ---------------------------------------------------------------------------


def typed(update_id: int, ecu_type: str, version: str = "1.0.0", *needs: str) -> UpdateRule:
    """An update of `ecu_type` that needs any version of each type in `needs`."""
    return update(
        id=update_id,
        ecu_type=ecu_type,
        version=version,
        dependencies=tuple(DependencyRule(t) for t in needs),
    )


def test_install_order_without_dependencies_follows_the_hint_then_the_id() -> None:
    updates = [typed(1, "A"), typed(2, "B"), typed(3, "C"), typed(4, "D")]
    assert install_order(updates, {1: 20, 2: 10, 3: 10, 4: 0}) == [4, 2, 3, 1]
    assert install_order(updates, {}) == [1, 2, 3, 4]
    assert install_order(list(reversed(updates)), {}) == [1, 2, 3, 4]
    assert install_order(updates, {3: -5}) == [3, 1, 2, 4]  # a missing hint counts as 0


def test_install_order_puts_dependencies_first() -> None:
    updates = [typed(1, "BCM", "2.0", "GW"), typed(2, "GW", "3.0")]
    assert install_order(updates, {1: 0, 2: 100}) == [2, 1]


def test_install_order_follows_a_chain() -> None:
    updates = [typed(1, "A", "1", "B"), typed(2, "B", "1", "C"), typed(3, "C", "1")]
    assert install_order(updates, {1: 0, 2: 1, 3: 2}) == [3, 2, 1]


def test_install_order_places_each_dependency_before_its_first_dependent_only() -> None:
    # 1 needs 3; 2 needs nothing: 3 goes right before 1, 2 keeps its place after them.
    updates = [typed(1, "A", "1", "C"), typed(2, "B", "1"), typed(3, "C", "1")]
    assert install_order(updates, {1: 0, 2: 1, 3: 2}) == [3, 1, 2]


def test_install_order_ignores_dependencies_the_selection_does_not_meet() -> None:
    needs_new_gw = update(id=1, dependencies=(DependencyRule("GW", "9.0"),))
    old_gw = typed(2, "GW", "3.0")
    assert install_order([needs_new_gw, old_gw], {1: 0, 2: 1}) == [1, 2]
    needs_abs = update(id=1, dependencies=(DependencyRule("ABS"),))
    assert install_order([needs_abs, old_gw], {1: 0, 2: 1}) == [1, 2]


@pytest.mark.parametrize(
    "updates",
    [
        [typed(1, "A", "1", "B"), typed(2, "B", "1", "A")],
        [typed(1, "A", "1", "B"), typed(2, "B", "1", "C"), typed(3, "C", "1", "A")],
        [typed(1, "A", "1", "A")],
        [typed(1, "A", "1", "B"), typed(2, "B", "1", "A"), typed(3, "C", "1", "A")],
    ],
    ids=["two", "three", "self", "cycle-and-dependent"],
)
def test_install_order_terminates_on_cycles(updates: list[UpdateRule]) -> None:
    order = install_order(updates, {})
    assert sorted(order) == [u.id for u in updates]


def test_install_order_of_nothing() -> None:
    assert install_order([], {}) == []


# --- properties ------------------------------------------------------------------------------

ECU_TYPES = ("BCM", "GW", "ABS")
VERSIONS = (
    "1.0.0",
    "1.2.0-rc1",
    "1.2.0",
    "2.0.0",
    "4.01",
    "4.1",
    "4.9.2",
    "4.10.0",
    "SW.04.12.003",
    "SW.4.12.3",
    UNPARSEABLE,
)
MODELS = ("Aurora", "Borealis", "Zephyr")
STATUSES = ("active", "active", "inactive", "scrapped")
FUELS = ("electric", "hybrid", "diesel")
REGIONS = ("EU", "NA", "CN")
COUNTRIES = ("DE", "US", "CN", "FR")

versions_st = st.sampled_from(VERSIONS)
maybe_version = st.none() | versions_st
small_sets = st.frozensets


@st.composite
def vehicles(draw: st.DrawFn, status: st.SearchStrategy[str] | None = None) -> VehicleFacts:
    return VehicleFacts(
        vin="VIN",
        status=draw(st.sampled_from(STATUSES) if status is None else status),
        model=draw(st.sampled_from(MODELS)),
        model_year=draw(st.integers(2018, 2026)),
        fuel_type=draw(st.sampled_from(FUELS)),
        region=draw(st.sampled_from(REGIONS)),
        country=draw(st.sampled_from(COUNTRIES)),
        busy=draw(st.booleans()),
    )


ecu_st = st.builds(
    EcuFacts,
    ecu_type=st.sampled_from(ECU_TYPES),
    serial=st.just(""),
    hardware_part_number=st.sampled_from(("P1", "P2")),
    hardware_version=st.sampled_from(("H1", "H2")),
    protocol=st.sampled_from(("UDS", "DoIP")),
    software_version=versions_st,
)
ecus_st = st.lists(ecu_st, max_size=5).map(
    lambda ecus: [replace(e, serial=f"S{i}") for i, e in enumerate(ecus)]
)
dependency_st = st.builds(DependencyRule, st.sampled_from(ECU_TYPES), maybe_version, maybe_version)
update_st = st.builds(
    UpdateRule,
    id=st.just(0),
    ecu_type=st.sampled_from(ECU_TYPES),
    version=versions_st,
    protocol=st.sampled_from(("UDS", "DoIP")),
    release_counter=st.integers(0, 10),
    compatible_models=small_sets(st.sampled_from(MODELS), min_size=1),
    model_year_min=st.none() | st.integers(2018, 2026),
    model_year_max=st.none() | st.integers(2018, 2026),
    fuel_types=small_sets(st.sampled_from(FUELS), min_size=1),
    hardware_part_numbers=small_sets(st.sampled_from(("P1", "P2")), min_size=1),
    hardware_versions=small_sets(st.sampled_from(("H1", "H2")), min_size=1),
    applicable_versions=small_sets(versions_st.filter(lambda v: v != UNPARSEABLE), max_size=3),
    applicable_version_min=maybe_version,
    applicable_version_max=maybe_version,
    dependencies=st.lists(dependency_st, max_size=2).map(tuple),
)


def numbered(updates: list[UpdateRule], start: int = 1) -> list[UpdateRule]:
    return [replace(u, id=start + i) for i, u in enumerate(updates)]


selections = st.lists(update_st, max_size=4).map(numbered)
region_rules = st.none() | st.builds(
    RegionRule,
    small_sets(st.sampled_from(REGIONS)),
    small_sets(st.sampled_from(REGIONS)),
    small_sets(st.sampled_from(COUNTRIES)),
    small_sets(st.sampled_from(COUNTRIES)),
)
counters_st = st.dictionaries(
    st.tuples(
        st.sampled_from(ECU_TYPES),
        versions_st.filter(lambda v: v != UNPARSEABLE).map(reading_key),
    ),
    st.integers(0, 10),
    max_size=4,
)
options = st.fixed_dictionaries(
    {"regions": region_rules, "known_counters": counters_st, "allow_downgrade": st.booleans()}
)


def vehicle_free(v: VehicleFacts, regions: RegionRule | None) -> bool:
    return (
        v.status == "active"
        and (regions is None or regions.allows(v.region, v.country))
        and not v.busy
    )


@settings(max_examples=300, deadline=None)
@given(vehicles(), ecus_st, selections, options)
def test_property_exactly_one_reason(
    v: VehicleFacts, ecus: list[EcuFacts], updates: list[UpdateRule], kw: dict[str, Any]
) -> None:
    decision = evaluate(v, ecus, updates, **kw)
    assert isinstance(decision.reason, Reason)
    assert [d.update_id for d in decision.updates] == [u.id for u in updates]
    for d, u in zip(decision.updates, updates, strict=True):
        assert d.reason in STAGES
        serials = {e.serial for e in ecus if e.ecu_type == u.ecu_type}
        assert bool(d.ecu_serials) == (d.reason is Reason.ELIGIBLE)
        assert set(d.ecu_serials) <= serials
        assert list(d.ecu_serials) == sorted(d.ecu_serials)
    regions = kw["regions"]
    if v.status != "active":
        assert decision.reason is Reason.VEHICLE_INACTIVE
    elif regions is not None and not regions.allows(v.region, v.country):
        assert decision.reason is Reason.REGION_NOT_ALLOWED
    elif v.busy:
        assert decision.reason is Reason.BUSY_IN_OTHER_CAMPAIGN
    else:
        furthest = max((d.stage for d in decision.updates), default=STAGE[Reason.NO_MATCHING_ECU])
        assert decision.reason is STAGES[furthest - 1]
        assert (decision.reason is Reason.ELIGIBLE) == bool(decision.eligible_updates)


@settings(max_examples=300, deadline=None)
@given(vehicles(), ecus_st, selections, update_st, options)
def test_property_adding_an_update_never_makes_an_eligible_vehicle_ineligible(
    v: VehicleFacts,
    ecus: list[EcuFacts],
    updates: list[UpdateRule],
    extra: UpdateRule,
    kw: dict[str, Any],
) -> None:
    extra = replace(extra, id=len(updates) + 1)
    before = evaluate(v, ecus, updates, **kw)
    after = evaluate(v, ecus, [*updates, extra], **kw)
    if before.reason is Reason.ELIGIBLE:
        assert after.reason is Reason.ELIGIBLE
    # Stronger: no update of the selection gets less far, so no eligible one is lost.
    for old, new in zip(before.updates, after.updates, strict=False):
        assert old.update_id == new.update_id and new.stage >= old.stage
    assert {d.update_id for d in before.eligible_updates} <= {
        d.update_id for d in after.eligible_updates
    }
    if vehicle_free(v, kw["regions"]):
        assert STAGE.get(after.reason, 0) >= STAGE.get(before.reason, 0) or not updates


@settings(max_examples=200, deadline=None)
@given(
    vehicles(status=st.text(max_size=10).filter(lambda s: s != "active")),
    ecus_st,
    selections,
    options,
)
def test_property_a_vehicle_not_active_is_always_inactive(
    v: VehicleFacts, ecus: list[EcuFacts], updates: list[UpdateRule], kw: dict[str, Any]
) -> None:
    assert evaluate(v, ecus, updates, **kw).reason is Reason.VEHICLE_INACTIVE


@settings(max_examples=200, deadline=None)
@given(vehicles(), ecus_st, selections, options, st.randoms(use_true_random=False))
def test_property_the_order_of_updates_and_ecus_does_not_matter(
    v: VehicleFacts,
    ecus: list[EcuFacts],
    updates: list[UpdateRule],
    kw: dict[str, Any],
    rnd: Any,
) -> None:
    shuffled_updates, shuffled_ecus = list(updates), list(ecus)
    rnd.shuffle(shuffled_updates)
    rnd.shuffle(shuffled_ecus)
    a = evaluate(v, ecus, updates, **kw)
    b = evaluate(v, shuffled_ecus, shuffled_updates, **kw)
    assert a.reason is b.reason
    assert sorted(a.updates, key=lambda d: d.update_id) == sorted(
        b.updates, key=lambda d: d.update_id
    )


@settings(max_examples=200, deadline=None)
@given(vehicles(), ecus_st, selections, options)
def test_property_a_selection_gets_at_least_as_far_as_its_updates_alone(
    v: VehicleFacts, ecus: list[EcuFacts], updates: list[UpdateRule], kw: dict[str, Any]
) -> None:
    together = evaluate(v, ecus, updates, **kw)
    for d, u in zip(together.updates, updates, strict=True):
        (alone,) = evaluate(v, ecus, [u], **kw).updates
        assert d.stage >= alone.stage
        if not u.dependencies:
            assert d == alone


@settings(max_examples=200, deadline=None)
@given(vehicles(), ecus_st, selections, region_rules)
def test_property_no_known_counters_and_allow_downgrade_never_block(
    v: VehicleFacts, ecus: list[EcuFacts], updates: list[UpdateRule], regions: RegionRule | None
) -> None:
    decision = evaluate(v, ecus, updates, regions=regions, allow_downgrade=True)
    assert all(d.reason is not Reason.DOWNGRADE_BLOCKED for d in decision.updates)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=0, max_size=8),
    st.dictionaries(st.integers(1, 8), st.integers(-3, 3)),
    st.booleans(),
)
def test_property_install_order_is_a_permutation_with_dependencies_first(
    needs: list[list[int]], hints: dict[int, int], acyclic: bool
) -> None:
    # One update per ECU type (the service refuses two), each needing some other types.
    count = len(needs)
    updates = []
    for index, wanted in enumerate(needs):
        types = [f"T{w}" for w in wanted if w < count and (not acyclic or w < index)]
        updates.append(typed(index + 1, f"T{index}", "1", *types))
    order = install_order(updates, hints)
    assert sorted(order) == [u.id for u in updates]
    if acyclic:
        position = {update_id: i for i, update_id in enumerate(order)}
        for u in updates:
            for dep in u.dependencies:
                provider = int(dep.ecu_type[1:]) + 1
                assert position[provider] < position[u.id]
