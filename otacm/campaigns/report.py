"""The campaign report: per vehicle and ECU, what was installed where (the UNECE R156 record).

One row per deployment and targeted ECU: the vehicle, the wave, the ECU, the update and its
version, the software before and after, when it was offered, where the deployment stands, how
many attempts it took and how it ended. ECUs an offer targeted are recorded at offer time with
their version then (`offers.py`) and their version after when the manifest confirmed it; a
deployment never offered lists the vehicle's fitted ECUs of the campaign's ECU types with the
version the registry holds (nothing was installed, so before and after are the same).

Written as CSV or JSON Lines, streamed a page of deployments at a time in one read transaction
(repeatable read on PostgreSQL), so a million-vehicle campaign never sits in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from otacm.campaigns.models import CampaignUpdate, Deployment, DeploymentEventRecord
from otacm.campaigns.states import TERMINAL, DeploymentState
from otacm.db import is_postgresql
from otacm.fleet.models import Ecu, Vehicle
from otacm.updates.models import SoftwareUpdate

FORMATS = ("csv", "jsonl")
PAGE = 2_000
COLUMNS = (
    "campaign_id",
    "deployment_id",
    "vin",
    "model",
    "region",
    "country",
    "wave",
    "ecu_type",
    "ecu_serial",
    "update_id",
    "target_version",
    "version_before",
    "version_after",
    "state",
    "result",
    "failure_code",
    "attempts",
    "offered_at",
    "state_entered_at",
    "finished_at",
)
_TERMINAL = {s.value for s in TERMINAL}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _result(state: str) -> str:
    if state == DeploymentState.SUCCEEDED.value:
        return "installed"
    if state in _TERMINAL:
        return "not_installed"
    return "in_progress"


def rows(conn: Connection, campaign_id: int) -> Iterator[dict[str, Any]]:
    """The report's rows, in deployment order."""
    updates = {
        u.ecu_type: u
        for u in conn.execute(
            select(SoftwareUpdate.id, SoftwareUpdate.ecu_type, SoftwareUpdate.version)
            .join(CampaignUpdate, CampaignUpdate.update_id == SoftwareUpdate.id)
            .where(CampaignUpdate.campaign_id == campaign_id)
        )
    }
    last_id = 0
    while True:
        page = conn.execute(
            select(
                Deployment.__table__,
                Vehicle.vin,
                Vehicle.model,
                Vehicle.region,
                Vehicle.country,
            )
            .join(Vehicle, Vehicle.id == Deployment.vehicle_id)
            .where(Deployment.campaign_id == campaign_id, Deployment.id > last_id)
            .order_by(Deployment.id)
            .limit(PAGE)
        ).all()
        if not page:
            return
        last_id = page[-1].id
        ids = [d.id for d in page]
        offered_at = dict(
            conn.execute(
                select(DeploymentEventRecord.deployment_id, func.min(DeploymentEventRecord.at))
                .where(
                    DeploymentEventRecord.deployment_id.in_(ids),
                    DeploymentEventRecord.to_state == DeploymentState.OFFERED.value,
                )
                .group_by(DeploymentEventRecord.deployment_id)
            ).all()
        )
        fitted: dict[int, list[Any]] = {}
        for ecu in conn.execute(
            select(Ecu.vehicle_id, Ecu.ecu_type, Ecu.serial, Ecu.software_version)
            .where(
                Ecu.vehicle_id.in_([d.vehicle_id for d in page]),
                Ecu.ecu_type.in_(list(updates)),
                Ecu.removed_at.is_(None),
            )
            .order_by(Ecu.vehicle_id, Ecu.ecu_type, Ecu.serial)
        ):
            fitted.setdefault(ecu.vehicle_id, []).append(ecu)
        for d in page:
            finished = d.state_entered_at if d.state in _TERMINAL else None
            common = {
                "campaign_id": campaign_id,
                "deployment_id": d.id,
                "vin": d.vin,
                "model": d.model,
                "region": d.region,
                "country": d.country,
                "wave": d.wave,
            }
            if d.versions:
                ecus = [
                    (entry["ecu_type"], serial, entry.get("before"), entry.get("after"))
                    for serial, entry in sorted(d.versions.items())
                ]
            else:
                ecus = [
                    (e.ecu_type, e.serial, e.software_version, None)
                    for e in fitted.get(d.vehicle_id, [])
                ]
            for ecu_type, serial, before, after in ecus or [(None, None, None, None)]:
                update = updates.get(ecu_type) if ecu_type else None
                if after is None and d.state != DeploymentState.SUCCEEDED.value:
                    after = before  # nothing was installed
                yield {
                    **common,
                    "ecu_type": ecu_type,
                    "ecu_serial": serial,
                    "update_id": update.id if update else None,
                    "target_version": update.version if update else None,
                    "version_before": before,
                    "version_after": after,
                    "state": d.state,
                    "result": _result(d.state),
                    "failure_code": d.failure_code,
                    "attempts": d.attempts,
                    "offered_at": _iso(offered_at.get(d.id)),
                    "state_entered_at": _iso(d.state_entered_at),
                    "finished_at": _iso(finished),
                }


def export(engine: Engine, campaign_id: int, fmt: str) -> Iterator[str]:
    """The report as text chunks, in one read transaction."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; use csv or jsonl")
    with engine.connect() as conn:
        if is_postgresql(conn.dialect):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        if fmt == "csv":
            writer.writeheader()
        for count, row in enumerate(rows(conn, campaign_id), start=1):
            if fmt == "csv":
                writer.writerow(row)
            else:
                buffer.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
            if count % PAGE == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
