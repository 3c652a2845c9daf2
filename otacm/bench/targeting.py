"""`otacm bench targeting`: the preview on a filled registry, against the plain selection.

The registry must exist already (a fleet import of a generated export). The benchmark defines
and releases an update for the most common ECU hardware of the fleet (signing it into a
scratch key directory), then measures on the same database:

- the baseline: the plain selection query, the VINs of the vehicles of one model;
- the full preview (every reason counted, samples, breakdowns) for that selection, and for the
  whole fleet;
- the per-vehicle view (`GET /api/v1/vehicles/{vin}/updates`), median of 20 vehicles.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, true

from otacm.bench.common import Report, Result, console, median_seconds
from otacm.config import Settings
from otacm.db import make_engine, make_session_factory, make_write_session_factory, unit_of_work
from otacm.db import upgrade as upgrade_schema
from otacm.fleet.models import Ecu, Vehicle
from otacm.security.audit import SYSTEM
from otacm.security.keys import KeyStore
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.targeting import service
from otacm.targeting.schemas import PreviewRequest
from otacm.targeting.selection import TargetSelection, selection_condition
from otacm.updates import artifacts
from otacm.updates import service as catalog
from otacm.updates.schemas import UpdateCreate
from otacm.updates.storage import storage_from_settings
from otacm.updates.versions import version_key


def bench_keys_dir(database_url: str) -> Path:
    """Where the keys signing a benchmark database's releases stay: its image repository lives
    in that database for good, so the keys must outlive the run."""
    return Path("bench-data") / f"keys-{hashlib.sha256(database_url.encode()).hexdigest()[:12]}"


def release_update(
    engine: Engine,
    settings: Settings,
    *,
    selected: Any = None,
    ecu_type: str | None = None,
    every_hardware: bool = False,
) -> int:
    """Define and release an update newer than anything installed: for the most common ECU
    hardware of the `selected` vehicles (so that a preview meets every kind of vehicle), or for
    every hardware of `ecu_type` (so that nearly the whole fleet is eligible)."""
    if not KeyStore(settings.resolved_keys_dir()).initialised():
        initialise_keys_and_repository(settings, root_passphrase=None)
    factory = make_session_factory(engine)
    with unit_of_work(factory) as session:
        if ecu_type is None:
            ecu_type, part_number = session.execute(
                select(Ecu.ecu_type, Ecu.hardware_part_number)
                .join(Vehicle, Vehicle.id == Ecu.vehicle_id)
                .where(selected if selected is not None else true())
                .group_by(Ecu.ecu_type, Ecu.hardware_part_number)
                .order_by(func.count().desc())
                .limit(1)
            ).one()
        else:
            part_number = session.execute(
                select(Ecu.hardware_part_number)
                .where(Ecu.ecu_type == ecu_type)
                .group_by(Ecu.hardware_part_number)
                .order_by(func.count().desc())
                .limit(1)
            ).scalar_one()
        part_numbers = (
            list(
                session.scalars(
                    select(Ecu.hardware_part_number).where(Ecu.ecu_type == ecu_type).distinct()
                )
            )
            if every_hardware
            else [part_number]
        )
        revisions = list(
            session.scalars(
                select(Ecu.hardware_version)
                .where(Ecu.ecu_type == ecu_type, Ecu.hardware_part_number.in_(part_numbers))
                .distinct()
            )
        )
        protocol = session.scalar(
            select(Ecu.protocol)
            .where(Ecu.ecu_type == ecu_type, Ecu.hardware_part_number.in_(part_numbers))
            .group_by(Ecu.protocol)
            .order_by(func.count().desc())
            .limit(1)
        )
        installed = sorted(
            session.scalars(
                select(Ecu.software_version).where(Ecu.ecu_type == ecu_type).distinct()
            ),
            key=version_key,
        )
        models = list(session.scalars(select(Vehicle.model).distinct()))
        fuels = list(session.scalars(select(Vehicle.fuel_type).distinct()))
    newest = installed[-1]
    draft = UpdateCreate.model_validate(
        {
            "name": f"bench {ecu_type} update",
            "version": f"{newest}.1",
            "ecu_type": ecu_type,
            "software_part_number": f"{part_number}-BENCH-{time.time_ns()}",
            "protocol": protocol,
            "category": "bug_fix",
            "compatible_models": models,
            "fuel_types": fuels,
            "hardware_part_numbers": part_numbers,
            "hardware_versions": revisions,
            # The older half of the installed versions may take it: every reason shows up.
            # With every hardware, every installed version may (the whole fleet is the aim).
            **(
                {} if every_hardware else {"applicable_version_max": installed[len(installed) // 2]}
            ),
            "release_notes": "benchmark",
            "estimated_install_minutes": 10,
            "support": {"contact": "bench@example.com"},
            "regulatory": {
                "purpose": "benchmark",
                "affected_systems": [ecu_type],
                "execution_conditions": "parked",
                "safety_confirmed": True,
                "verification_reference": "bench",
            },
        }
    )
    storage = storage_from_settings(settings)
    write = make_write_session_factory(engine)
    with unit_of_work(write) as session:
        update = catalog.create_draft(session, SYSTEM, draft, settings)
        update_id = update.id
    image = f"bench image {update_id}".encode()
    with artifacts.ArtifactReceiver(
        storage, max_bytes=1 << 20, data_key=None, declared_sha256=hashlib.sha256(image).hexdigest()
    ) as receiver:
        receiver.feed(image)
        received = receiver.finish()
    with unit_of_work(write) as session:
        artifacts.attach(session, SYSTEM, update_id, "image.bin", received, settings=settings)
    catalog.release(write, SYSTEM, update_id, settings=settings, storage=storage)
    return update_id


def run(*, database_url: str, command: str) -> Report:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    with tempfile.TemporaryDirectory(prefix="otacm-bench-targeting-") as scratch:
        # The keys that sign the benchmark's releases stay beside the benchmark data: the
        # image repository they start lives in that database for good.
        keys_dir = bench_keys_dir(database_url)
        settings = Settings(database_url=database_url, data_dir=Path(scratch), keys_dir=keys_dir)
        with unit_of_work(make_session_factory(engine)) as session:
            vehicles = session.scalar(select(func.count()).select_from(Vehicle)) or 0
            ecus = session.scalar(select(func.count()).select_from(Ecu)) or 0
            # The yardstick is a selection of about 130,000 vehicles: the model, or
            # model and region, whose vehicle count is closest to that.
            by_model = session.execute(
                select(Vehicle.model, func.count()).group_by(Vehicle.model)
            ).all()
            by_model_region = session.execute(
                select(Vehicle.model, Vehicle.region, func.count()).group_by(
                    Vehicle.model, Vehicle.region
                )
            ).all()
        candidates = [(TargetSelection(models=[m]), f"model {m}", n) for m, n in by_model] + [
            (TargetSelection(models=[m], regions=[r]), f"model {m}, region {r}", n)
            for m, r, n in by_model_region
        ]
        selection, described, in_selection = min(candidates, key=lambda c: abs(c[2] - 130_000))
        report = Report(f"Targeting preview, {vehicles:,} vehicles", command)
        report.facts["registry"] = f"{vehicles:,} vehicles, {ecus:,} ECUs ({engine.dialect.name})"

        label = "PostgreSQL" if engine.dialect.name == "postgresql" else "SQLite"
        factory = make_session_factory(engine)
        condition = selection_condition(selection, engine.dialect.name)
        update_id = release_update(engine, settings, selected=condition)
        report.facts["update"] = f"id {update_id}"

        def plain() -> None:
            with unit_of_work(factory) as session:
                session.scalars(select(Vehicle.vin).where(condition)).all()

        def preview(selected: TargetSelection) -> None:
            with unit_of_work(factory) as session:
                out = service.run_preview(
                    session, PreviewRequest(update_ids=[update_id], selection=selected)
                )
                report.facts[f"preview of {out.vehicles_selected:,} vehicles"] = ", ".join(
                    f"{r.reason.value} {r.vehicles:,}" for r in out.reasons
                )

        plain()  # warm the cache once; each measure is then a median of three
        baseline = median_seconds(plain, 3)
        report.add(
            Result(
                f"{label}: plain selection ({described})", baseline, in_selection, unit="vehicles"
            )
        )
        selected = median_seconds(lambda: preview(selection), 3)
        report.add(
            Result(
                f"{label}: full preview, {described}",
                selected,
                in_selection,
                unit="vehicles",
                baseline="plain selection",
                ratio=selected / baseline,
                note="target < 1.5 s PostgreSQL, < 4 s SQLite; ratio goal ≤ 5",
            )
        )
        whole = median_seconds(lambda: preview(TargetSelection()), 3)
        report.add(Result(f"{label}: full preview, whole fleet", whole, vehicles, unit="vehicles"))
        with unit_of_work(factory) as session:
            vins = list(session.scalars(select(Vehicle.vin).order_by(Vehicle.id).limit(20 * 997)))[
                ::997
            ]
        samples = []
        for vin in vins:
            started = time.perf_counter()
            with unit_of_work(factory) as session:
                service.vehicle_updates(session, vin)
            samples.append(time.perf_counter() - started)
        report.add(
            Result(
                f"{label}: one vehicle's updates",
                statistics.median(samples),
                note=f"median of {len(samples)}, target < 0.05 s",
            )
        )
    console.print(f"benchmark update {update_id} stays in the catalog of {database_url}")
    engine.dispose()
    return report
