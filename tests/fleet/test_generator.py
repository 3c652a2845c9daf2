"""The synthetic fleet generator: determinism, realism and round trips through the parser."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from otacm.config import VinCheckDigitPolicy
from otacm.fleet import generator
from otacm.fleet.generator import DEFAULT_EXPORTED_AT, generate_records, write_export
from otacm.fleet.parser import CSV_HEADER, open_export
from otacm.fleet.records import FuelType, Protocol, RawRecord, Region, validate_record
from otacm.fleet.vin import normalise_vin

FLEET = 3000
SEED = 20260115
YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"
COMBUSTION = {"diesel", "petrol", "cng", "lpg", "hybrid", "plug_in_hybrid"}
ALWAYS = {"BCM", "ABS", "AIRBAG", "CLUSTER", "GATEWAY", "EPS", "TCU"}
REGION_WMI_START = {
    "NA": "12345",
    "EU": "WVZT",
    "UK": "S",
    "CN": "L",
    "JP": "J",
    "KR": "K",
    "IN": "M",
    "LATAM": "89",
    "APAC": "6M",
    "MEA": "AN",
}


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return list(generate_records(FLEET, SEED))


def export(vehicles: int, seed: int, fmt: str, **kwargs: Any) -> tuple[str, int]:
    out = io.StringIO()
    rows = write_export(out, vehicles, seed, fmt, **kwargs)
    return out.getvalue(), rows


def test_same_seed_gives_identical_bytes_and_other_seeds_other_fleets() -> None:
    for fmt in ("jsonl", "csv"):
        first, rows = export(400, 7, fmt)
        again, rows_again = export(400, 7, fmt)
        other, _ = export(400, 8, fmt)
        assert first == again and rows == rows_again
        assert first != other
    vins = {r["vin"] for r in generate_records(400, 7)}
    assert len(vins & {r["vin"] for r in generate_records(400, 8)}) < 5


def test_a_smaller_fleet_is_the_start_of_a_larger_one() -> None:
    small = list(generate_records(150, 3))
    assert list(generate_records(400, 3))[:150] == small


def test_json_lines_are_json_dumps_of_the_records() -> None:
    text, rows = export(300, 11, "jsonl")
    records = list(generate_records(300, 11))
    assert text.splitlines() == [json.dumps(r, separators=(",", ":")) for r in records]
    assert text.endswith("\n")
    assert rows == sum(len(r["ecus"]) for r in records)


def test_every_vin_is_valid_and_encodes_region_model_year(fleet: list[dict[str, Any]]) -> None:
    for record in fleet:
        vin = record["vin"]
        assert normalise_vin(vin, VinCheckDigitPolicy.ALWAYS) == vin
        assert vin[0] in REGION_WMI_START[record["region"]], (vin, record["region"])
        assert vin[9] == YEAR_CODES[(record["model_year"] - 1980) % 30]
        assert not set(vin) & set("IOQ")


def test_identifiers_are_unique(fleet: list[dict[str, Any]]) -> None:
    for name in ("vin", "engine_number", "chassis_number"):
        assert len({r[name] for r in fleet}) == FLEET, name
    serials = [e["serial"] for r in fleet for e in r["ecus"]]
    assert len(set(serials)) == len(serials)
    for record in fleet:
        for ecu in record["ecus"]:
            assert re.fullmatch(ecu["ecu_type"] + r"-[0-9A-F]{12}", ecu["serial"])


def test_ecus_fit_the_vehicle(fleet: list[dict[str, Any]]) -> None:
    counts = [len(r["ecus"]) for r in fleet]
    assert min(counts) >= 8 and max(counts) <= 15
    assert 11 <= sum(counts) / len(counts) <= 13.5
    for record in fleet:
        types = [e["ecu_type"] for e in record["ecus"]]
        assert len(types) == len(set(types))
        assert set(types) >= ALWAYS
        fuel = record["fuel_type"]
        assert ({"ECM", "TCM"} <= set(types)) == (fuel in COMBUSTION)
        assert (
            ("BMS" in types)
            == ("INVERTER" in types)
            == (fuel in {"hybrid", "plug_in_hybrid", "electric", "hydrogen"})
        )
        assert ("OBC" in types) == (fuel in {"plug_in_hybrid", "electric"})
        assert ("FCCU" in types) == (fuel == "hydrogen")


def test_part_numbers_versions_and_calibrations_look_real(fleet: list[dict[str, Any]]) -> None:
    ecus = [e for r in fleet for e in r["ecus"]]
    for ecu in ecus:
        hw, sw = ecu["hardware_part_number"], ecu["software_part_number"]
        assert re.fullmatch(r"\d[A-Z]\d\d{6}", hw)
        assert sw[:-2] == hw and re.fullmatch(r"[A-Z]{2}", sw[-2:])
        assert re.fullmatch(r"[A-C][1-3]", ecu["hardware_version"])
        assert re.fullmatch(r"\d+\.\d+\.\d+", ecu["software_version"])
        calibration = ecu["calibration_id"]
        assert calibration is None or re.fullmatch(r"CAL-\d{4}", calibration)
    assert all(e["calibration_id"] is None for e in ecus if e["ecu_type"] == "GATEWAY")
    assert all(e["calibration_id"] for e in ecus if e["ecu_type"] == "ECM")
    minors = {int(e["software_version"].split(".")[1]) for e in ecus}
    assert max(minors) >= 10
    versions_per_type: dict[str, set[str]] = {}
    for ecu in ecus:
        versions_per_type.setdefault(ecu["ecu_type"], set()).add(ecu["software_version"])
    assert all(len(v) >= 2 for v in versions_per_type.values())
    assert all(e["protocol"] == "LIN" for e in ecus if e["ecu_type"] == "HVAC")
    assert all(e["protocol"] == "ETHERNET" for e in ecus if e["ecu_type"] in ("GATEWAY", "TCU"))


def test_newer_model_years_run_newer_software(fleet: list[dict[str, Any]]) -> None:
    def mean_release(years: range) -> float:
        picked = [
            tuple(int(p) for p in e["software_version"].split("."))
            for r in fleet
            if r["model_year"] in years
            for e in r["ecus"]
            if e["ecu_type"] == "BCM"
        ]
        ordered = sorted({*picked})
        return sum(ordered.index(v) for v in picked) / len(picked)

    assert mean_release(range(2019, 2021)) < mean_release(range(2024, 2027))


def test_every_category_occurs(fleet: list[dict[str, Any]]) -> None:
    assert {r["fuel_type"] for r in fleet} == set(FuelType)
    assert {r["region"] for r in fleet} == set(Region)
    assert {e["protocol"] for r in fleet for e in r["ecus"]} == set(Protocol)
    assert 5 <= len({r["model"] for r in fleet}) <= 6
    assert all(2019 <= r["model_year"] <= 2026 for r in fleet)


def test_every_record_passes_validation(fleet: list[dict[str, Any]]) -> None:
    for line, record in enumerate(fleet, 1):
        fields = {k: v for k, v in record.items() if k != "ecus"}
        raw = RawRecord(line, fields, record["ecus"])
        assert validate_record(raw, VinCheckDigitPolicy.ALWAYS) is not None, raw.problems
        assert raw.problems == []


def test_build_times_fit_model_year_and_export(fleet: list[dict[str, Any]]) -> None:
    for record in fleet:
        built = datetime.fromisoformat(record["manufactured_at"])
        assert built.utcoffset() == timedelta(0)
        assert built < DEFAULT_EXPORTED_AT
        assert record["model_year"] - 1 <= built.year <= record["model_year"]
        assert record["exported_at"] == "2026-01-15T00:00:00+00:00"


def test_export_time_can_be_chosen() -> None:
    moment = datetime(2023, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    records = list(generate_records(500, 5, moment))
    assert {r["exported_at"] for r in records} == {"2023-03-01T10:00:00+00:00"}
    assert all(datetime.fromisoformat(r["manufactured_at"]) < moment for r in records)
    assert max(r["model_year"] for r in records) <= 2023
    with pytest.raises(ValueError, match="time zone"):
        list(generate_records(1, 5, datetime(2023, 3, 1)))
    with pytest.raises(ValueError, match="before any model"):
        list(generate_records(1, 5, datetime(2010, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_parses_back_without_problems(fmt: str) -> None:
    text, rows = export(1200, 21, fmt)
    data = text.encode()
    reader = open_export(io.BytesIO(data), 1 << 20)
    assert reader.format == fmt
    parsed = list(reader.records)
    assert len(parsed) == 1200
    assert sum(len(r.ecus) for r in parsed) == rows
    for raw in parsed:
        assert raw.problems == []
        assert validate_record(raw, VinCheckDigitPolicy.ALWAYS) is not None, raw.problems
    if fmt == "csv":
        lines = text.splitlines()
        assert lines[0].split(",") == CSV_HEADER
        assert len(lines) == rows + 1
        assert all(line.count(",") == len(CSV_HEADER) - 1 for line in lines)
        gateway = next(line.split(",") for line in lines if ",GATEWAY," in line)
        assert gateway[CSV_HEADER.index("calibration_id")] == ""
        first = list(generate_records(1, 21))[0]
        row = lines[1].split(",")
        assert row[CSV_HEADER.index("ecu_serial")] == first["ecus"][0]["serial"]
        assert row[CSV_HEADER.index("vin")] == first["vin"]


def test_progress_is_reported_every_thousand_vehicles_and_at_the_end() -> None:
    for vehicles, expected in ((2500, [1000, 2000, 2500]), (2000, [1000, 2000]), (0, [0])):
        seen: list[int] = []
        text, rows = export(vehicles, 1, "csv", on_vehicle=seen.append)
        assert seen == expected
    assert text == ",".join(CSV_HEADER) + "\n" and rows == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fmt"):
        export(10, 1, "xml")
    with pytest.raises(ValueError, match="vehicles"):
        export(-1, 1, "csv")
    with pytest.raises(TypeError):
        export(10.0, 1, "csv")  # type: ignore[arg-type]


def test_vins_stay_unique_past_the_first_serial_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # Vehicles past the first 3.3 million get a letter in VIN position 13; try it on a small scale.
    monkeypatch.setattr(generator, "_VIN_BLOCK1", 200)
    vins = [r["vin"] for r in generate_records(2000, 9)]
    assert len(set(vins)) == 2000
    assert all(normalise_vin(v, VinCheckDigitPolicy.ALWAYS) == v for v in vins)
    assert all(v[12].isdigit() for v in vins[:200])
    assert all(v[12].isalpha() for v in vins[200:])
