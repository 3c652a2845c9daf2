"""The campaign wizard's inputs: what each step asks, and how all of them together become the
API's campaign document (`CampaignCreate`). Pure: no database, no web.

The wizard carries every input typed so far, as typed, from step to step (a hidden field), so
going back shows exactly what was entered; only the last step turns them into a campaign.
Input names are the document's paths (`rollout.waves.steps`), except the user notice, whose
languages are numbered blocks (`notice.0.purpose`): errors are moved to those names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from otacm.campaigns.policy import RolloutPolicy
from otacm.campaigns.schemas import CampaignCreate, CampaignOut
from otacm.console import selection_form
from otacm.console.forms import FORM, FormErrors, split_list
from otacm.errors import OtacmError

STEPS = ("updates", "targets", "rollout", "schedule", "notice", "review")
STEP_TITLES = {
    "updates": "Updates",
    "targets": "Targets",
    "rollout": "Rollout policy",
    "schedule": "Schedule, windows, regions, priority",
    "notice": "User notice",
    "review": "Review",
}
NOTICE_BLOCKS = 2  # languages offered at once; the first is required
NOTICE_FIELDS = (
    "language",
    "purpose",
    "what_changes",
    "expected_duration_minutes",
    "functions_unavailable",
    "instructions",
)
ROLLOUT_TEXT = (
    "rollout.waves.steps",
    "rollout.waves.canary_vins",
    "rollout.waves.soak_time",
    "rollout.waves.success_threshold_percent",
    "rollout.waves.failure_threshold_percent",
    "rollout.waves.failure_min_finished",
    "rollout.retries.max_attempts",
    "rollout.retries.retry_on",
    "rollout.retries.backoff_base",
    "rollout.retries.backoff_cap",
    "rollout.timeouts.in_progress",
    "rollout.timeouts.offered",
)
SCHEDULE_TEXT = ("urgency", "starts_at", "ends_at", "priority", "rollout.maintenance_windows")
# The inputs of each step (lists and flags included).
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "updates": ("name", "category", "update_ids"),
    "targets": tuple(
        n for n in (*selection_form.TEXT, *selection_form.CHOICES) if n.startswith("selection.")
    ),
    "rollout": (*ROLLOUT_TEXT, "rollout.dynamic"),
    "schedule": (
        *SCHEDULE_TEXT,
        "consent_required",
        *(n for n in (*selection_form.TEXT, *selection_form.CHOICES) if n.startswith("regions.")),
    ),
    "notice": tuple(f"notice.{i}.{f}" for i in range(NOTICE_BLOCKS) for f in NOTICE_FIELDS),
}
LISTS = frozenset({"update_ids", *selection_form.CHOICES})
FLAGS = frozenset({"rollout.dynamic", "consent_required"})
# Durations are typed in minutes.
MINUTES = frozenset(
    {
        "rollout.waves.soak_time",
        "rollout.retries.backoff_base",
        "rollout.retries.backoff_cap",
        "rollout.timeouts.in_progress",
        "rollout.timeouts.offered",
    }
)
ALL_FIELDS = frozenset(f for fields in STEP_FIELDS.values() for f in fields)


def step_of(field: str) -> str:
    return next((s for s, fields in STEP_FIELDS.items() if field in fields), "review")


def _minutes(value: timedelta | None) -> str:
    return "" if value is None else f"{value.total_seconds() / 60:g}"


def blank() -> dict[str, Any]:
    """A new campaign's inputs: the rollout policy's defaults, immediate, priority 500."""
    policy = RolloutPolicy()
    values: dict[str, Any] = {name: "" for name in ALL_FIELDS}
    values.update({name: [] for name in LISTS})
    values.update({"consent_required": True, "rollout.dynamic": False})
    values.update(_policy_values(policy))
    values.update({"urgency": "immediate", "priority": "500", "notice.0.language": "en"})
    return values


def _policy_values(policy: RolloutPolicy) -> dict[str, Any]:
    w, r, t = policy.waves, policy.retries, policy.timeouts
    return {
        "rollout.waves.steps": ", ".join(
            f"{s.percent:g}%" if s.percent is not None else str(s.count) for s in w.steps
        ),
        "rollout.waves.canary_vins": "\n".join(w.canary_vins),
        "rollout.waves.soak_time": _minutes(w.soak_time),
        "rollout.waves.success_threshold_percent": f"{w.success_threshold_percent:g}",
        "rollout.waves.failure_threshold_percent": f"{w.failure_threshold_percent:g}",
        "rollout.waves.failure_min_finished": str(w.failure_min_finished),
        "rollout.retries.max_attempts": str(r.max_attempts),
        "rollout.retries.retry_on": ", ".join(r.retry_on),
        "rollout.retries.backoff_base": _minutes(r.backoff_base),
        "rollout.retries.backoff_cap": _minutes(r.backoff_cap),
        "rollout.timeouts.in_progress": _minutes(t.in_progress),
        "rollout.timeouts.offered": _minutes(t.offered),
        "rollout.dynamic": policy.dynamic,
        "rollout.maintenance_windows": "\n".join(
            f"{','.join(d.value for d in m.days)} {m.start.strftime('%H:%M')} "
            f"{_minutes(m.duration)}m {m.timezone}"
            for m in policy.maintenance_windows
        ),
    }


def _utc_input(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M") if value else ""


def values_of(campaign: CampaignOut) -> dict[str, Any]:
    """The inputs of a stored campaign, for editing it in the wizard."""
    values = blank()
    values.update(
        {
            "name": campaign.name,
            "category": campaign.category.value,
            "update_ids": [str(i) for i in campaign.update_ids],
            "urgency": campaign.urgency.value,
            "starts_at": _utc_input(campaign.starts_at),
            "ends_at": _utc_input(campaign.ends_at),
            "priority": str(campaign.priority),
            "consent_required": campaign.consent_required,
        }
    )
    values.update(
        selection_form.values_of(
            campaign.selection.model_dump(mode="json"), campaign.regions.model_dump(mode="json")
        )
    )
    values.update(_policy_values(campaign.rollout))
    for i, (language, notice) in enumerate(list(campaign.user_notice.items())[:NOTICE_BLOCKS]):
        values[f"notice.{i}.language"] = language
        values[f"notice.{i}.purpose"] = notice.purpose
        values[f"notice.{i}.what_changes"] = notice.what_changes
        values[f"notice.{i}.expected_duration_minutes"] = str(notice.expected_duration_minutes)
        values[f"notice.{i}.functions_unavailable"] = "\n".join(notice.functions_unavailable)
        values[f"notice.{i}.instructions"] = notice.instructions
    return values


def take(
    values: dict[str, Any], step: str, form: Mapping[str, Any], lists: Mapping[str, list[str]]
) -> None:
    """Put the inputs of `step` as sent into `values` (`lists`: the repeated fields)."""
    for name in STEP_FIELDS.get(step, ()):
        if name in LISTS:
            values[name] = list(lists.get(name, []))
        elif name in FLAGS:
            values[name] = form.get(name) not in (None, "", "false")
        else:
            raw = form.get(name)
            values[name] = raw.strip() if isinstance(raw, str) else ""


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?$")
_STEP = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")


def _steps(text: str, errors: FormErrors) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for part in split_list(text):
        percent = _STEP.match(part)
        if percent:
            steps.append({"percent": float(percent.group(1))})
        elif part.isdigit():
            steps.append({"count": int(part)})
        else:
            errors["rollout.waves.steps"] = (
                f"{part!r} is neither a share (10%) nor a number of vehicles (200)"
            )
    return steps


def _duration(text: str) -> int | None:
    """Seconds of "8h", "90m", "1h30m"."""
    found = _DURATION.match(text.replace(" ", ""))
    if not text or not found or not any(found.groups()):
        return None
    hours, minutes = (float(g) if g else 0.0 for g in found.groups())
    return int(hours * 3600 + minutes * 60)


def _windows(text: str, errors: FormErrors) -> list[dict[str, Any]]:
    windows = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        seconds = _duration(parts[2]) if len(parts) == 4 else None
        if seconds is None:
            errors["rollout.maintenance_windows"] = (
                f"line {number}: write DAYS START DURATION ZONE, e.g. "
                f"sat,sun 22:00 8h Europe/Berlin (got {line.strip()!r})"
            )
            continue
        windows.append(
            {
                "days": split_list(parts[0]),
                "start": parts[1],
                "duration": seconds,
                "timezone": parts[3],
            }
        )
    return windows


def _seconds(text: str) -> float | str | None:
    if not text:
        return None
    try:
        return float(text) * 60
    except ValueError:
        return text  # left for the schema to refuse, next to its input


def _utc(text: str) -> str | None:
    """A `datetime-local` input read as UTC (the form says so)."""
    return f"{text}:00+00:00" if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text) else text or None


def document(values: Mapping[str, Any], errors: FormErrors) -> dict[str, Any]:
    """The `CampaignCreate` document of the inputs; what the schema cannot name goes into
    `errors` under its input."""
    selection, regions = selection_form.documents(values)
    rollout: dict[str, Any] = {"waves": {}, "retries": {}, "timeouts": {}}
    for name in ROLLOUT_TEXT:
        _, group, field = name.split(".")
        raw = values[name]
        if name == "rollout.waves.steps":
            value: Any = _steps(raw, errors)
        elif name in ("rollout.waves.canary_vins", "rollout.retries.retry_on"):
            value = split_list(raw)
        elif name in MINUTES:
            value = _seconds(raw)
        else:
            value = raw or None
        if value is not None:
            rollout[group][field] = value
    rollout["dynamic"] = bool(values["rollout.dynamic"])
    rollout["maintenance_windows"] = _windows(values["rollout.maintenance_windows"], errors)
    notices: dict[str, Any] = {}
    for i in range(NOTICE_BLOCKS):
        block = {f: values[f"notice.{i}.{f}"] for f in NOTICE_FIELDS}
        if i > 0 and not any(v for f, v in block.items() if f != "language"):
            continue
        language = block.pop("language") or ""
        if language in notices:
            errors[f"notice.{i}.language"] = f"{language!r} is given twice"
        block["functions_unavailable"] = [
            line.strip() for line in block["functions_unavailable"].splitlines() if line.strip()
        ]
        block = {k: v for k, v in block.items() if v not in ("", None)}
        notices[language] = block
    return {
        "name": values["name"] or None,
        "category": values["category"] or None,
        "urgency": values["urgency"] or None,
        "starts_at": _utc(values["starts_at"]),
        "ends_at": _utc(values["ends_at"]),
        "priority": values["priority"] or None,
        "update_ids": [u for u in values["update_ids"] if u],
        "selection": selection,
        "regions": regions,
        "consent_required": bool(values["consent_required"]),
        "user_notice": notices,
        "rollout": rollout,
    }


def _input_of(loc: tuple[Any, ...], languages: list[str]) -> str:
    """The input a schema error's location points at."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if parts and parts[0] == "user_notice":
        if len(parts) >= 3 and parts[1] in languages:
            return f"notice.{languages.index(parts[1])}.{parts[2]}"
        if len(parts) == 2 and parts[1] in languages:  # the language code itself
            return f"notice.{languages.index(parts[1])}.language"
        return "notice.0.purpose"
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in ALL_FIELDS:
            return candidate
    return FORM


def check(values: Mapping[str, Any]) -> tuple[CampaignCreate | None, FormErrors]:
    """The campaign of the inputs, or every error under its input."""
    errors: FormErrors = {}
    doc = document(values, errors)
    languages = list(doc["user_notice"])
    try:
        campaign = CampaignCreate.model_validate(doc)
    except ValidationError as exc:
        for error in exc.errors():
            name = _input_of(tuple(error.get("loc", ())), languages)
            message = str(error.get("msg", "not valid")).removeprefix("Value error, ")
            if name == FORM:
                where = ".".join(str(p) for p in error.get("loc", ()))
                message = f"{where}: {message}" if where else message
            errors.setdefault(name, message)
        return None, errors
    except OtacmError as exc:  # a QueryError, raised as itself by the selection's validator
        errors["selection.query" if exc.extra.get("field") == "query" else FORM] = exc.detail
        return None, errors
    return (campaign, errors) if not errors else (None, errors)


def errors_for(step: str, errors: FormErrors) -> FormErrors:
    """The errors a step shows: its own inputs' (the form-wide ones on the review)."""
    if step == "review":
        return errors
    return {name: message for name, message in errors.items() if step_of(name) == step}
