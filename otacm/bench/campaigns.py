"""`otacm bench campaigns`: launching a campaign over a filled registry, against a raw insert.

The baseline is a plain `INSERT … SELECT` of one row per vehicle into an unindexed table shaped
like `deployments`, in the same run. The campaign carries an update made for the fleet's most
common ECU type, for every hardware of it, so that nearly every vehicle is eligible; it is
defined, approved by a second manager and launched with the whole fleet as its selection.

On PostgreSQL a second reference shows what the launch cannot go below: the same rows, in
vehicle order, into an empty copy of `deployments` with its primary key and indexes (the
index upkeep every launch pays, with no eligibility computed).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, delete, func, insert, literal, select, text
from sqlalchemy.orm import Session

from otacm.alerts.models import Alert
from otacm.bench.common import Report, Result
from otacm.bench.targeting import bench_keys_dir, release_update
from otacm.campaigns import engine as engine_module
from otacm.campaigns import launch, ledger, service
from otacm.campaigns.models import (
    Campaign,
    CampaignUpdate,
    CampaignWave,
    Deployment,
    DeploymentEventRecord,
    DeploymentTally,
)
from otacm.campaigns.schemas import CampaignCreate
from otacm.config import Settings
from otacm.db import (
    make_engine,
    make_session_factory,
    make_write_session_factory,
    unit_of_work,
    utcnow,
)
from otacm.db import upgrade as upgrade_schema
from otacm.fleet.models import Ecu, Vehicle
from otacm.security.audit import Actor
from otacm.targeting import service as targeting
from otacm.targeting.schemas import PreviewRequest

PROGRESS_RUNS = 20
TICK_RUNS = 10
IDLE_CAMPAIGNS = 50
IDLE_DEPLOYMENTS = 20_000

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


# The launch's floor: an empty copy of `deployments` with the same primary key (its id from
# the same sequence), indexes and constraints, rows in vehicle order as the launch writes them.
INDEXED = "CREATE TABLE bench_deployments_indexed (LIKE deployments INCLUDING ALL)"
INSERT_INDEXED = """
INSERT INTO bench_deployments_indexed
    (campaign_id, vehicle_id, wave, state, attempts, state_entered_at, created_at, updated_at)
SELECT 0, id, 1, 'pending', 0, :now, :now, :now FROM vehicles ORDER BY id
"""


def _raw_insert(engine: Engine, create: str = RAW, insert: str = INSERT_RAW) -> tuple[float, int]:
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text(create))
        started = time.perf_counter()
        rows = conn.execute(text(insert), {"now": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        elapsed = time.perf_counter() - started
        transaction.rollback()
    return elapsed, rows.rowcount


def _vacuum_deployments(engine: Engine) -> None:
    """After removing earlier runs' million deployments: without this, autovacuum sets about
    them while the launch runs (a different amount of it in every run)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) deployments"))


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
        # Earlier runs' campaigns would make every vehicle busy, and their millions of rows
        # would make each run write into bigger indexes than the last: they go.
        earlier = list(session.scalars(select(Campaign.id).where(Campaign.name.like("bench %"))))
        _remove_campaigns(session, earlier)
    postgres = engine.dialect.name == "postgresql"
    if postgres and earlier:
        _vacuum_deployments(engine)
    report = Report(f"Campaign launch, {vehicles:,} vehicles", command)
    label = "PostgreSQL" if postgres else "SQLite"
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
    if postgres:
        floor, rows = _raw_insert(engine, INDEXED, INSERT_INDEXED)
        report.add(
            Result(
                f"{label}: the same rows into an empty copy of deployments (its indexes)",
                floor,
                rows,
                unit="rows",
                baseline="raw insert",
                ratio=floor / raw,
                note="no eligibility: what index upkeep alone costs",
            )
        )
        # The plain INSERT … SELECT of 1M deployment rows that issue 6 calls "about 3 s" is
        # this one (into `deployments`, indexes and all); the raw insert above, into a bare
        # table, is the stricter of the two.
        report.facts["launch ÷ plain INSERT … SELECT into deployments"] = (
            f"{elapsed / floor:.2f} × ({elapsed:.3f} s / {floor:.3f} s)"
        )
    report.facts["campaign"] = f"id {campaign_id}, {eligible:,} eligible vehicles ({ecu_type})"
    _bench_progress(engine, report, label, campaign_id, eligible)
    _bench_idle_tick(engine, report, label, campaign_id)
    engine.dispose()
    return report


def _median_seconds(work: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _bench_progress(
    engine: Engine, report: Report, label: str, campaign_id: int, deployments: int
) -> None:
    """`GET /api/v1/campaigns/{id}`'s body, built in process, against the scan it replaces."""
    read = make_session_factory(engine)

    def scan() -> None:
        with read() as session:
            session.execute(
                select(Deployment.wave, Deployment.state, func.count())
                .where(Deployment.campaign_id == campaign_id)
                .group_by(Deployment.wave, Deployment.state)
            ).all()

    def progress() -> None:
        with read() as session:
            service.detail(session, service.get(session, campaign_id))

    progress()  # warm the caches both ways
    scan()
    baseline = _median_seconds(scan, PROGRESS_RUNS)
    elapsed = _median_seconds(progress, PROGRESS_RUNS)
    report.add(
        Result(
            f"{label}: counting the deployments per state (scan)",
            baseline,
            deployments,
            unit="deployments",
        )
    )
    report.add(
        Result(
            f"{label}: campaign progress (GET /api/v1/campaigns/{{id}})",
            elapsed,
            deployments,
            unit="deployments",
            baseline="scan",
            ratio=elapsed / baseline,
            note=f"median of {PROGRESS_RUNS}; target < 100 ms",
        )
    )


def _bench_idle_tick(engine: Engine, report: Report, label: str, source_id: int) -> None:
    """An engine tick over `IDLE_CAMPAIGNS` running campaigns with nothing to do: each has
    `IDLE_DEPLOYMENTS` deployments offered just now (no timeout due, no retry, no finished
    wave). They are copies of the launched campaign's first deployments, written directly
    (the benchmark is the tick, not the launch), and removed afterwards."""
    write = make_write_session_factory(engine)
    now = utcnow()
    made: list[int] = []
    stamp = literal(now, Deployment.created_at.type)
    try:
        with unit_of_work(write) as session:
            source = service.get(session, source_id)
            updates = service.update_ids_of(session, [source_id])[source_id]
            for number in range(IDLE_CAMPAIGNS):
                campaign = Campaign(
                    name=f"bench idle {time.time_ns()} {number}", category="bug_fix",
                    urgency="immediate", priority=500, state="running", selection={},
                    regions={}, consent_required=True, user_notice=source.user_notice,
                    rollout=source.rollout, kind="normal", created_at=now,
                    created_by="bench", updated_at=now, launched_at=now, launched_by="bench",
                )  # fmt: skip
                session.add(campaign)
                session.flush()
                made.append(campaign.id)
                for position, update_id in enumerate(updates):
                    session.add(
                        CampaignUpdate(
                            campaign_id=campaign.id, update_id=update_id, position=position
                        )
                    )
                session.add(
                    CampaignWave(
                        campaign_id=campaign.id, number=1, size=IDLE_DEPLOYMENTS, opened_at=now
                    )
                )
                session.execute(
                    insert(Deployment).from_select(
                        ["campaign_id", "vehicle_id", "wave", "state", "attempts",
                         "state_entered_at", "created_at", "updated_at"],
                        select(
                            literal(campaign.id), Deployment.vehicle_id, literal(1),
                            literal("offered"), literal(1), stamp, stamp, stamp,
                        )
                        .where(Deployment.campaign_id == source_id)
                        .order_by(Deployment.id)
                        .limit(IDLE_DEPLOYMENTS),
                    )
                )  # fmt: skip
                ledger.record_launch(session, campaign.id, {1: IDLE_DEPLOYMENTS})
        # Campaigns left running by earlier benchmark runs are ticked too: count them in.
        with unit_of_work(write) as session:
            others = session.scalar(
                select(func.count()).where(
                    Campaign.state.in_(engine_module.TICKED), Campaign.id.not_in(made)
                )
            )
        running = IDLE_CAMPAIGNS + (others or 0)
        factory = make_write_session_factory(engine)
        engine_module.tick(factory, now)  # the first look compacts nothing and warms up
        read = make_session_factory(engine)

        def lookups() -> None:
            with read() as session:
                for campaign_id in made:
                    session.get(Campaign, campaign_id, populate_existing=True)

        baseline = _median_seconds(lookups, TICK_RUNS)
        elapsed = _median_seconds(lambda: engine_module.tick(factory, now), TICK_RUNS)
        report.add(
            Result(
                f"{label}: {IDLE_CAMPAIGNS} campaign lookups by key",
                baseline,
                IDLE_CAMPAIGNS,
                unit="campaigns",
            )
        )
        report.add(
            Result(
                f"{label}: engine tick, {running} running campaigns, nothing to do",
                elapsed,
                running,
                unit="campaigns",
                baseline="lookups",
                ratio=elapsed / baseline,
                note=f"median of {TICK_RUNS}; {IDLE_DEPLOYMENTS:,} offered deployments each; "
                "target < 50 ms",
            )
        )
    finally:
        with unit_of_work(write) as session:
            _remove_campaigns(session, made)


def _remove_campaigns(session: Session, campaign_ids: list[int]) -> None:
    """Delete benchmark campaigns with everything they wrote."""
    if not campaign_ids:
        return
    tables = (DeploymentEventRecord, DeploymentTally, Deployment, CampaignWave, CampaignUpdate)
    for table in tables:
        session.execute(delete(table).where(table.campaign_id.in_(campaign_ids)))
    session.execute(delete(Alert).where(Alert.campaign_id.in_(campaign_ids)))
    session.execute(delete(Campaign).where(Campaign.id.in_(campaign_ids)))
