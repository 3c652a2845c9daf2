"""The target selection and region rules as console inputs, shared by the targeting page and
the campaign wizard. Input names are the JSON paths (`selection.query`,
`regions.excluded_countries`), so errors land next to their input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.datastructures import ImmutableMultiDict

from otacm.console.forms import split_list
from otacm.fleet.records import FuelType, Region

TEXT = (
    "selection.query",
    "selection.models",
    "selection.model_year_min",
    "selection.model_year_max",
    "selection.countries",
    "selection.vins",
    "selection.exclude_vins",
    "regions.allowed_countries",
    "regions.excluded_countries",
)
CHOICES = (
    "selection.fuel_types",
    "selection.regions",
    "regions.allowed_regions",
    "regions.excluded_regions",
)
FIELDS = frozenset((*TEXT, *CHOICES, "update_ids", "allow_downgrade"))
OPTIONS = {
    "selection.fuel_types": list(FuelType),
    "selection.regions": list(Region),
    "regions.allowed_regions": list(Region),
    "regions.excluded_regions": list(Region),
}


def raw_values(data: ImmutableMultiDict[str, Any]) -> dict[str, Any]:
    """The inputs as sent (query parameters or a posted form)."""
    values: dict[str, Any] = {}
    for name in TEXT:
        value = data.get(name)
        values[name] = value.strip() if isinstance(value, str) else ""
    for name in CHOICES:
        values[name] = [v for v in data.getlist(name) if isinstance(v, str) and v]
    return values


def documents(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `selection` and `regions` JSON documents of the inputs (validated by the caller)."""
    selection: dict[str, Any] = {
        "query": values["selection.query"] or None,
        "models": split_list(values["selection.models"]),
        "model_year_min": values["selection.model_year_min"] or None,
        "model_year_max": values["selection.model_year_max"] or None,
        "fuel_types": list(values["selection.fuel_types"]),
        "regions": list(values["selection.regions"]),
        "countries": split_list(values["selection.countries"]),
        "vins": split_list(values["selection.vins"]),
        "exclude_vins": split_list(values["selection.exclude_vins"]),
    }
    regions: dict[str, Any] = {
        "allowed_regions": list(values["regions.allowed_regions"]),
        "excluded_regions": list(values["regions.excluded_regions"]),
        "allowed_countries": split_list(values["regions.allowed_countries"]),
        "excluded_countries": split_list(values["regions.excluded_countries"]),
    }
    return selection, regions


def values_of(selection: Mapping[str, Any], regions: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs filled in from stored documents (a campaign being edited)."""

    def joined(items: Any) -> str:
        return "\n".join(str(i) for i in items or [])

    def plain(value: Any) -> str:
        return "" if value is None else str(value)

    return {
        "selection.query": plain(selection.get("query")),
        "selection.models": joined(selection.get("models")),
        "selection.model_year_min": plain(selection.get("model_year_min")),
        "selection.model_year_max": plain(selection.get("model_year_max")),
        "selection.countries": joined(selection.get("countries")),
        "selection.vins": joined(selection.get("vins")),
        "selection.exclude_vins": joined(selection.get("exclude_vins")),
        "selection.fuel_types": list(selection.get("fuel_types") or []),
        "selection.regions": list(selection.get("regions") or []),
        "regions.allowed_regions": list(regions.get("allowed_regions") or []),
        "regions.excluded_regions": list(regions.get("excluded_regions") or []),
        "regions.allowed_countries": joined(regions.get("allowed_countries")),
        "regions.excluded_countries": joined(regions.get("excluded_countries")),
    }
