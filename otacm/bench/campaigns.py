"""`otacm bench campaigns`: launching a campaign over a filled registry, against a raw insert.

The baseline is a plain `INSERT … SELECT` of one row per vehicle into an unindexed table shaped
like `deployments`, in the same run. The campaign carries an update made for the fleet's most
common ECU type, for every hardware of it, so that nearly every vehicle is eligible; it is
defined, approved by a second manager and launched with the whole fleet as its selection.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, func, select, text

from otacm.bench.common import Report, Result
from otacm.bench.targeting import bench_keys_dir, release_update
from otacm.campaigns import launch, service
from otacm.campaigns.schemas import CampaignCreate
from otacm.config import Settings
from otacm.db import make_engine, make_write_session_factory, unit_of_work
from otacm.db import upgrade as upgrade_schema
from otacm.fleet.models import Ecu, Vehicle
from otacm.security.audit import Actor
from otacm.targeting import service as targeting
from otacm.targeting.schemas import PreviewRequest

# A regular (logged) table, like `deployments`, made and dropped in one rolled-back transaction.
RAW = """
CREATE TABLE bench_deployments (
    campaign_id BIGINT, vehicle_id BIGINT, wave INTEGER, state VARCHAR(16),
    attempts INTEGER, state_entered_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE, updated_at TIMESTAMP WITH TIME ZONE
)
"""
INSERT_RAW = """
INSERT INTO bench_deployments
SELECT 0, id, 1, 'pending', 0, :now, :now, :now FROM vehicles
"""


def _raw_insert(engine: Engine) -> tuple[float, int]:
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text(RAW))
        started = time.perf_counter()
        rows = conn.execute(text(INSERT_RAW), {"now": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        elapsed = time.perf_counter() - started
        transaction.rollback()
    return elapsed, rows.rowcount


def run(*, database_url: str, command: str) -> Report:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    write = make_write_session_factory(engine)
    with unit_of_work(write) as session:
        vehicles = session.scalar(select(func.count()).select_from(Vehicle)) or 0
        # The ECU type most vehicles carry on one bus protocol: an update for it can reach
        # nearly the whole fleet.
        ecu_type = session.execute(
            select(Ecu.ecu_type)
            .group_by(Ecu.ecu_type, Ecu.protocol)
            .order_by(func.count().desc())
            .limit(1)
        ).scalar_one()
    report = Report(f"Campaign launch, {vehicles:,} vehicles", command)
    label = "PostgreSQL" if engine.dialect.name == "postgresql" else "SQLite"
    raw, rows = _raw_insert(engine)
    report.add(Result(f"{label}: raw INSERT … SELECT", raw, rows, unit="rows"))
    with tempfile.TemporaryDirectory(prefix="otacm-bench-campaigns-") as scratch:
        keys = bench_keys_dir(database_url)
        settings = Settings(database_url=database_url, data_dir=Path(scratch), keys_dir=keys)
        update_id = release_update(engine, settings, ecu_type=ecu_type, every_hardware=True)
        with unit_of_work(write) as session:
            eligible = targeting.run_preview(
                session, PreviewRequest(update_ids=[update_id])
            ).vehicles_eligible
            draft = CampaignCreate.model_validate(
                {
                    "name": f"bench launch {time.time_ns()}",
                    "category": "bug_fix",
                    "urgency": "immediate",
                    "update_ids": [update_id],
                    "user_notice": {
                        "en": {
                            "purpose": "benchmark",
                            "what_changes": "nothing",
                            "expected_duration_minutes": 5,
                            "instructions": "none",
                        }
                    },
                }
            )
            campaign = service.create(session, Actor("bench-alice", "campaign_manager"), draft)
            service.submit(session, Actor("bench-alice", "campaign_manager"), campaign.id)
            service.decide(
                session,
                Actor("bench-bob", "campaign_manager"),
                campaign.id,
                approve=True,
                comment="",
                four_eyes=True,
            )
            campaign_id = campaign.id
        started = time.perf_counter()
        with unit_of_work(write) as session:
            launch.launch(
                session,
                Actor("bench-alice", "campaign_manager"),
                campaign_id,
                expected_vehicles=eligible,
                margin=0.0,
            )
        elapsed = time.perf_counter() - started
    report.add(
        Result(
            f"{label}: launch (all waves materialised)",
            elapsed,
            eligible,
            unit="deployments",
            baseline="raw insert",
            ratio=elapsed / raw,
            note="target < 15 s on PostgreSQL, ratio goal ≤ 5",
        )
    )
    report.facts["campaign"] = f"id {campaign_id}, {eligible:,} eligible vehicles ({ecu_type})"
    engine.dispose()
    return report
