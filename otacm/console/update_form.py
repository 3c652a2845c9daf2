"""The software update form: every field of `UpdateFields`, the R156 documentation included,
read from a console form into the API's document and written back for editing.

Inputs are named like the document's fields (`support.contact`, `regulatory.purpose`), so a
pydantic error or a service's `field` lands next to its input. Lists are typed one per line or
comma-separated; dependencies one per line as `ECU_TYPE MIN [MAX]` (`-` for no minimum).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData

from otacm.console.forms import FormErrors, flag, split_list, text
from otacm.updates.schemas import UpdateOut

TEXT_FIELDS = (
    "name",
    "version",
    "ecu_type",
    "software_part_number",
    "protocol",
    "category",
    "model_year_min",
    "model_year_max",
    "applicable_version_min",
    "applicable_version_max",
    "release_notes",
    "estimated_install_minutes",
    "install_order",
    "rollback_version",
    "support.contact",
    "support.documentation_url",
    "support.end_of_support",
    "preconditions.min_battery_percent",
    "regulatory.purpose",
    "regulatory.rxswin_before",
    "regulatory.rxswin_after",
    "regulatory.execution_conditions",
    "regulatory.verification_reference",
)
LIST_FIELDS = (
    "compatible_models",
    "hardware_part_numbers",
    "hardware_versions",
    "applicable_versions",
    "regulatory.affected_systems",
)
FLAG_FIELDS = (
    "confidential",
    "preconditions.parked",
    "preconditions.charging",
    "preconditions.ignition_off",
    "regulatory.type_approval_affected",
    "regulatory.safety_confirmed",
)
FIELDS = frozenset(
    (*TEXT_FIELDS, *LIST_FIELDS, *FLAG_FIELDS, "fuel_types", "dependencies", "artifacts")
)


def raw_values(form: FormData) -> dict[str, Any]:
    """The form as sent, to show it again (with its errors) exactly as typed."""
    values: dict[str, Any] = {name: text(form, name) for name in (*TEXT_FIELDS, *LIST_FIELDS)}
    values["dependencies"] = text(form, "dependencies")
    values.update({name: flag(form, name) for name in FLAG_FIELDS})
    values["fuel_types"] = [v for v in form.getlist("fuel_types") if isinstance(v, str)]
    return values


def _set(document: dict[str, Any], name: str, value: Any) -> None:
    group, _, field = name.rpartition(".")
    (document.setdefault(group, {}) if group else document)[field] = value


def _dependencies(raw: str, errors: FormErrors) -> list[dict[str, Any]]:
    found = []
    for number, line in enumerate(raw.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 3:
            errors["dependencies"] = (
                f"line {number}: write ECU_TYPE MIN [MAX], e.g. GATEWAY 3.2.0 "
                f"(got {line.strip()!r})"
            )
            continue
        ecu_type, minimum, maximum = (parts + [None, None])[:3]
        found.append(
            {
                "ecu_type": ecu_type,
                "min_version": None if minimum in (None, "-") else minimum,
                "max_version": maximum,
            }
        )
    return found


def document(values: dict[str, Any], errors: FormErrors) -> dict[str, Any]:
    """The API document of the form (every field: an edit replaces the whole definition);
    problems the schema cannot name (a malformed dependency line) go into `errors`."""
    doc: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        _set(doc, name, values[name] or None)
    for name in LIST_FIELDS:
        _set(doc, name, split_list(values[name]))
    for name in FLAG_FIELDS:
        _set(doc, name, values[name])
    doc["fuel_types"] = values["fuel_types"]
    doc["dependencies"] = _dependencies(values["dependencies"], errors)
    doc["release_notes"] = values["release_notes"] or ""
    if doc["install_order"] is None:
        doc["install_order"] = 0
    return doc


def values_of(update: UpdateOut) -> dict[str, Any]:
    """The form filled in with a stored update, for editing it."""
    doc = update.model_dump(mode="json")
    values: dict[str, Any] = {}
    for name in (*TEXT_FIELDS, *LIST_FIELDS, *FLAG_FIELDS):
        group, _, field = name.rpartition(".")
        value = (doc.get(group) or {}).get(field) if group else doc.get(field)
        if name in LIST_FIELDS:
            values[name] = "\n".join(value or [])
        elif name in FLAG_FIELDS:
            values[name] = bool(value)
        else:
            values[name] = "" if value is None else str(value)
    values["fuel_types"] = list(doc["fuel_types"])
    values["dependencies"] = "\n".join(
        " ".join(
            [
                d["ecu_type"],
                d.get("min_version") or "-",
                *([d["max_version"]] if d.get("max_version") else []),
            ]
        )
        for d in doc["dependencies"]
    )
    return values


def blank() -> dict[str, Any]:
    """A new draft's form: the defaults a vehicle expects (parked, ignition off)."""
    values: dict[str, Any] = {name: "" for name in (*TEXT_FIELDS, *LIST_FIELDS)}
    values.update({name: False for name in FLAG_FIELDS})
    values["preconditions.parked"] = True
    values["preconditions.ignition_off"] = True
    values["fuel_types"] = []
    values["dependencies"] = ""
    values["install_order"] = "0"
    return values
