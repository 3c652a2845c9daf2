"""A launched campaign's figures as the console shows them: from the deployment ledger's
tallies (`campaigns/ledger.py`), so they cost the same for a hundred vehicles or a million.

Also keeps, per campaign and in this process, the counts each time a page looked, for the
chart of states over time (see docs/console.md: the ledger has no history of its totals).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session
from starlette.datastructures import State

from otacm.campaigns import service
from otacm.campaigns.models import Campaign
from otacm.campaigns.schemas import ProgressOut
from otacm.console.charts import grouped
from otacm.db import utcnow

# Samples kept per campaign, and the least time between two.
MAX_SAMPLES = 720
SAMPLE_EVERY = timedelta(seconds=2)


@dataclass
class WaveRow:
    number: int
    size: int
    opened_at: datetime | None
    completed_at: datetime | None
    groups: dict[str, int]


@dataclass
class Figures:
    total: int
    states: dict[str, int]
    groups: dict[str, int]
    failure_codes: dict[str, int]
    summary: ProgressOut | None
    waves: list[WaveRow] = field(default_factory=list)


def figures(session: Session, campaign: Campaign, *, waves: bool = False) -> Figures:
    """Deployments per state, group, failure code (and wave), with the progress summary: the
    API's figures (`campaigns.service.detail`), grouped for the page."""
    body = service.detail(session, campaign)
    rows = [
        WaveRow(w.number, w.size, w.opened_at, w.completed_at, grouped(w.states))
        for w in (body.waves if waves else [])
    ]
    return Figures(
        total=body.deployments,
        states=body.states,
        groups=grouped(body.states),
        failure_codes=dict(sorted(body.failure_codes.items(), key=lambda item: -item[1])),
        summary=body.progress,
        waves=rows,
    )


class _Samples:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_campaign: dict[int, deque[tuple[datetime, dict[str, int]]]] = {}

    def add(self, campaign_id: int, at: datetime, groups: dict[str, int]) -> None:
        with self._lock:
            kept = self._by_campaign.setdefault(campaign_id, deque(maxlen=MAX_SAMPLES))
            if kept and at - kept[-1][0] < SAMPLE_EVERY:
                kept[-1] = (kept[-1][0], dict(groups))  # the newest figures, at its time
            else:
                kept.append((at, dict(groups)))

    def of(self, campaign_id: int) -> list[tuple[datetime, dict[str, int]]]:
        with self._lock:
            return list(self._by_campaign.get(campaign_id, ()))


_creating = threading.Lock()


def _samples(state: State) -> _Samples:
    with _creating:
        kept = getattr(state, "console_samples", None)
        if kept is None:
            kept = state.console_samples = _Samples()
    assert isinstance(kept, _Samples)
    return kept


def over_time(
    state: State, campaign: Campaign, now_groups: dict[str, int], total_at_launch: int
) -> Sequence[tuple[datetime, dict[str, int]]]:
    """The samples of the campaign's counts, with this one added: the launch (every
    deployment pending) first, then what pages saw while it ran."""
    samples = _samples(state)
    if campaign.finished_at is None:
        samples.add(campaign.id, utcnow(), now_groups)
    seen = samples.of(campaign.id)
    points: list[tuple[datetime, dict[str, int]]] = []
    if campaign.launched_at is not None:
        points.append((campaign.launched_at, {"pending": total_at_launch}))
    points.extend(seen)
    if campaign.finished_at is not None:
        points.append((campaign.finished_at, now_groups))
    return points
