"""Chart data for the console, as plain dicts that `console.js` draws with Chart.js.

Pure: no database, no web. A spec is `{"type", "labels", "series": [{"label", "data",
"color"}], "stacked", "horizontal", "fill"}`; the same figures are always also in a table on
the page, so nothing depends on the chart being drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from otacm.campaigns.states import DeploymentState as S

# Deployment states as operators watch them: six groups, in the order of the rollout.
STATE_GROUPS: dict[str, frozenset[S]] = {
    "pending": frozenset({S.PENDING}),
    "offered": frozenset({S.OFFERED, S.POSTPONED}),
    "in_progress": frozenset({S.ACCEPTED, S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING, S.INSTALLED}),
    "succeeded": frozenset({S.SUCCEEDED}),
    "failed": frozenset({S.FAILED, S.TIMED_OUT, S.ROLLED_BACK}),
    "withdrawn": frozenset({S.DECLINED, S.CANCELLED, S.EXPIRED}),
}
GROUP_OF = {state.value: group for group, states in STATE_GROUPS.items() for state in states}
# The same colours as the progress bars in console.css.
GROUP_COLOURS = {
    "pending": "#8a94a3",
    "offered": "#6f5bb5",
    "in_progress": "#1f77b4",
    "succeeded": "#2e8540",
    "failed": "#c0392b",
    "withdrawn": "#b7950b",
}
COMPLIANCE_COLOURS = {
    "on_latest": "#2e8540",
    "in_progress": "#1f77b4",
    "behind": "#c0392b",
    "no_release": "#8a94a3",
}


def grouped(states: Mapping[str, int]) -> dict[str, int]:
    """Deployments per state → per group, every group present (zero when empty)."""
    groups = dict.fromkeys(STATE_GROUPS, 0)
    for state, count in states.items():
        groups[GROUP_OF.get(state, "pending")] += count
    return groups


def bars(
    labels: Sequence[str],
    series: Iterable[tuple[str, Sequence[int | float], str | None]],
    *,
    stacked: bool = False,
    horizontal: bool = False,
) -> dict[str, Any]:
    return {
        "type": "bar",
        "labels": list(labels),
        "series": [{"label": n, "data": list(d), "color": c} for n, d, c in series],
        "stacked": stacked,
        "horizontal": horizontal,
    }


def counts_chart(counts: Mapping[str, int], label: str, colour: str = "#1f77b4") -> dict[str, Any]:
    """One series: a bar per key (largest first)."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return bars([k for k, _ in ordered], [(label, [v for _, v in ordered], colour)])


def states_over_time(samples: Sequence[tuple[datetime, Mapping[str, int]]]) -> dict[str, Any]:
    """A stacked area per state group over the sampled times."""
    return {
        "type": "line",
        "labels": [at.strftime("%H:%M:%S") for at, _ in samples],
        "series": [
            {
                "label": group.replace("_", " "),
                "data": [counts.get(group, 0) for _, counts in samples],
                "color": GROUP_COLOURS[group],
            }
            for group in STATE_GROUPS
        ],
        "stacked": True,
        "fill": True,
        "yTitle": "deployments",
    }
