"""A launched campaign's progress in figures: shares, throughput and the expected end.

From the deployment counts per state (`ledger.counts`), grouped as the engine groups a wave's
(`policy.WaveCounts`): finished is succeeded plus failed for good, withdrawn is declined,
cancelled or expired, the rest (failures awaiting a retry included) remains. The rates are of
the finished, the failure rate being the engine's failure share. Throughput is the average
since the campaign started (deployments ended per hour); the ETA assumes the remaining ones end
at that rate, and is absent until one has.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from otacm.campaigns.models import Campaign
from otacm.campaigns.policy import WaveCounts
from otacm.campaigns.schemas import ProgressOut
from otacm.campaigns.states import DeploymentState


def summary(
    campaign: Campaign, states: Mapping[str, int], now: datetime, *, retrying: int = 0
) -> ProgressOut:
    """`retrying`: failures with a retry scheduled, which are not finished yet."""
    counts = WaveCounts.from_states(
        {DeploymentState(s): n for s, n in states.items()}, retrying=retrying
    )
    # A scheduled campaign starts after its launch.
    started = campaign.launched_at
    if started and campaign.starts_at and campaign.starts_at > started:
        started = campaign.starts_at
    end = campaign.finished_at or now
    hours = (end - started).total_seconds() / 3600 if started and end > started else 0.0
    ended = counts.finished + counts.withdrawn
    throughput = ended / hours if hours > 0 else None
    eta: datetime | None = None
    if campaign.finished_at is None and counts.unfinished and throughput:
        eta = now + timedelta(hours=counts.unfinished / throughput)
    return ProgressOut(
        finished=counts.finished,
        withdrawn=counts.withdrawn,
        remaining=counts.unfinished,
        success_rate=counts.succeeded / counts.finished if counts.finished else None,
        failure_rate=counts.failed / counts.finished if counts.finished else None,
        throughput_per_hour=throughput,
        eta=eta,
    )
