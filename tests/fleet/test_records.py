"""validate_record: a raw manufacturing export record becomes a VehicleRecord or problems."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from otacm.config import VinCheckDigitPolicy
from otacm.fleet.records import (
    ECU_FIELDS,
    MAX_LENGTH,
    VEHICLE_FIELDS,
    EcuRecord,
    Problem,
    RawRecord,
    VehicleRecord,
    validate_record,
)
from tests.builders import ecu, vehicle, vin

NA = VinCheckDigitPolicy.NORTH_AMERICA


def raw_record(n: int = 1, line: int = 7, **overrides: Any) -> RawRecord:
    fields = vehicle(n, **overrides)
    ecus = fields.pop("ecus")
    return RawRecord(line, fields, ecus)


def problems_of(raw: RawRecord, policy: VinCheckDigitPolicy = NA) -> list[Problem]:
    assert validate_record(raw, policy) is None
    assert raw.problems
    return raw.problems


def fields_named(problems: list[Problem]) -> set[str | None]:
    return {p.field for p in problems}


def only_problem(raw: RawRecord, field: str, ecu_index: int | None = None) -> Problem:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.field == field
    assert problem.ecu == ecu_index
    return problem


# --- the good record --------------------------------------------------------------------------


def test_good_record() -> None:
    raw = raw_record(1)
    record = validate_record(raw, NA)
    assert isinstance(record, VehicleRecord)
    assert raw.problems == []
    assert record.vin == vin(1)
    assert record.engine_number == "CJX000001"
    assert record.chassis_number == "CH-000001"
    assert record.model == "Aurora"
    assert record.model_year == 2025
    assert record.fuel_type == "electric"
    assert record.region == "EU"
    assert record.country == "DE"
    assert record.manufactured_at == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert record.exported_at == datetime(2025, 3, 2, tzinfo=UTC)
    assert record.manufactured_at.utcoffset() == timedelta(0)
    assert record.exported_at.utcoffset() == timedelta(0)
    assert record.vehicle_public_key is None
    assert record.rxswin is None
    assert record.attributes == {}
    assert record.ecus == [
        EcuRecord(
            "BCM", "BCM-000001", "5Q0937084", "B2", "CAN", "5Q0937084AB", "4.1.0", "CAL-0042"
        ),
        EcuRecord(
            "BMS", "BMS-000001", "5Q0937084", "B2", "CAN_FD", "5Q0937084AB", "2.0.0", "CAL-0042"
        ),
    ]


def test_validation_does_not_change_the_raw_fields() -> None:
    raw = raw_record(1)
    before = copy.deepcopy((raw.fields, raw.ecus))
    assert validate_record(raw, NA) is not None
    assert (raw.fields, raw.ecus) == before


def test_case_and_whitespace_are_normalised() -> None:
    raw = raw_record(
        1,
        vin=f"  {vin(1).lower()} ",
        fuel_type=" Plug_In_Hybrid ",
        region="latam",
        country="br",
        model=" Aurora ",
        model_year=" 2026 ",
        ecus=[ecu("BCM-1", "bcm", protocol="can_fd"), ecu("GW-1", "gw", protocol="Ethernet")],
    )
    record = validate_record(raw, NA)
    assert record is not None, raw.problems
    assert record.vin == vin(1)
    assert record.fuel_type == "plug_in_hybrid"
    assert record.region == "LATAM"
    assert record.country == "BR"
    assert record.model == "Aurora"
    assert record.model_year == 2026
    assert [(e.ecu_type, e.protocol) for e in record.ecus] == [
        ("BCM", "CAN_FD"),
        ("GW", "ETHERNET"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T12:00:00+02:00", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T05:30:00-04:30", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T10:00:00Z", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T10:00:00.250+00:00", datetime(2025, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        (" 2025-03-01T10:00:00Z ", datetime(2025, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_timestamps_are_converted_to_utc(text: str, expected: datetime) -> None:
    record = validate_record(raw_record(1, manufactured_at=text), NA)
    assert record is not None
    assert record.manufactured_at == expected
    assert record.manufactured_at.tzinfo is UTC


def test_optional_fields_and_calibration() -> None:
    raw = raw_record(
        1,
        vehicle_public_key="MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        rxswin="R10-0001 R156-0002",
        ecus=[ecu("BCM-1", calibration_id=None), ecu("BMS-1", "BMS", calibration_id="")],
    )
    record = validate_record(raw, NA)
    assert record is not None, raw.problems
    assert record.vehicle_public_key is not None
    assert record.vehicle_public_key.startswith("MCowBQ")
    assert record.rxswin == "R10-0001 R156-0002"
    assert [e.calibration_id for e in record.ecus] == [None, None]


def test_a_vehicle_without_ecus_is_valid() -> None:
    record = validate_record(raw_record(1, ecus=[]), NA)
    assert record is not None
    assert record.ecus == []


def test_model_year_bounds_are_inclusive() -> None:
    assert validate_record(raw_record(1, model_year=1980), NA) is not None
    assert validate_record(raw_record(1, model_year=2100), NA) is not None
    assert validate_record(raw_record(1, model_year="1980"), NA) is not None


def test_unknown_fields_are_kept_as_attributes() -> None:
    raw = raw_record(1, paint="Glacier White", doors=5, sunroof=True, trim=None, weight_kg=1834.5)
    record = validate_record(raw, NA)
    assert record is not None, raw.problems
    assert record.attributes == {
        "paint": "Glacier White",
        "doors": 5,
        "sunroof": True,
        "trim": None,
        "weight_kg": 1834.5,
    }


def test_manufactured_and_exported_at_the_same_instant() -> None:
    raw = raw_record(1, manufactured_at="2025-03-02T02:00:00+02:00")
    assert validate_record(raw, NA) is not None


# --- defects --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VEHICLE_FIELDS)
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_missing_vehicle_field(name: str, how: str) -> None:
    raw = raw_record(1)
    if how == "absent":
        del raw.fields[name]
    else:
        raw.fields[name] = None if how == "null" else ""
    problem = only_problem(raw, name)
    assert problem.reason == "is required"


@pytest.mark.parametrize("name", ["engine_number", "chassis_number", "model", "country"])
def test_blank_vehicle_text_is_missing(name: str) -> None:
    raw = raw_record(1, **{name: "   "})
    assert only_problem(raw, name).reason == "is required"


@pytest.mark.parametrize("name", ECU_FIELDS)
@pytest.mark.parametrize("how", ["absent", "null", "empty", "blank"])
def test_missing_ecu_field(name: str, how: str) -> None:
    raw = raw_record(1)
    target = raw.ecus[1]
    if how == "absent":
        del target[name]
    else:
        target[name] = {"null": None, "empty": "", "blank": "  "}[how]
    problem = only_problem(raw, name, ecu_index=1)
    assert problem.reason == "is required"


def test_problems_in_several_ecus_name_each_index() -> None:
    raw = raw_record(1, ecus=[ecu("A-1", protocol="CANX"), ecu("B-1"), ecu("", "GW")])
    problems = problems_of(raw)
    assert {(p.field, p.ecu) for p in problems} == {("protocol", 0), ("serial", 2)}


@pytest.mark.parametrize("value", ["gasoline", "EV", "plug-in-hybrid", "électrique"])
def test_unknown_fuel_type(value: str) -> None:
    problem = only_problem(raw_record(1, fuel_type=value), "fuel_type")
    assert "is not one of" in problem.reason
    assert "diesel" in problem.reason


@pytest.mark.parametrize("value", ["CANBUS", "can-fd", "USB", "K-LINE"])
def test_unknown_protocol(value: str) -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1"), ecu("BMS-1", protocol=value)])
    problem = only_problem(raw, "protocol", ecu_index=1)
    assert "is not one of" in problem.reason
    assert "FLEXRAY" in problem.reason


@pytest.mark.parametrize("value", ["EUROPE", "US", "XX", "E U"])
def test_unknown_region(value: str) -> None:
    problem = only_problem(raw_record(1, region=value), "region")
    assert "is not one of" in problem.reason


@pytest.mark.parametrize("value", ["DEU", "D", "1A", "D-", "ÄÖ", "D E"])
def test_bad_country(value: str) -> None:
    problem = only_problem(raw_record(1, country=value), "country")
    assert "ISO 3166" in problem.reason


@pytest.mark.parametrize("name", ["manufactured_at", "exported_at"])
def test_timestamp_without_offset(name: str) -> None:
    raw = raw_record(1, **{name: "2025-03-01T10:00:00"})
    if name == "exported_at":
        raw.fields["exported_at"] = "2025-03-03T10:00:00"
    problem = only_problem(raw, name)
    assert "no UTC offset" in problem.reason


@pytest.mark.parametrize(
    "value", ["01/03/2025 10:00", "yesterday", "2025-13-01T00:00:00Z", "2025-03-01T25:00Z", "2025"]
)
def test_non_iso_timestamp(value: str) -> None:
    problem = only_problem(raw_record(1, manufactured_at=value), "manufactured_at")
    assert "is not an ISO 8601 timestamp" in problem.reason or "no UTC offset" in problem.reason


@pytest.mark.parametrize("value", [1740823200, 1740823200.5, True, ["2025-03-01T10:00:00Z"]])
def test_non_string_timestamp(value: Any) -> None:
    problem = only_problem(raw_record(1, manufactured_at=value), "manufactured_at")
    assert "must be an ISO 8601 timestamp string" in problem.reason


def test_manufactured_after_exported() -> None:
    raw = raw_record(1, manufactured_at="2025-03-02T00:00:01Z")
    problem = only_problem(raw, "manufactured_at")
    assert problem.reason == "is later than exported_at"


def test_manufactured_after_exported_across_offsets() -> None:
    # 01:00+00:00 is later than 02:00+02:00 (= 00:00Z)
    raw = raw_record(
        1, manufactured_at="2025-03-02T01:00:00+00:00", exported_at="2025-03-02T02:00:00+02:00"
    )
    only_problem(raw, "manufactured_at")


@pytest.mark.parametrize("value", [1979, 2101, 0, -2025, 20250, "1979", "2101"])
def test_model_year_out_of_range(value: Any) -> None:
    problem = only_problem(raw_record(1, model_year=value), "model_year")
    assert "is outside 1980-2100" in problem.reason


@pytest.mark.parametrize(
    "value", ["MY25", "2025a", "20 25", "-2025", "2025.0", 2025.0, 2025.5, [2025], {"year": 2025}]
)
def test_model_year_not_a_whole_number(value: Any) -> None:
    problem = only_problem(raw_record(1, model_year=value), "model_year")
    assert "must be a whole number" in problem.reason


@pytest.mark.parametrize("value", [True, False])
def test_model_year_boolean(value: bool) -> None:
    problem = only_problem(raw_record(1, model_year=value), "model_year")
    assert "must be a whole number" in problem.reason


@pytest.mark.parametrize("value", ["²⁰²⁵", "2025²", "1" * 5000])
def test_model_year_digit_like_text_is_a_problem_not_a_crash(value: str) -> None:
    problem = only_problem(raw_record(1, model_year=value), "model_year")
    assert "must be a whole number" in problem.reason


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+00:45"],
)
def test_timestamp_at_the_edge_of_the_calendar_is_a_problem_not_a_crash(value: str) -> None:
    raw = raw_record(1, manufactured_at=value)
    problems = problems_of(raw)
    assert fields_named(problems) == {"manufactured_at"}


def test_duplicate_ecu_serial() -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1"), ecu("BMS-1", "BMS"), ecu("BCM-1", "GW")])
    problem = only_problem(raw, "serial", ecu_index=2)
    assert "'BCM-1' is listed twice" in problem.reason


def test_duplicate_ecu_serial_after_trimming() -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1"), ecu(" BCM-1 ", "GW")])
    only_problem(raw, "serial", ecu_index=1)


def test_same_serial_in_different_vehicles_is_not_this_functions_business() -> None:
    assert validate_record(raw_record(1, ecus=[ecu("X-1")]), NA) is not None
    assert validate_record(raw_record(2, ecus=[ecu("X-1")]), NA) is not None


@pytest.mark.parametrize(("name", "limit"), sorted(MAX_LENGTH.items()))
def test_value_over_max_length(name: str, limit: int) -> None:
    raw = raw_record(1)
    if name in ECU_FIELDS or name == "calibration_id":
        raw.ecus[0][name] = "A" * limit
        assert validate_record(raw, NA) is not None, raw.problems
        raw = raw_record(1)
        raw.ecus[0][name] = "A" * (limit + 1)
        problem = only_problem(raw, name, ecu_index=0)
    else:
        raw.fields[name] = "A" * limit
        assert validate_record(raw, NA) is not None, raw.problems
        raw = raw_record(1)
        raw.fields[name] = "A" * (limit + 1)
        problem = only_problem(raw, name)
    assert problem.reason == f"is {limit + 1} characters long, at most {limit}"


def test_attribute_over_max_length() -> None:
    raw = raw_record(1, note="x" * 1001)
    problem = only_problem(raw, "note")
    assert "longer than 1000" in problem.reason
    assert validate_record(raw_record(1, note="x" * 1000), NA) is not None


@pytest.mark.parametrize(
    "value", ["Aur\x00ora", "Aur\nora", "Aur\tora", "Aur\x1bora", "Aur\x7fora"]
)
def test_control_characters_in_vehicle_field(value: str) -> None:
    problem = only_problem(raw_record(1, model=value), "model")
    assert problem.reason == "contains control characters"


def test_control_characters_in_ecu_field() -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1", software_version="4.1\r\n.0")])
    assert only_problem(raw, "software_version", ecu_index=0).reason == (
        "contains control characters"
    )


@pytest.mark.parametrize("value", [12345, 1.5, True, ["CJX"], {"n": "CJX"}])
def test_non_string_vehicle_text(value: Any) -> None:
    problem = only_problem(raw_record(1, engine_number=value), "engine_number")
    assert problem.reason.startswith("must be a string, got ")


@pytest.mark.parametrize(
    ("value", "kind"), [(7, "number"), (False, "boolean"), ([1], "list"), ({}, "object")]
)
def test_non_string_ecu_text(value: Any, kind: str) -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1"), ecu("BMS-1", hardware_version=value)])
    problem = only_problem(raw, "hardware_version", ecu_index=1)
    assert problem.reason == f"must be a string, got {kind}"


@pytest.mark.parametrize("name", ["fuel_type", "region", "country", "vin"])
def test_non_string_choice_fields(name: str) -> None:
    problem = only_problem(raw_record(1, **{name: 1}), name)
    assert problem.reason == "must be a string, got number"


def test_non_string_protocol() -> None:
    raw = raw_record(1, ecus=[ecu("BCM-1", protocol=["CAN"])])
    assert only_problem(raw, "protocol", ecu_index=0).reason == "must be a string, got list"


@pytest.mark.parametrize("name", ["vehicle_public_key", "rxswin"])
def test_non_string_optional_fields(name: str) -> None:
    only_problem(raw_record(1, **{name: 42}), name)


@pytest.mark.parametrize("value", [{"colour": "red"}, ["red", "blue"], [], {}])
def test_attribute_that_is_an_object_or_list(value: Any) -> None:
    problem = only_problem(raw_record(1, paint=value), "paint")
    assert "not objects or lists" in problem.reason


@pytest.mark.parametrize("key", ["", "x" * 101, "bad\nname"])
def test_unusable_attribute_names(key: str) -> None:
    raw = raw_record(1)
    raw.fields[key] = "v"
    problems = problems_of(raw)
    assert len(problems) == 1
    assert problems[0].reason == "is not a usable attribute name"


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        ("1M8GDM9A0KP042788", VinCheckDigitPolicy.NORTH_AMERICA),
        ("WVWZZZ1KZ6W000001", VinCheckDigitPolicy.ALWAYS),
        ("1M8GDM9AXKP04278", VinCheckDigitPolicy.NEVER),
        ("1M8GDM9AXKP04278O", VinCheckDigitPolicy.NEVER),
    ],
)
def test_bad_vin(value: str, policy: VinCheckDigitPolicy) -> None:
    raw = raw_record(1, vin=value)
    assert validate_record(raw, policy) is None
    assert [p.field for p in raw.problems] == ["vin"]
    assert raw.problems[0].ecu is None


def test_vin_policy_is_applied() -> None:
    assert validate_record(raw_record(1, vin="WVWZZZ1KZ6W000001"), NA) is not None
    assert (
        validate_record(raw_record(1, vin="1M8GDM9A0KP042788"), VinCheckDigitPolicy.NEVER)
        is not None
    )


def test_every_defect_is_reported_at_once() -> None:
    raw = raw_record(
        1,
        vin="1M8GDM9A0KP042788",
        fuel_type="steam",
        region="MARS",
        country="DEU",
        model_year=1900,
        manufactured_at="soon",
        paint=["red"],
        ecus=[ecu("BCM-1", protocol="USB"), ecu("BCM-1"), ecu("GW-1", hardware_version=3)],
    )
    problems = problems_of(raw)
    assert {(p.field, p.ecu) for p in problems} == {
        ("vin", None),
        ("fuel_type", None),
        ("region", None),
        ("country", None),
        ("model_year", None),
        ("manufactured_at", None),
        ("paint", None),
        ("protocol", 0),
        ("hardware_version", 2),
    }


def test_problems_from_the_parser_are_kept_and_reject_the_record() -> None:
    raw = raw_record(1)
    earlier = Problem("ecus", "must be a list of ECU objects")
    raw.problems.append(earlier)
    assert validate_record(raw, NA) is None
    assert raw.problems == [earlier]


# --- properties -----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
timestamps = st.builds(
    lambda d, tz, naive: d.isoformat() if naive else d.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    offsets,
    st.booleans(),
)
field_values = {
    "vin": st.sampled_from([vin(1), "1M8GDM9AXKP042788", "1M8GDM9A0KP042788", "WVWZZZ1KZ6W000001"])
    | st.text(max_size=20),
    "model_year": st.integers(min_value=1900, max_value=2200)
    | st.integers(min_value=1900, max_value=2200).map(str)
    | json_values,
    "fuel_type": st.sampled_from(["electric", "DIESEL", "lpg ", "coal"]) | json_values,
    "region": st.sampled_from(["EU", "na", "Mars"]) | json_values,
    "country": st.sampled_from(["DE", "us", "DEU", "1A"]) | json_values,
    "manufactured_at": timestamps | json_values,
    "exported_at": timestamps | json_values,
    "protocol": st.sampled_from(["CAN", "can_fd", "USB"]) | json_values,
}


def _value_for(name: str) -> st.SearchStrategy[Any]:
    return field_values.get(name, json_values)


@st.composite
def messy_raw_records(draw: st.DrawFn) -> RawRecord:
    fields = vehicle(draw(st.integers(1, 999_999)))
    ecus = fields.pop("ecus")
    for name in draw(
        st.lists(
            st.sampled_from([*VEHICLE_FIELDS, "vehicle_public_key", "rxswin", "extra", ""]),
            max_size=4,
        )
    ):
        if draw(st.booleans()):
            fields.pop(name, None)
        else:
            fields[name] = draw(_value_for(name))
    for _ in range(draw(st.integers(0, 2))):
        ecus.append(ecu(draw(st.text(max_size=6)), draw(st.text(max_size=6))))
    for data in ecus:
        for name in draw(
            st.lists(st.sampled_from([*ECU_FIELDS, "calibration_id", "other"]), max_size=3)
        ):
            if draw(st.booleans()):
                data.pop(name, None)
            else:
                data[name] = draw(_value_for(name))
    return RawRecord(draw(st.integers(1, 10**6)), fields, ecus)


@settings(max_examples=300, deadline=None)
@given(messy_raw_records(), st.sampled_from(list(VinCheckDigitPolicy)))
def test_validate_record_returns_a_record_or_problems(
    raw: RawRecord, policy: VinCheckDigitPolicy
) -> None:
    result = validate_record(raw, policy)
    if result is None:
        assert raw.problems
        for problem in raw.problems:
            assert isinstance(problem, Problem)
            assert problem.reason
            assert problem.ecu is None or 0 <= problem.ecu < len(raw.ecus)
        return
    assert raw.problems == []
    assert isinstance(result, VehicleRecord)
    assert result.manufactured_at.tzinfo is UTC
    assert result.exported_at.tzinfo is UTC
    assert result.manufactured_at <= result.exported_at
    assert 1980 <= result.model_year <= 2100
    assert result.region.isupper() and result.country.isupper()
    assert len({e.serial for e in result.ecus}) == len(result.ecus) == len(raw.ecus)


full_range_timestamps = st.builds(
    lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(), offsets
)
digit_like_text = st.text(
    alphabet=st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789 "), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(full_range_timestamps, digit_like_text)
@example("0001-01-01T00:00:00+01:00", "2025")
@example("2025-03-01T10:00:00Z", "²")
def test_validate_record_never_raises_over_the_full_value_range(
    manufactured_at: str, model_year: str
) -> None:
    raw = raw_record(1, manufactured_at=manufactured_at, model_year=model_year)
    result = validate_record(raw, NA)
    assert (result is None) == bool(raw.problems)
