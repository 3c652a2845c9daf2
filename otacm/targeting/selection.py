"""Target selections: which vehicles a preview or a campaign is about.

`TargetSelection` is the structured JSON filter; its optional `query` says the same in the
query language (`query_language.py`) and is combined with the structured fields by AND.
`selection_condition` turns a selection into one WHERE condition over `Vehicle` with bound
parameters only; `describe` summarises it for the audit log and the console. Documented in
docs/targeting.md ("Target selection").
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from sqlalchemy import ARRAY, ColumnElement, Text, all_, and_, any_, func, literal, select, true

from otacm.fleet.models import Ecu, Vehicle
from otacm.fleet.records import (
    MAX_MODEL_YEAR,
    MIN_MODEL_YEAR,
    FuelType,
    Protocol,
    Region,
    VehicleStatus,
)
from otacm.targeting.query_language import (
    MAX_QUERY_LENGTH,
    attribute_text,
    ecu_match,
    parse,
    to_condition,
)

__all__ = ["EcuCondition", "TargetSelection", "describe", "selection_condition"]

MAX_VINS = 1_000_000  # in `vins`, and again in `exclude_vins`
MAX_LIST = 1_000  # values in any other list
MAX_ATTRIBUTES = 50
MAX_ECU_CONDITIONS = 50
# Up to this many VINs are bound one parameter each; longer lists as one parameter.
SHORT_VIN_LIST = 100

Text100 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_VINS = re.compile(r"[A-HJ-NPR-Z0-9]{17}(?:\n[A-HJ-NPR-Z0-9]{17})*")


def _cased(value: Any, upper: bool) -> Any:
    """Enum values in any letter case, as the fleet import accepts them."""
    if isinstance(value, list):
        return [
            (v.strip().upper() if upper else v.strip().lower()) if isinstance(v, str) else v
            for v in value
        ]
    return value


class EcuCondition(BaseModel):
    """A fitted ECU of `ecu_type` that meets every given list (each: one of these values).

    All lists hold for one and the same ECU; an empty list does not narrow the selection.
    """

    model_config = ConfigDict(extra="forbid")

    ecu_type: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")
    hardware_part_numbers: list[Text100] = Field(default_factory=list, max_length=MAX_LIST)
    hardware_versions: list[Text100] = Field(default_factory=list, max_length=MAX_LIST)
    software_versions: list[Text100] = Field(default_factory=list, max_length=MAX_LIST)
    software_part_numbers: list[Text100] = Field(default_factory=list, max_length=MAX_LIST)
    protocols: list[Protocol] = Field(default_factory=list, max_length=len(Protocol))

    @field_validator("ecu_type")
    @classmethod
    def _upper_type(cls, value: str) -> str:
        return value.upper()

    @field_validator("protocols", mode="before")
    @classmethod
    def _protocol_case(cls, value: Any) -> Any:
        return _cased(value, upper=True)


class TargetSelection(BaseModel):
    """Vehicles meeting every given field; an empty list or a missing field does not narrow
    the selection, so an empty selection is the whole fleet."""

    model_config = ConfigDict(extra="forbid")

    models: list[Text100] = Field(default_factory=list, max_length=MAX_LIST)
    model_year_min: int | None = Field(None, ge=MIN_MODEL_YEAR, le=MAX_MODEL_YEAR)
    model_year_max: int | None = Field(None, ge=MIN_MODEL_YEAR, le=MAX_MODEL_YEAR)
    fuel_types: list[FuelType] = Field(default_factory=list, max_length=len(FuelType))
    regions: list[Region] = Field(default_factory=list, max_length=len(Region))
    countries: list[str] = Field(
        default_factory=list, max_length=MAX_LIST, description="ISO 3166 alpha-2 codes"
    )
    vins: list[str] = Field(
        default_factory=list, max_length=MAX_VINS, description="Only these vehicles"
    )
    exclude_vins: list[str] = Field(
        default_factory=list, max_length=MAX_VINS, description="Never these vehicles"
    )
    statuses: list[VehicleStatus] = Field(default_factory=list, max_length=len(VehicleStatus))
    attributes: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description="Vehicle attributes that must have exactly these values (as text)",
    )
    ecus: list[EcuCondition] = Field(default_factory=list, max_length=MAX_ECU_CONDITIONS)
    query: str | None = Field(
        None,
        max_length=MAX_QUERY_LENGTH,
        description="The query language (docs/targeting.md), combined with the rest by AND",
    )

    @field_validator("fuel_types", "statuses", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return _cased(value, upper=False)

    @field_validator("regions", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return _cased(value, upper=True)

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        codes = [c.strip().upper() for c in value]
        for code in codes:
            if len(code) != 2 or not code.isascii() or not code.isalpha():
                raise ValueError(f"{code[:40]!r} is not a two-letter ISO 3166 code")
        return codes

    @field_validator("vins", "exclude_vins")
    @classmethod
    def _vins(cls, value: list[str]) -> list[str]:
        # One regular expression over the joined list checks a million VINs in milliseconds.
        vins = list(dict.fromkeys(v.strip().upper() for v in value))
        if vins and not _VINS.fullmatch("\n".join(vins)):
            bad = next(v for v in vins if not _VIN.fullmatch(v))
            raise ValueError(f"{bad[:40]!r} is not a VIN (17 characters, ISO 3779 alphabet)")
        return vins

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or len(name) > 100 or not name.isprintable():
                raise ValueError(f"{name[:100]!r} is not a usable attribute name")
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        # Raises QueryError (not a ValueError), so that the API answers with its position and
        # what was expected there rather than pydantic's generic message.
        if value is not None and value.strip():
            parse(value)
            return value
        return None

    @model_validator(mode="after")
    def _year_range(self) -> TargetSelection:
        low, high = self.model_year_min, self.model_year_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"model_year_min {low} is above model_year_max {high}")
        return self


def _vin_list(vins: list[str], dialect_name: str, *, exclude: bool) -> ColumnElement[bool]:
    """`vin IN vins` (or NOT IN) with the list as one parameter when it is long: a text
    split by PostgreSQL (`= ANY(string_to_array(...))`), a JSON array read by SQLite's
    json_each. A million separate parameters would cost far more to send than to look up."""
    if len(vins) <= SHORT_VIN_LIST:
        return Vehicle.vin.not_in(vins) if exclude else Vehicle.vin.in_(vins)
    if dialect_name == "postgresql":
        array = func.string_to_array(
            literal("\n".join(vins), Text), literal("\n", Text), type_=ARRAY(Text)
        )
        return Vehicle.vin != all_(array) if exclude else Vehicle.vin == any_(array)
    listed = select(func.json_each(literal(json.dumps(vins), Text)).table_valued("value").c.value)
    return Vehicle.vin.not_in(listed) if exclude else Vehicle.vin.in_(listed)


def _ecu_condition(ecu: EcuCondition) -> ColumnElement[bool]:
    lists: list[tuple[Any, list[str]]] = [
        (Ecu.hardware_part_number, ecu.hardware_part_numbers),
        (Ecu.hardware_version, ecu.hardware_versions),
        (Ecu.software_version, ecu.software_versions),
        (Ecu.software_part_number, ecu.software_part_numbers),
        (Ecu.protocol, [p.value for p in ecu.protocols]),
    ]
    return ecu_match(ecu.ecu_type, [column.in_(values) for column, values in lists if values])


def selection_condition(selection: TargetSelection, dialect_name: str) -> ColumnElement[bool]:
    """The vehicles of `selection` as a WHERE condition over `Vehicle` ("sqlite" or
    "postgresql"). Raises QueryError for a query that does not parse."""
    s = selection
    conditions: list[ColumnElement[bool]] = []
    if s.models:
        conditions.append(Vehicle.model.in_(s.models))
    if s.model_year_min is not None:
        conditions.append(Vehicle.model_year >= s.model_year_min)
    if s.model_year_max is not None:
        conditions.append(Vehicle.model_year <= s.model_year_max)
    for column, values in (
        (Vehicle.fuel_type, s.fuel_types),
        (Vehicle.region, s.regions),
        (Vehicle.country, s.countries),
        (Vehicle.status, s.statuses),
    ):
        if values:
            conditions.append(column.in_([str(v) for v in values]))
    for name, value in s.attributes.items():
        conditions.append(attribute_text(name, dialect_name) == value)
    conditions.extend(_ecu_condition(ecu) for ecu in s.ecus)
    if s.vins:
        conditions.append(_vin_list(s.vins, dialect_name, exclude=False))
    if s.exclude_vins:
        conditions.append(_vin_list(s.exclude_vins, dialect_name, exclude=True))
    if s.query:
        conditions.append(to_condition(parse(s.query), dialect_name))
    return and_(*conditions) if conditions else true()


def _some(values: list[str], noun: str, shown: int = 4) -> str:
    if len(values) <= shown:
        return " or ".join(values) if len(values) <= 2 else ", ".join(values)
    return f"{', '.join(values[:shown])}, … ({len(values)} {noun})"


def describe(selection: TargetSelection) -> str:
    """A one-line summary, e.g. "model Aurora; fuel type electric or hybrid; 12,000 VINs"."""
    s = selection
    parts: list[str] = []
    if s.models:
        parts.append(f"model {_some(s.models, 'models')}")
    if s.model_year_min is not None or s.model_year_max is not None:
        low, high = s.model_year_min, s.model_year_max
        if low is not None and high is not None:
            parts.append(f"model year {low}" if low == high else f"model year {low}–{high}")
        else:
            parts.append(f"model year {'≥ ' + str(low) if low is not None else '≤ ' + str(high)}")
    for label, values in (
        ("fuel type", s.fuel_types),
        ("region", s.regions),
        ("country", s.countries),
        ("status", s.statuses),
    ):
        if values:
            parts.append(f"{label} {_some([str(v) for v in values], label + 's')}")
    parts.extend(f"attribute {name} = {value}" for name, value in s.attributes.items())
    for ecu in s.ecus:
        fitted = [
            f"{label} {_some(list(values), label + 's')}"
            for label, values in (
                ("hardware part number", ecu.hardware_part_numbers),
                ("hardware version", ecu.hardware_versions),
                ("software version", ecu.software_versions),
                ("software part number", ecu.software_part_numbers),
                ("protocol", [p.value for p in ecu.protocols]),
            )
            if values
        ]
        parts.append(f"a {ecu.ecu_type}" + (" with " + " and ".join(fitted) if fitted else ""))
    if s.vins:
        parts.append(f"{len(s.vins):,} VIN{'s' if len(s.vins) != 1 else ''}")
    if s.exclude_vins:
        parts.append(
            f"excluding {len(s.exclude_vins):,} VIN{'s' if len(s.exclude_vins) != 1 else ''}"
        )
    if s.query:
        query = s.query.strip()
        parts.append(f"query {query if len(query) <= 200 else query[:199] + '…'}")
    return "; ".join(parts) if parts else "all vehicles"
