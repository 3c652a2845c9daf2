"""Vehicles taking part in a campaign, moved through the services the vehicle API calls:
each one asks for its offers (`offers.offers_for`), reports every step
(`deployments.apply_event`) and sends a version manifest that confirms the update
(`offers.confirm_manifest`), one unit of work per vehicle as the API would have."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from otacm.campaigns.deployments import apply_event
from otacm.campaigns.models import Deployment
from otacm.campaigns.offers import confirm_manifest, offers_for
from otacm.campaigns.states import DeploymentEvent, DeploymentState
from otacm.db import unit_of_work, utcnow
from otacm.fleet.models import Vehicle

INSTALL = (
    DeploymentEvent.ACCEPTED,
    DeploymentEvent.DOWNLOAD_STARTED,
    DeploymentEvent.DOWNLOAD_FINISHED,
    DeploymentEvent.INSTALL_STARTED,
    DeploymentEvent.INSTALL_FINISHED,
)


def update_vehicles(
    factory: sessionmaker[Session],
    campaign_id: int,
    new_version: str,
    *,
    limit: int | None = None,
    fail_with: str | None = None,
) -> int:
    """Vehicles of the campaign with a pending deployment poll, install and confirm (or, with
    `fail_with`, report that failure); returns how many did."""
    with unit_of_work(factory) as session:
        vehicles = list(
            session.scalars(
                select(Vehicle)
                .join(Deployment, Deployment.vehicle_id == Vehicle.id)
                .where(
                    Deployment.campaign_id == campaign_id,
                    Deployment.state == DeploymentState.PENDING.value,
                )
                .order_by(Deployment.id)
                .limit(limit)
            )
        )
    moved = 0
    for vehicle in vehicles:
        with unit_of_work(factory) as session:
            offers = [
                o
                for o in offers_for(session, vehicle, utcnow())
                if o.deployment.campaign_id == campaign_id
            ]
            for offer in offers:
                deployment = offer.deployment
                if fail_with:
                    apply_event(session, deployment, DeploymentEvent.ACCEPTED, utcnow())
                    apply_event(
                        session, deployment, DeploymentEvent.FAILED, utcnow(), code=fail_with
                    )
                else:
                    for event in INSTALL:
                        apply_event(session, deployment, event, utcnow())
                    installed = {serial: new_version for serial in deployment.versions or {}}
                    confirm_manifest(session, vehicle.id, installed, utcnow())
                moved += 1
    return moved
