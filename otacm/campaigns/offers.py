"""What a vehicle is offered when it asks, and what its version manifest confirms.

`offers_for` is called for one vehicle (by the vehicle API, each time the vehicle polls). Its
pending deployments become offers in order of campaign priority (highest first, then the older
campaign), each only when

- its campaign is running and its wave is open,
- the campaign's maintenance windows are open now (no windows: always),
- none of the ECUs it updates is held by another deployment in flight (offered … installed, in
  any campaign): one deployment per ECU at a time, the higher priority first,
- the update still applies: it is still released, and the targeting rules (region rules
  included) are checked again for this vehicle as it is now; a deployment whose updates no
  longer apply (withdrawn, the ECU updated some other way or replaced, the vehicle moved out of
  the campaign's regions) is cancelled, saying why, instead of being offered.

An offer records the software each targeted ECU runs before (`Deployment.versions`); the
vehicle's manifest, once it shows every targeted ECU on its new version, confirms the update
(`confirm_manifest`: `manifest_confirmed`, with the versions after). Together they are the R156
record the campaign report gives per vehicle and ECU.

A postponed deployment is offered again at the vehicle's next poll inside a window once
`REOFFER_AFTER` has passed: the owner said "later", not "never".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from otacm.campaigns.deployments import apply_event
from otacm.campaigns.ledger import Source
from otacm.campaigns.models import Campaign, CampaignUpdate, CampaignWave, Deployment
from otacm.campaigns.policy import RolloutPolicy, in_window
from otacm.campaigns.schemas import CampaignState
from otacm.campaigns.states import ACTIVE, COMMITTED, DeploymentEvent, DeploymentState
from otacm.db import is_postgresql
from otacm.fleet.models import Ecu, Vehicle
from otacm.targeting import service as targeting
from otacm.targeting.eligibility import KnownCounters, Reason, evaluate
from otacm.targeting.schemas import RegionRestriction
from otacm.updates import versions
from otacm.updates.models import SoftwareUpdate

REOFFER_AFTER = timedelta(hours=1)
# A deployment whose manifest can confirm it: working on it, or given up on by the server's
# clock while the vehicle may still have finished.
CONFIRMABLE = COMMITTED | {DeploymentState.TIMED_OUT}


@dataclass(frozen=True)
class Offer:
    """A deployment in flight for the vehicle, with what it needs to act on it."""

    deployment: Deployment
    campaign: Campaign
    updates: tuple[SoftwareUpdate, ...]


def updates_by_campaign(
    session: Session, campaign_ids: Sequence[int]
) -> dict[int, list[SoftwareUpdate]]:
    found: dict[int, list[SoftwareUpdate]] = {c: [] for c in campaign_ids}
    for campaign_id, update in session.execute(
        select(CampaignUpdate.campaign_id, SoftwareUpdate)
        .join(SoftwareUpdate, SoftwareUpdate.id == CampaignUpdate.update_id)
        .where(CampaignUpdate.campaign_id.in_(list(campaign_ids)))
        .order_by(CampaignUpdate.campaign_id, CampaignUpdate.position)
    ):
        found[campaign_id].append(update)
    return found


def _lock(session: Session, query: Any) -> Any:
    """Lock the deployments read: the vehicle's concurrent polls wait rather than offer twice."""
    if is_postgresql(session.get_bind().dialect):
        return query.with_for_update(of=Deployment)
    return query


def _windows_open(campaign: Campaign, now: datetime) -> bool:
    return in_window(now, RolloutPolicy.model_validate(campaign.rollout).maintenance_windows)


def _no_longer_applies(
    vehicle: Vehicle,
    ecus: Sequence[Ecu],
    campaign: Campaign,
    carried: Sequence[SoftwareUpdate],
    counters: KnownCounters,
) -> tuple[str | None, set[str]]:
    """Why the campaign's updates no longer reach the vehicle (None: they do), and the serials
    of the ECUs they update. The same rules as at launch, for the vehicle as it is now."""
    withdrawn = [u for u in carried if u.state not in targeting.TARGETABLE_STATES]
    if withdrawn:
        return f"update {withdrawn[0].id} is {withdrawn[0].state}", set()
    regions = RegionRestriction.model_validate(campaign.regions)
    decision = evaluate(
        targeting.vehicle_facts(vehicle),
        [targeting.ecu_facts(e) for e in ecus],
        [targeting.rule_of(u) for u in carried],
        regions=targeting.region_rule(regions),
        known_counters=counters,
    )
    if decision.reason is not Reason.ELIGIBLE:
        return decision.reason.value, set()
    return None, {s for d in decision.eligible_updates for s in d.ecu_serials}


def in_open_waves(vehicle_id: int) -> Select[Deployment, Campaign]:
    """The vehicle's deployments whose wave is open, with their campaigns."""
    return (
        select(Deployment, Campaign)
        .join(Campaign, Campaign.id == Deployment.campaign_id)
        .join(
            CampaignWave,
            (CampaignWave.campaign_id == Deployment.campaign_id)
            & (CampaignWave.number == Deployment.wave),
        )
        .where(Deployment.vehicle_id == vehicle_id, CampaignWave.opened_at.is_not(None))
    )


def offers_for(session: Session, vehicle: Vehicle, now: datetime) -> list[Offer]:
    """Make the offers due for `vehicle` now and return every deployment it has in flight,
    highest priority first. The caller commits."""
    rows = session.execute(
        _lock(
            session,
            in_open_waves(vehicle.id)
            .where(Deployment.state.in_([s.value for s in {DeploymentState.PENDING} | ACTIVE]))
            .order_by(Campaign.priority.desc(), Campaign.id, Deployment.id),
        )
    ).all()
    if not rows:
        return []
    updates = updates_by_campaign(session, sorted({c.id for _, c in rows}))
    held = {
        u.ecu_type for d, c in rows if DeploymentState(d.state) in ACTIVE for u in updates[c.id]
    }
    ecus = list(
        session.scalars(select(Ecu).where(Ecu.vehicle_id == vehicle.id, Ecu.removed_at.is_(None)))
    )
    counters: KnownCounters | None = None  # read once, when a pending deployment needs it
    offers: list[Offer] = []
    for deployment, campaign in rows:
        state = DeploymentState(deployment.state)
        carried = updates[campaign.id]
        types = {u.ecu_type for u in carried}
        running = campaign.state == CampaignState.RUNNING.value
        if state is DeploymentState.PENDING:
            if not running or types & held or not _windows_open(campaign, now):
                continue
            if counters is None:
                counters = targeting.known_counters(session)
            reason, targeted = _no_longer_applies(vehicle, ecus, campaign, carried, counters)
            if reason is not None:
                apply_event(
                    session, deployment, DeploymentEvent.CANCEL, now, source=Source.ENGINE,
                    detail=f"no longer applicable at offer time: {reason}",
                )  # fmt: skip
                continue
            deployment.versions = {
                e.serial: {"ecu_type": e.ecu_type, "before": e.software_version}
                for e in ecus
                if e.serial in targeted
            }
            apply_event(session, deployment, DeploymentEvent.OFFER, now, source=Source.ENGINE)
            held |= types
        elif (
            state is DeploymentState.POSTPONED
            and running
            and deployment.state_entered_at <= now - REOFFER_AFTER
            and _windows_open(campaign, now)
        ):
            apply_event(session, deployment, DeploymentEvent.OFFER, now, source=Source.ENGINE)
        offers.append(Offer(deployment, campaign, tuple(carried)))
    return offers


def confirm_manifest(
    session: Session, vehicle_id: int, installed: Mapping[str, str], now: datetime
) -> list[Deployment]:
    """The vehicle reports the software on its ECUs (`installed`: serial → version). Each of
    its deployments whose targeted ECUs all run their update's version is confirmed
    (`manifest_confirmed`) and records the versions after; the confirmed are returned."""
    rows = session.execute(
        _lock(
            session,
            select(Deployment).where(
                Deployment.vehicle_id == vehicle_id,
                Deployment.state.in_([s.value for s in CONFIRMABLE]),
            ),
        )
    ).scalars()
    deployments = list(rows)
    if not deployments:
        return []
    updates = updates_by_campaign(session, sorted({d.campaign_id for d in deployments}))
    confirmed: list[Deployment] = []
    for deployment in deployments:
        target = {u.ecu_type: u.version for u in updates[deployment.campaign_id]}
        recorded = deployment.versions or {}
        if not recorded or any(serial not in installed for serial in recorded):
            continue
        if all(
            _reads_as(installed[serial], target[entry["ecu_type"]])
            for serial, entry in recorded.items()
            if entry["ecu_type"] in target
        ):
            deployment.versions = {
                serial: {**entry, "after": installed[serial]} for serial, entry in recorded.items()
            }
            apply_event(
                session, deployment, DeploymentEvent.MANIFEST_CONFIRMED, now, source=Source.VEHICLE
            )
            confirmed.append(deployment)
    return confirmed


def _reads_as(installed: str, wanted: str) -> bool:
    try:
        return versions.compare_reading(installed, wanted) == 0
    except ValueError:  # not a version at all: not the one wanted
        return installed == wanted
