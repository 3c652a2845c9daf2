"""What a vehicle must install: the ordered steps of its deployments in flight.

One function makes them for both places that tell the vehicle: the offer it polls
(`GET /vehicle/v1/updates`) and its director repository's signed targets. They cannot
disagree, because they are the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.campaigns.models import Deployment
from otacm.fleet.models import Ecu
from otacm.updates.models import SoftwareUpdate, UpdateArtifact


@dataclass(frozen=True, slots=True)
class Step:
    """One file one ECU installs, as the image repository names it."""

    order: int
    deployment_id: int
    ecu_serial: str
    ecu_type: str
    hardware_id: str
    update_id: int
    version: str
    from_version: str | None
    release_counter: int
    target: str
    length: int
    sha256: str
    encrypted: bool
    estimated_install_minutes: int | None


def steps_for(
    session: Session, deployments: Sequence[tuple[Deployment, Sequence[SoftwareUpdate]]]
) -> dict[int, list[Step]]:
    """The steps of each deployment (by id), in install order: the updates' `install_order`,
    then their place in the campaign, then the ECU and file names. A deployment's ECUs are
    the ones its offer recorded (`Deployment.versions`); before the offer it has none."""
    serials = {s for d, _ in deployments for s in (d.versions or {})}
    hardware: dict[str, str] = {
        serial: part
        for serial, part in session.execute(
            select(Ecu.serial, Ecu.hardware_part_number).where(Ecu.serial.in_(sorted(serials)))
        )
    }
    update_ids = sorted({u.id for _, updates in deployments for u in updates})
    files: dict[int, list[UpdateArtifact]] = {u: [] for u in update_ids}
    for artifact in session.scalars(
        select(UpdateArtifact)
        .where(UpdateArtifact.update_id.in_(update_ids), UpdateArtifact.target_path.is_not(None))
        .order_by(UpdateArtifact.update_id, UpdateArtifact.filename)
    ):
        files[artifact.update_id].append(artifact)
    result: dict[int, list[Step]] = {}
    for deployment, updates in deployments:
        recorded = deployment.versions or {}
        ordered = sorted(enumerate(updates), key=lambda pair: (pair[1].install_order, pair[0]))
        steps: list[Step] = []
        for _, update in ordered:
            for serial in sorted(
                s for s, e in recorded.items() if e["ecu_type"] == update.ecu_type
            ):
                for artifact in files.get(update.id, []):
                    steps.append(
                        Step(
                            order=len(steps) + 1,
                            deployment_id=deployment.id,
                            ecu_serial=serial,
                            ecu_type=update.ecu_type,
                            hardware_id=hardware.get(serial, ""),
                            update_id=update.id,
                            version=update.version,
                            from_version=recorded[serial].get("before"),
                            release_counter=update.release_counter or 0,
                            target=artifact.target_path or "",
                            length=artifact.length,
                            sha256=artifact.sha256,
                            encrypted=artifact.encrypted,
                            estimated_install_minutes=update.estimated_install_minutes,
                        )
                    )
        result[deployment.id] = steps
    return result
