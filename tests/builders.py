"""Plain builders of test data: manufacturing export records and files."""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any

from otacm.fleet.parser import CSV_HEADER
from otacm.fleet.vin import with_check_digit
from otacm.updates.samples import sample_update


def vin(n: int, wmi: str = "WXA") -> str:
    """A valid VIN (correct check digit) numbered `n`."""
    return with_check_digit(f"{wmi}AB12C0S{n:06d}"[:17].ljust(17, "0"))


def ecu(serial: str, ecu_type: str = "BCM", **overrides: Any) -> dict[str, Any]:
    data = {
        "ecu_type": ecu_type,
        "serial": serial,
        "hardware_part_number": "5Q0937084",
        "hardware_version": "B2",
        "protocol": "CAN",
        "software_part_number": "5Q0937084AB",
        "software_version": "4.1.0",
        "calibration_id": "CAL-0042",
    }
    data.update(overrides)
    return data


def vehicle(
    n: int,
    *,
    exported_at: str = "2025-03-02T00:00:00Z",
    ecus: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vin": vin(n),
        "engine_number": f"CJX{n:06d}",
        "chassis_number": f"CH-{n:06d}",
        "model": "Aurora",
        "model_year": 2025,
        "fuel_type": "electric",
        "region": "EU",
        "country": "DE",
        "manufactured_at": "2025-03-01T10:00:00Z",
        "exported_at": exported_at,
        "ecus": ecus
        if ecus is not None
        else [
            ecu(f"BCM-{n:06d}"),
            ecu(f"BMS-{n:06d}", "BMS", protocol="CAN_FD", software_version="2.0.0"),
        ],
    }
    data.update(overrides)
    return data


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def csv_bytes(records: list[dict[str, Any]], extra_columns: list[str] = ()) -> bytes:  # type: ignore[assignment]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_HEADER, *extra_columns])
    for r in records:
        vehicle_values = [r.get(c, "") for c in CSV_HEADER[:10]]
        for e in r["ecus"]:
            writer.writerow(
                [
                    *vehicle_values,
                    e["ecu_type"],
                    e["serial"],
                    *[e.get(c) or "" for c in CSV_HEADER[12:]],
                    *[r.get(c, "") for c in extra_columns],
                ]
            )
    return out.getvalue().encode()


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def update_document(**overrides: Any) -> dict[str, Any]:
    """A software update definition complete enough to release once it has a file: the
    product's sample update, with values the catalog tests filter on."""
    data: dict[str, Any] = {
        "name": "BCM comfort fixes",
        "fuel_types": ["electric", "petrol"],
        "applicable_versions": ["4.1.0"],
        "release_notes": "Fixes the interior light timeout.",
        "support": {
            "contact": "bcm-team@example.com",
            "documentation_url": "https://docs.example.com/bcm/4.2.0",
            "end_of_support": "2030-12-31",
        },
    }
    return sample_update(**{**data, **overrides})
