"""Targeting operations used by the API and the CLI: preview, one vehicle's updates, compliance."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from otacm.errors import Conflict, NotFound
from otacm.fleet.models import Ecu, Vehicle
from otacm.targeting import preview
from otacm.targeting.eligibility import (
    DependencyRule,
    EcuFacts,
    KnownCounters,
    Reason,
    RegionRule,
    UpdateRule,
    VehicleFacts,
    evaluate,
    install_order,
)
from otacm.targeting.schemas import (
    ComplianceOut,
    ComplianceRow,
    EcuCompliance,
    EcuStatus,
    InstalledVersions,
    PreviewOut,
    PreviewRequest,
    ReasonCount,
    RegionRestriction,
    UpdateBrief,
    UpdateVerdict,
    VehicleUpdatesOut,
)
from otacm.targeting.selection import selection_condition
from otacm.updates import versions
from otacm.updates.models import SoftwareUpdate
from otacm.updates.schemas import UpdateState

TARGETABLE_STATES = frozenset({UpdateState.RELEASED.value})


class UpdateNotTargetable(Conflict):
    code = "update_not_targetable"


def rule_of(update: SoftwareUpdate) -> UpdateRule:
    return UpdateRule(
        id=update.id,
        ecu_type=update.ecu_type,
        version=update.version,
        protocol=update.protocol,
        release_counter=update.release_counter or 0,
        compatible_models=frozenset(update.compatible_models),
        model_year_min=update.model_year_min,
        model_year_max=update.model_year_max,
        fuel_types=frozenset(update.fuel_types),
        hardware_part_numbers=frozenset(update.hardware_part_numbers),
        hardware_versions=frozenset(update.hardware_versions),
        applicable_versions=frozenset(update.applicable_versions),
        applicable_version_min=update.applicable_version_min,
        applicable_version_max=update.applicable_version_max,
        dependencies=tuple(
            DependencyRule(d["ecu_type"], d.get("min_version"), d.get("max_version"))
            for d in update.dependencies
        ),
    )


def brief(update: SoftwareUpdate) -> UpdateBrief:
    return UpdateBrief(
        id=update.id,
        name=update.name,
        ecu_type=update.ecu_type,
        version=update.version,
        release_counter=update.release_counter,
    )


def known_counters(session: Session) -> KnownCounters:
    """The highest release counter of every released (or withdrawn) version, per ECU type."""
    counters: dict[tuple[str, str], int] = {}
    query = select(
        SoftwareUpdate.ecu_type, SoftwareUpdate.version, SoftwareUpdate.release_counter
    ).where(SoftwareUpdate.release_counter.is_not(None))
    for ecu_type, version, counter in session.execute(query):
        key = (ecu_type, versions.reading_key(version))
        counters[key] = max(counters.get(key, 0), counter or 0)
    return counters


def targetable_updates(session: Session, update_ids: Sequence[int]) -> list[SoftwareUpdate]:
    found = {
        u.id: u
        for u in session.scalars(select(SoftwareUpdate).where(SoftwareUpdate.id.in_(update_ids)))
    }
    for update_id in update_ids:
        update = found.get(update_id)
        if update is None:
            raise NotFound(f"there is no software update {update_id}", field="update_ids")
        if update.state not in TARGETABLE_STATES:
            raise UpdateNotTargetable(
                f"update {update_id} is {update.state}; only released updates can be targeted",
                field="update_ids",
                update_id=update_id,
            )
    types = [found[i].ecu_type for i in update_ids]
    if len(set(types)) != len(types):
        raise UpdateNotTargetable(
            "a selection carries at most one update per ECU type", field="update_ids"
        )
    return [found[i] for i in dict.fromkeys(update_ids)]


def region_rule(r: RegionRestriction) -> RegionRule:
    """The preview's and a campaign's region restriction, as the eligibility rules take it."""
    return RegionRule(
        allowed_regions=frozenset(x.value for x in r.allowed_regions),
        excluded_regions=frozenset(x.value for x in r.excluded_regions),
        allowed_countries=frozenset(r.allowed_countries),
        excluded_countries=frozenset(r.excluded_countries),
    )


def plan_for(session: Session, request: PreviewRequest) -> tuple[list[SoftwareUpdate], Any, Any]:
    updates = targetable_updates(session, request.update_ids)
    plan = preview.make_plan(
        session,
        [rule_of(u) for u in updates],
        regions=region_rule(request.regions),
        known_counters=known_counters(session),
        allow_downgrade=request.allow_downgrade,
    )
    condition = selection_condition(request.selection, session.get_bind().dialect.name)
    return updates, plan, condition


def run_preview(session: Session, request: PreviewRequest) -> PreviewOut:
    updates, plan, condition = plan_for(session, request)
    counts = preview.run_preview(session, plan, condition, sample_size=request.sample_size)
    reasons = [
        ReasonCount(reason=reason, vehicles=number, sample_vins=counts.samples.get(reason, []))
        for reason, number in sorted(counts.by_reason.items(), key=lambda item: -item[1])
    ]
    return PreviewOut(
        updates=[brief(u) for u in updates],
        vehicles_selected=counts.vehicles,
        vehicles_eligible=counts.by_reason.get(Reason.ELIGIBLE, 0),
        ecus_eligible=counts.ecus_eligible,
        reasons=reasons,
        breakdowns=counts.breakdowns,
        installed_versions=[
            InstalledVersions(update_id=u.id, ecu_type=u.ecu_type, versions=counts.versions[u.id])
            for u in updates
        ],
        install_order=install_order(plan.updates, {u.id: u.install_order for u in updates}),
    )


def preview_rows(
    session: Session, request: PreviewRequest, reasons: Sequence[Reason]
) -> Iterator[dict[str, Any]]:
    _, plan, condition = plan_for(session, request)
    for row in preview.stream_vehicles(session, plan, condition, reasons):
        yield {
            "vin": row.vin,
            "reason": preview.REASON_OF_CODE[row.reason].value,
            "model": row.model,
            "model_year": row.model_year,
            "fuel_type": row.fuel_type,
            "region": row.region,
            "country": row.country,
            "ecu_updates": row.ecu_updates,
        }


def _vehicle_facts(
    session: Session, vin: str
) -> tuple[VehicleFacts, list[EcuFacts], frozenset[str]]:
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == vin.strip().upper()))
    if vehicle is None:
        raise NotFound(f"there is no vehicle {vin}", field="vin")
    ecus = session.scalars(
        select(Ecu).where(Ecu.vehicle_id == vehicle.id, Ecu.removed_at.is_(None))
    ).all()
    busy = preview.busy_ecu_types(session, vehicle.id)
    return vehicle_facts(vehicle), [ecu_facts(e) for e in ecus], busy


def vehicle_facts(vehicle: Vehicle, *, busy: bool = False) -> VehicleFacts:
    return VehicleFacts(
        vin=vehicle.vin,
        status=vehicle.status,
        model=vehicle.model,
        model_year=vehicle.model_year,
        fuel_type=vehicle.fuel_type,
        region=vehicle.region,
        country=vehicle.country,
        busy=busy,
    )


def ecu_facts(ecu: Ecu) -> EcuFacts:
    return EcuFacts(
        ecu.ecu_type,
        ecu.serial,
        ecu.hardware_part_number,
        ecu.hardware_version,
        ecu.protocol,
        ecu.software_version,
    )


def _latest_for(ecu: EcuFacts, released: Sequence[SoftwareUpdate]) -> SoftwareUpdate | None:
    fitting = [
        u
        for u in released
        if u.ecu_type == ecu.ecu_type
        and ecu.hardware_part_number in u.hardware_part_numbers
        and ecu.hardware_version in u.hardware_versions
    ]
    return max(fitting, key=lambda u: versions.version_key(u.version), default=None)


def vehicle_updates(session: Session, vin: str) -> VehicleUpdatesOut:
    """Every released update judged for one vehicle on its own (a dependency counts as met
    only by what is installed), and where each fitted ECU stands."""
    vehicle, ecus, busy = _vehicle_facts(session, vin)
    released = list(
        session.scalars(
            select(SoftwareUpdate)
            .where(SoftwareUpdate.state == UpdateState.RELEASED.value)
            .order_by(SoftwareUpdate.ecu_type, SoftwareUpdate.version_sort.desc())
        )
    )
    counters = known_counters(session)
    applicable: list[UpdateVerdict] = []
    not_applicable: list[UpdateVerdict] = []
    serials_with_update: set[str] = set()
    for update in released:
        facts = replace(vehicle, busy=update.ecu_type in busy)
        decision = evaluate(facts, ecus, [rule_of(update)], known_counters=counters)
        [verdict] = decision.updates
        reason = decision.reason
        out = UpdateVerdict(
            update=brief(update), reason=reason, ecu_serials=list(verdict.ecu_serials)
        )
        if reason is Reason.ELIGIBLE:
            applicable.append(out)
            serials_with_update.update(verdict.ecu_serials)
        else:
            not_applicable.append(out)
    statuses = []
    for ecu in sorted(ecus, key=lambda e: (e.ecu_type, e.serial)):
        latest = _latest_for(ecu, released)
        if latest is None:
            status = EcuCompliance.NO_RELEASE
        elif versions.compare_reading(ecu.software_version, latest.version) >= 0:
            status = EcuCompliance.ON_LATEST
        elif ecu.ecu_type in busy:
            status = EcuCompliance.IN_PROGRESS
        elif ecu.serial in serials_with_update:
            status = EcuCompliance.UPDATE_AVAILABLE
        else:
            status = EcuCompliance.BEHIND
        statuses.append(
            EcuStatus(
                ecu_type=ecu.ecu_type,
                serial=ecu.serial,
                hardware_part_number=ecu.hardware_part_number,
                hardware_version=ecu.hardware_version,
                installed_version=ecu.software_version,
                latest_release=latest.version if latest else None,
                status=status,
            )
        )
    return VehicleUpdatesOut(
        vin=vehicle.vin, applicable=applicable, not_applicable=not_applicable, ecus=statuses
    )


def fleet_compliance(session: Session) -> ComplianceOut:
    """Per ECU type and model: fitted ECUs on the newest released version for their hardware,
    behind it with a deployment of a live campaign under way (`in_progress`), behind it, or with
    no release for their hardware at all."""
    released = list(
        session.scalars(
            select(SoftwareUpdate).where(SoftwareUpdate.state == UpdateState.RELEASED.value)
        )
    )
    latest: dict[tuple[str, str, str], str] = {}
    for update in released:
        for part in update.hardware_part_numbers:
            for revision in update.hardware_versions:
                key = (update.ecu_type, part, revision)
                if key not in latest or versions.compare_reading(update.version, latest[key]) > 0:
                    latest[key] = update.version
    current: list[tuple[str, str, str, str]] = []
    for (ecu_type, part, revision), newest in latest.items():
        for version in preview.installed_versions(session, ecu_type):
            if versions.compare_reading(version, newest) >= 0:
                current.append((ecu_type, part, revision, version))
    status: ColumnElement[str] = literal("no_release")
    if latest:
        hardware = tuple_(Ecu.ecu_type, Ecu.hardware_part_number, Ecu.hardware_version)
        installed = tuple_(
            Ecu.ecu_type, Ecu.hardware_part_number, Ecu.hardware_version, Ecu.software_version
        )
        running = [
            and_(Ecu.ecu_type == ecu_type, preview.busy_condition(Ecu.vehicle_id, campaigns))
            for ecu_type in sorted({key[0] for key in latest})
            if (campaigns := preview.live_campaigns_for(session, {ecu_type}))
        ]
        status = case(
            (installed.in_(current), "on_latest") if current else (false(), "on_latest"),
            (and_(hardware.in_(list(latest)), or_(*running)), "in_progress")
            if running
            else (false(), "in_progress"),
            (hardware.in_(list(latest)), "behind"),
            else_="no_release",
        )
    query = (
        select(Ecu.ecu_type, Vehicle.model, status.label("status"), func.count())
        .join(Vehicle, Vehicle.id == Ecu.vehicle_id)
        .where(and_(Ecu.removed_at.is_(None), or_(Vehicle.status == "active")))
        .group_by(Ecu.ecu_type, Vehicle.model, status)
        .order_by(Ecu.ecu_type, Vehicle.model)
    )
    rows: dict[tuple[str, str], ComplianceRow] = {}
    for ecu_type, model, state, number in session.execute(query):
        row = rows.setdefault(
            (ecu_type, model),
            ComplianceRow(
                ecu_type=ecu_type, model=model, on_latest=0, behind=0, in_progress=0, no_release=0
            ),
        )
        setattr(row, state, getattr(row, state) + number)
    return ComplianceOut(rows=list(rows.values()))
