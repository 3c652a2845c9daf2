"""A launched campaign's progress in figures: shares, throughput and the expected end.

From the deployment counts per state (`ledger.counts`) alone, so it costs nothing per vehicle.
Throughput is the average since the campaign started (finished deployments per hour); the ETA
assumes the remaining deployments finish at that rate, and is absent until one has finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from otacm.campaigns.models import Campaign
from otacm.campaigns.schemas import ProgressOut
from otacm.campaigns.states import RETRYABLE_FAILURES, TERMINAL, DeploymentState


def summary(campaign: Campaign, states: Mapping[str, int], now: datetime) -> ProgressOut:
    total = sum(states.values())
    finished = sum(n for s, n in states.items() if DeploymentState(s) in TERMINAL)
    succeeded = states.get(DeploymentState.SUCCEEDED.value, 0)
    failed = sum(n for s, n in states.items() if DeploymentState(s) in RETRYABLE_FAILURES)
    # A scheduled campaign starts after its launch.
    started = campaign.launched_at
    if started and campaign.starts_at and campaign.starts_at > started:
        started = campaign.starts_at
    end = campaign.finished_at or now
    hours = (end - started).total_seconds() / 3600 if started and end > started else 0.0
    throughput = finished / hours if hours > 0 else None
    remaining = total - finished
    eta: datetime | None = None
    if campaign.finished_at is None and remaining and throughput:
        eta = now + timedelta(hours=remaining / throughput)
    return ProgressOut(
        finished=finished,
        remaining=remaining,
        success_rate=succeeded / finished if finished else None,
        failure_rate=failed / finished if finished else None,
        throughput_per_hour=throughput,
        eta=eta,
    )
