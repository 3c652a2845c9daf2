"""Validation of manufacturing export records: pure functions, no I/O.

A raw record is what the parser read (JSON-shaped: vehicle fields plus a list of ECU dicts);
`validate_record` turns it into a `VehicleRecord` or the list of problems that reject it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from otacm.config import VinCheckDigitPolicy
from otacm.fleet.vin import InvalidVin, normalise_vin


class FuelType(StrEnum):
    DIESEL = "diesel"
    PETROL = "petrol"
    ELECTRIC = "electric"
    HYBRID = "hybrid"
    PLUG_IN_HYBRID = "plug_in_hybrid"
    HYDROGEN = "hydrogen"
    CNG = "cng"
    LPG = "lpg"


class Protocol(StrEnum):
    CAN = "CAN"
    CAN_FD = "CAN_FD"
    LIN = "LIN"
    FLEXRAY = "FLEXRAY"
    ETHERNET = "ETHERNET"
    MOST = "MOST"


class Region(StrEnum):
    """Market regions: where a vehicle is homologated and sold."""

    EU = "EU"
    UK = "UK"
    NA = "NA"
    LATAM = "LATAM"
    CN = "CN"
    JP = "JP"
    KR = "KR"
    IN = "IN"
    APAC = "APAC"
    MEA = "MEA"


class VehicleStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    SCRAPPED = "scrapped"


FUEL_TYPES = frozenset(FuelType)
PROTOCOLS = frozenset(Protocol)
REGIONS = frozenset(Region)

VEHICLE_FIELDS = (
    "vin",
    "engine_number",
    "chassis_number",
    "model",
    "model_year",
    "fuel_type",
    "region",
    "country",
    "manufactured_at",
    "exported_at",
)
OPTIONAL_VEHICLE_FIELDS = ("vehicle_public_key", "rxswin")
ECU_FIELDS = (
    "ecu_type",
    "serial",
    "hardware_part_number",
    "hardware_version",
    "protocol",
    "software_part_number",
    "software_version",
)
OPTIONAL_ECU_FIELDS = ("calibration_id",)
KNOWN_VEHICLE_KEYS = frozenset((*VEHICLE_FIELDS, *OPTIONAL_VEHICLE_FIELDS, "ecus"))

# Longest accepted value per field, matching the column sizes of the registry.
MAX_LENGTH = {
    "engine_number": 64,
    "chassis_number": 64,
    "model": 100,
    "ecu_type": 32,
    "serial": 64,
    "hardware_part_number": 64,
    "hardware_version": 32,
    "software_part_number": 64,
    "software_version": 64,
    "calibration_id": 64,
    "vehicle_public_key": 512,
    "rxswin": 1000,
}
MAX_ATTRIBUTE_LENGTH = 1000
MIN_MODEL_YEAR, MAX_MODEL_YEAR = 1980, 2100


@dataclass(slots=True)
class EcuRecord:
    ecu_type: str
    serial: str
    hardware_part_number: str
    hardware_version: str
    protocol: str
    software_part_number: str
    software_version: str
    calibration_id: str | None


@dataclass(slots=True)
class VehicleRecord:
    vin: str
    engine_number: str
    chassis_number: str
    model: str
    model_year: int
    fuel_type: str
    region: str
    country: str
    manufactured_at: datetime
    exported_at: datetime
    vehicle_public_key: str | None
    rxswin: str | None
    attributes: dict[str, Any]
    ecus: list[EcuRecord]


@dataclass(slots=True, frozen=True)
class Problem:
    """Why a record is rejected. `ecu` is the index of the ECU concerned, if any."""

    field: str | None
    reason: str
    ecu: int | None = None


@dataclass(slots=True)
class RawRecord:
    """One vehicle as read from the file, before validation."""

    line: int
    fields: dict[str, Any]
    ecus: list[dict[str, Any]] = field(default_factory=list)
    # Line of each ECU (CSV has one row per ECU; JSON Lines has them all on `line`).
    ecu_lines: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 timestamp string, got {_kind(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{_clip(value)!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{_clip(value)!r} has no UTC offset (add Z or +hh:mm)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{_clip(value)!r} is outside the range of dates") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _clip(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def _text(
    data: dict[str, Any], name: str, problems: list[Problem], ecu: int | None, required: bool = True
) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            problems.append(Problem(name, "is required", ecu))
        return None
    if not isinstance(value, str):
        problems.append(Problem(name, f"must be a string, got {_kind(value)}", ecu))
        return None
    value = value.strip()
    if not value:
        if required:
            problems.append(Problem(name, "is required", ecu))
        return None
    limit = MAX_LENGTH.get(name)
    if limit is not None and len(value) > limit:
        problems.append(Problem(name, f"is {len(value)} characters long, at most {limit}", ecu))
        return None
    if not value.isprintable():
        problems.append(Problem(name, "contains control characters", ecu))
        return None
    return value


def _choice(
    data: dict[str, Any],
    name: str,
    allowed: frozenset[str],
    problems: list[Problem],
    ecu: int | None,
    upper: bool,
) -> str | None:
    value = _text(data, name, problems, ecu)
    if value is None:
        return None
    value = value.upper() if upper else value.lower()
    if value not in allowed:
        value = data[name].strip()  # name the value as given, not as normalised
        problems.append(
            Problem(name, f"{_clip(value)!r} is not one of {', '.join(sorted(allowed))}", ecu)
        )
        return None
    return value


def _model_year(data: dict[str, Any], problems: list[Problem]) -> int | None:
    value = data.get("model_year")
    if value is None or value == "":
        problems.append(Problem("model_year", "is required"))
        return None
    # isdigit() alone admits "²" and other non-ASCII digits that int() refuses.
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 6:
            value = int(text)
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(Problem("model_year", f"must be a whole number, got {value!r:.40}"))
        return None
    if not MIN_MODEL_YEAR <= value <= MAX_MODEL_YEAR:
        problems.append(
            Problem("model_year", f"{value} is outside {MIN_MODEL_YEAR}-{MAX_MODEL_YEAR}")
        )
        return None
    return value


def _timestamp(data: dict[str, Any], name: str, problems: list[Problem]) -> datetime | None:
    value = data.get(name)
    if value is None or value == "":
        problems.append(Problem(name, "is required"))
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        problems.append(Problem(name, str(exc)))
        return None


def _attributes(fields: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in fields.items():
        if key in KNOWN_VEHICLE_KEYS:
            continue
        if not key or len(key) > 100 or not key.isprintable():
            problems.append(Problem(key[:100] or "(empty)", "is not a usable attribute name"))
            continue
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_LENGTH:
            problems.append(Problem(key, f"is longer than {MAX_ATTRIBUTE_LENGTH} characters"))
            continue
        if isinstance(value, dict | list):
            problems.append(Problem(key, "attributes hold plain values, not objects or lists"))
            continue
        attributes[key] = value
    return attributes


def validate_ecu(data: dict[str, Any], index: int, problems: list[Problem]) -> EcuRecord | None:
    fast = _clean_ecu(data)
    if fast is not None:
        return fast
    before = len(problems)
    ecu_type = _text(data, "ecu_type", problems, index)
    serial = _text(data, "serial", problems, index)
    hw_pn = _text(data, "hardware_part_number", problems, index)
    hw_version = _text(data, "hardware_version", problems, index)
    protocol = _choice(data, "protocol", PROTOCOLS, problems, index, upper=True)
    sw_pn = _text(data, "software_part_number", problems, index)
    sw_version = _text(data, "software_version", problems, index)
    calibration = _text(data, "calibration_id", problems, index, required=False)
    if len(problems) != before:
        return None
    assert ecu_type and serial and hw_pn and hw_version and protocol and sw_pn and sw_version
    return EcuRecord(
        ecu_type.upper(), serial, hw_pn, hw_version, protocol, sw_pn, sw_version, calibration
    )


def _clean_ecu(data: dict[str, Any]) -> EcuRecord | None:
    """The ECU when every field is already clean, else None (then the careful path decides).

    Most of a fleet import's time goes to its ECUs; this path checks the common case with a
    handful of operations instead of one function call per field.
    """
    get = data.get
    ecu_type, serial = get("ecu_type"), get("serial")
    hw_pn, hw_version = get("hardware_part_number"), get("hardware_version")
    protocol, calibration = get("protocol"), get("calibration_id")
    sw_pn, sw_version = get("software_part_number"), get("software_version")
    if not (
        type(ecu_type) is str
        and type(serial) is str
        and type(hw_pn) is str
        and type(hw_version) is str
        and type(sw_pn) is str
        and type(sw_version) is str
        and type(protocol) is str
        and protocol in PROTOCOLS
        and (calibration is None or (type(calibration) is str and 0 < len(calibration) <= 64))
        and 0 < len(ecu_type) <= 32
        and 0 < len(serial) <= 64
        and 0 < len(hw_pn) <= 64
        and 0 < len(hw_version) <= 32
        and 0 < len(sw_pn) <= 64
        and 0 < len(sw_version) <= 64
    ):
        return None
    joined = "|".join((ecu_type, serial, hw_pn, hw_version, sw_pn, sw_version, calibration or "-"))
    # Printable (the only whitespace left is the space) and no value starts or ends with one.
    if not joined.isprintable() or " |" in joined or "| " in joined or joined[0] == " ":
        return None
    if joined[-1] == " ":
        return None
    return EcuRecord(
        ecu_type.upper(), serial, hw_pn, hw_version, protocol, sw_pn, sw_version, calibration
    )


def validate_record(raw: RawRecord, policy: VinCheckDigitPolicy) -> VehicleRecord | None:
    """Validate `raw`; on failure return None and leave every problem in `raw.problems`."""
    problems = raw.problems
    data = raw.fields
    vin: str | None = None
    raw_vin = data.get("vin")
    if raw_vin is None or raw_vin == "":
        problems.append(Problem("vin", "is required"))
    elif not isinstance(raw_vin, str):
        problems.append(Problem("vin", f"must be a string, got {_kind(raw_vin)}"))
    else:
        try:
            vin = normalise_vin(raw_vin, policy)
        except InvalidVin as exc:
            problems.append(Problem("vin", str(exc)))
    engine_number = _text(data, "engine_number", problems, None)
    chassis_number = _text(data, "chassis_number", problems, None)
    model = _text(data, "model", problems, None)
    model_year = _model_year(data, problems)
    fuel_type = _choice(data, "fuel_type", FUEL_TYPES, problems, None, upper=False)
    region = _choice(data, "region", REGIONS, problems, None, upper=True)
    country = _text(data, "country", problems, None)
    if country is not None:
        if len(country) != 2 or not country.isascii() or not country.isalpha():
            problems.append(
                Problem("country", f"{_clip(country)!r} is not a two-letter ISO 3166 code")
            )
        country = country.upper()
    manufactured_at = _timestamp(data, "manufactured_at", problems)
    exported_at = _timestamp(data, "exported_at", problems)
    if manufactured_at and exported_at and manufactured_at > exported_at:
        problems.append(Problem("manufactured_at", "is later than exported_at"))
    public_key = _text(data, "vehicle_public_key", problems, None, required=False)
    rxswin = _text(data, "rxswin", problems, None, required=False)
    attributes = _attributes(data, problems)

    ecus: list[EcuRecord] = []
    serials: dict[str, int] = {}
    for index, ecu_data in enumerate(raw.ecus):
        ecu = validate_ecu(ecu_data, index, problems)
        if ecu is None:
            continue
        if ecu.serial in serials:
            problems.append(
                Problem(
                    "serial", f"ECU serial {ecu.serial!r} is listed twice for this vehicle", index
                )
            )
            continue
        serials[ecu.serial] = index
        ecus.append(ecu)
    if problems:
        return None
    assert vin and engine_number and chassis_number and model and model_year and fuel_type
    assert region and country and manufactured_at and exported_at
    return VehicleRecord(
        vin,
        engine_number,
        chassis_number,
        model,
        model_year,
        fuel_type,
        region,
        country,
        manufactured_at,
        exported_at,
        public_key,
        rxswin,
        attributes,
        ecus,
    )
