"""The bulk preview: the eligibility of every vehicle in a selection, computed in the database.

The rules are `eligibility.py`'s; this module turns them into one set-based query. What needs
natural version order is settled in Python beforehand, on the few distinct versions installed
for each ECU type: each version gets its stage (`installed_version_stage`), and the query only
asks which list an ECU's version is in — bound parameters, never string-built SQL.

The per-vehicle answers go into a temporary table, from which the counts, samples and
breakdowns are read; the full list is streamed from the same query without one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    case,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from otacm.campaigns.models import Campaign, CampaignUpdate, Deployment
from otacm.campaigns.states import RETRYABLE_FAILURES, UNFINISHED
from otacm.db import is_postgresql
from otacm.fleet.models import BigId, Ecu, Vehicle
from otacm.targeting.eligibility import (
    AWAITING_DEPENDENCIES,
    ELIGIBLE,
    STAGE,
    STAGES,
    KnownCounters,
    Reason,
    RegionRule,
    UpdateRule,
    installed_version_stage,
)
from otacm.updates.models import SoftwareUpdate

# Campaigns whose unfinished deployments make a vehicle busy (plain strings: the campaign
# states' enum lives with the campaign schemas, which import targeting).
LIVE_CAMPAIGNS = ("scheduled", "running", "paused")

# Codes of the vehicle-level reasons, above the per-update stages 1..10.
VEHICLE_REASON_CODES = {
    Reason.VEHICLE_INACTIVE: 11,
    Reason.REGION_NOT_ALLOWED: 12,
    Reason.BUSY_IN_OTHER_CAMPAIGN: 13,
}
# The per-update column packs two numbers: stage × VERSION_SLOTS + the position of the
# installed version of the ECU that got furthest. One correlated lookup of the vehicle's ECUs
# then serves both the reason and the breakdown by installed version.
VERSION_SLOTS = 100_000

REASON_OF_CODE: dict[int, Reason] = {
    **{STAGE[r]: r for r in STAGES},
    **{code: r for r, code in VEHICLE_REASON_CODES.items()},
}


@dataclass(frozen=True)
class VersionClasses:
    """The stage each installed version of one ECU type has for one update."""

    downgrade: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    applicable: list[str] = field(default_factory=list)
    # Everything else installed is "not applicable" (stage 8), which is also what a version
    # first seen after planning gets: the safe answer.


@dataclass(frozen=True)
class PreviewPlan:
    updates: Sequence[UpdateRule]
    classes: dict[int, VersionClasses]
    # Per update, per dependency: installed versions that satisfy it.
    dependency_versions: dict[int, list[list[str]]]
    regions: RegionRule
    # Per update: the versions installed on its ECU type; an ECU's version is reported as its
    # position in this list (1-based; 0 for a version first seen after planning).
    installed: dict[int, list[str]] = field(default_factory=dict)
    # The live campaigns carrying updates for the same ECU types: a vehicle with an unfinished
    # deployment in one of them is busy. None: the per-vehicle lookup is left out.
    busy_campaigns: tuple[int, ...] = ()


# The distinct versions of one ECU type by skipping through the (ecu_type, software_version)
# index: one probe per distinct version (a few dozen) instead of reading every ECU of the type.
_DISTINCT_VERSIONS = text(
    """
    WITH RECURSIVE found(version) AS (
        SELECT MIN(software_version) FROM ecus WHERE ecu_type = :ecu_type
        UNION ALL
        SELECT (
            SELECT MIN(software_version) FROM ecus
            WHERE ecu_type = :ecu_type AND software_version > found.version
        )
        FROM found WHERE found.version IS NOT NULL
    )
    SELECT version FROM found WHERE version IS NOT NULL
    """
)


def installed_versions(session: Session, ecu_type: str) -> list[str]:
    """The distinct software versions ECUs of `ecu_type` run or ran. Removed ECUs count too:
    classifying a version nobody runs any more costs nothing, and it keeps this an index walk."""
    return list(session.scalars(_DISTINCT_VERSIONS, {"ecu_type": ecu_type}))


def live_campaigns_for(session: Session, ecu_types: Collection[str]) -> tuple[int, ...]:
    """The scheduled, running or paused campaigns carrying an update for one of `ecu_types`."""
    if not ecu_types:
        return ()
    query = (
        select(Campaign.id)
        .join(CampaignUpdate, CampaignUpdate.campaign_id == Campaign.id)
        .join(SoftwareUpdate, SoftwareUpdate.id == CampaignUpdate.update_id)
        .where(Campaign.state.in_(LIVE_CAMPAIGNS), SoftwareUpdate.ecu_type.in_(list(ecu_types)))
        .distinct()
        .order_by(Campaign.id)
    )
    return tuple(session.scalars(query))


def _still_running() -> ColumnElement[bool]:
    """A deployment not done with its vehicle: unfinished, or failed with a retry planned."""
    return or_(
        Deployment.state.in_([s.value for s in UNFINISHED]),
        and_(
            Deployment.state.in_([s.value for s in RETRYABLE_FAILURES]),
            Deployment.next_attempt_at.is_not(None),
        ),
    )


def busy_condition(vehicle_id: Any, campaign_ids: Sequence[int]) -> ColumnElement[bool]:
    """The vehicle has a deployment still running (pending … installed, or a failure with a
    retry planned) in one of `campaign_ids`
    (`live_campaigns_for` the ECU types at hand): it is `busy_in_other_campaign`, so one ECU
    never has two campaigns' deployments under way."""
    if not campaign_ids:
        return false()
    return exists(
        select(Deployment.id).where(
            Deployment.vehicle_id == vehicle_id,
            Deployment.campaign_id.in_(list(campaign_ids)),
            _still_running(),
        )
    )


def busy_ecu_types(session: Session, vehicle_id: int) -> frozenset[str]:
    """The ECU types the vehicle has an unfinished deployment for in a live campaign."""
    query = (
        select(SoftwareUpdate.ecu_type)
        .join(CampaignUpdate, CampaignUpdate.update_id == SoftwareUpdate.id)
        .join(Campaign, Campaign.id == CampaignUpdate.campaign_id)
        .join(Deployment, Deployment.campaign_id == Campaign.id)
        .where(
            Deployment.vehicle_id == vehicle_id,
            _still_running(),
            Campaign.state.in_(LIVE_CAMPAIGNS),
        )
        .distinct()
    )
    return frozenset(session.scalars(query))


def make_plan(
    session: Session,
    updates: Sequence[UpdateRule],
    *,
    regions: RegionRule,
    known_counters: KnownCounters,
    allow_downgrade: bool = False,
) -> PreviewPlan:
    cache: dict[str, list[str]] = {}

    def versions_of(ecu_type: str) -> list[str]:
        if ecu_type not in cache:
            cache[ecu_type] = installed_versions(session, ecu_type)
        return cache[ecu_type]

    classes: dict[int, VersionClasses] = {}
    dependency_versions: dict[int, list[list[str]]] = {}
    for update in updates:
        found = VersionClasses()
        target = {
            STAGE[Reason.DOWNGRADE_BLOCKED]: found.downgrade,
            STAGE[Reason.ALREADY_UP_TO_DATE]: found.up_to_date,
            AWAITING_DEPENDENCIES: found.applicable,
        }
        for version in versions_of(update.ecu_type):
            stage = installed_version_stage(
                version, update, known_counters, allow_downgrade=allow_downgrade
            )
            if stage in target:
                target[stage].append(version)
        classes[update.id] = found
        dependency_versions[update.id] = [
            [v for v in versions_of(rule.ecu_type) if rule.admits(v)]
            for rule in update.dependencies
        ]
    installed = {u.id: versions_of(u.ecu_type)[: VERSION_SLOTS - 1] for u in updates}
    busy = live_campaigns_for(session, {u.ecu_type for u in updates})
    return PreviewPlan(updates, classes, dependency_versions, regions, installed, busy)


# Lists up to this long are bound value by value; longer ones as one parameter (an array on
# PostgreSQL, JSON for SQLite's json_each), which no database parameter limit can refuse.
SHORT_LIST = 64


def _one_of(column: Any, values: Sequence[str], postgres: bool) -> ColumnElement[bool]:
    if len(values) <= SHORT_LIST:
        return cast(ColumnElement[bool], column.in_(values))
    if postgres:
        return cast(ColumnElement[bool], column == any_(literal(list(values), ARRAY(Text))))
    each = func.json_each(literal(json.dumps(list(values)), Text)).table_valued("value")
    return cast(ColumnElement[bool], column.in_(select(each.c.value)))


def _position(column: Any, versions: Sequence[str], postgres: bool) -> ColumnElement[int]:
    """1 + the index of `column` in `versions`, 0 when absent."""
    if not versions:
        return literal(0)
    if len(versions) <= SHORT_LIST:
        return case({v: n for n, v in enumerate(versions, start=1)}, value=column, else_=0)
    if postgres:
        return func.coalesce(func.array_position(literal(list(versions), ARRAY(Text)), column), 0)
    each = func.json_each(literal(json.dumps(list(versions)), Text)).table_valued("key", "value")
    found = select(each.c.key + 1).where(each.c.value == column).scalar_subquery()
    return func.coalesce(found, 0)


def _stage_before_dependencies(
    plan: PreviewPlan, update: UpdateRule, lateral: bool, bulk: bool = False
) -> tuple[ColumnElement[int], Any, ColumnElement[bool] | None]:
    """Stage × VERSION_SLOTS + installed version position, before dependencies are looked at;
    and, with `lateral`, the subquery the expression reads and the condition to join it on
    (LATERAL, or with `bulk` the per-vehicle maxima of all ECUs of the type, grouped)."""
    ecu = aliased(Ecu)
    found = plan.classes[update.id]
    postgres = lateral
    installed = ecu.software_version
    ecu_stage = case(
        (
            or_(
                ecu.hardware_part_number.not_in(sorted(update.hardware_part_numbers)),
                ecu.hardware_version.not_in(sorted(update.hardware_versions)),
            ),
            STAGE[Reason.HARDWARE_INCOMPATIBLE],
        ),
        (ecu.protocol != update.protocol, STAGE[Reason.PROTOCOL_MISMATCH]),
        (_one_of(installed, found.downgrade, postgres), STAGE[Reason.DOWNGRADE_BLOCKED]),
        (_one_of(installed, found.up_to_date, postgres), STAGE[Reason.ALREADY_UP_TO_DATE]),
        (_one_of(installed, found.applicable, postgres), AWAITING_DEPENDENCIES),
        else_=STAGE[Reason.INSTALLED_VERSION_NOT_APPLICABLE],
    )
    position = _position(ecu.software_version, plan.installed[update.id], postgres)
    best = func.max(ecu_stage * VERSION_SLOTS + position).label("best")
    of_type = (ecu.ecu_type == update.ecu_type, ecu.removed_at.is_(None))
    joined: Any = None
    on: ColumnElement[bool] | None = None
    if lateral and bulk:
        grouped = select(ecu.vehicle_id, best).where(*of_type).group_by(ecu.vehicle_id)
        joined = grouped.subquery(f"furthest_{update.id}")
        on = joined.c.vehicle_id == Vehicle.id
        best_ecu: Any = joined.c.best
    else:
        furthest = select(best).where(ecu.vehicle_id == Vehicle.id, *of_type)
        if lateral:
            joined, on = furthest.lateral(f"furthest_{update.id}"), true()
            best_ecu = joined.c.best
        else:
            best_ecu = furthest.scalar_subquery()
    model_fits: ColumnElement[bool] = Vehicle.model.in_(sorted(update.compatible_models))
    if update.model_year_min is not None:
        model_fits = and_(model_fits, Vehicle.model_year >= update.model_year_min)
    if update.model_year_max is not None:
        model_fits = and_(model_fits, Vehicle.model_year <= update.model_year_max)
    stage = case(
        (~model_fits, STAGE[Reason.MODEL_INCOMPATIBLE] * VERSION_SLOTS),
        (
            Vehicle.fuel_type.not_in(sorted(update.fuel_types)),
            STAGE[Reason.FUEL_TYPE_INCOMPATIBLE] * VERSION_SLOTS,
        ),
        else_=func.coalesce(best_ecu, STAGE[Reason.NO_MATCHING_ECU] * VERSION_SLOTS),
    )
    return stage, joined, on


def _installed_dependency(
    ecu_type: str, satisfying: list[str], postgres: bool
) -> ColumnElement[bool]:
    if not satisfying:
        return false()
    dep = aliased(Ecu)
    return exists(
        select(dep.id).where(
            dep.vehicle_id == Vehicle.id,
            dep.ecu_type == ecu_type,
            dep.removed_at.is_(None),
            _one_of(dep.software_version, satisfying, postgres),
        )
    )


def _region_refused(rule: RegionRule, region: Any, country: Any) -> ColumnElement[bool]:
    refused: list[ColumnElement[bool]] = []
    if rule.allowed_regions:
        refused.append(region.not_in(sorted(rule.allowed_regions)))
    if rule.excluded_regions:
        refused.append(region.in_(sorted(rule.excluded_regions)))
    if rule.allowed_countries:
        refused.append(country.not_in(sorted(rule.allowed_countries)))
    if rule.excluded_countries:
        refused.append(country.in_(sorted(rule.excluded_countries)))
    return or_(*refused) if refused else false()


def _resolve_dependencies(plan: PreviewPlan, per_vehicle: Any) -> tuple[Any, dict[int, str]]:
    """`eligibility.resolve_dependencies` in SQL: the least fixpoint, one nested subquery per
    pass (each pass can only add updates whose providers became eligible in the one before, so
    a chain of n links settles within n passes). Returns the last layer's columns and, per
    update, the name of its "eligible" column there."""
    provider_of = {u.ecu_type: u for u in plan.updates}
    chained = sum(
        1
        for u in plan.updates
        if any(provider_of.get(r.ecu_type) not in (None, u) for r in u.dependencies)
    )
    layer = per_vehicle
    previous: dict[int, ColumnElement[bool]] = {u.id: false() for u in plan.updates}
    names: dict[int, str] = {}
    for number in range(chained + 1):
        c = layer.c
        candidate = {
            u.id: c[f"s{u.id}"] // VERSION_SLOTS >= AWAITING_DEPENDENCIES for u in plan.updates
        }
        columns: list[Any] = []
        for update in plan.updates:
            met: list[ColumnElement[bool]] = []
            for k, rule in enumerate(update.dependencies):
                installed = c[f"d{update.id}_{k}"]
                provider = provider_of.get(rule.ecu_type)
                if provider is None or provider is update:
                    met.append(installed)
                    continue
                # The provider, if it fits the vehicle, sets the version the ECU will run.
                provides = and_(literal(rule.admits(provider.version)), previous[provider.id])
                met.append(case((candidate[provider.id], provides), else_=installed))
            names[update.id] = f"e{update.id}_{number}"
            columns.append(and_(candidate[update.id], *met).label(names[update.id]))
        layer = select(*c, *columns).subquery(f"dependencies_{number}")
        previous = {u.id: layer.c[names[u.id]] for u in plan.updates}
    return layer.c, names


def vehicle_query(
    session: Session, plan: PreviewPlan, selection: ColumnElement[bool], *, bulk: bool = False
) -> Select[Any]:
    """One row per selected vehicle: id, VIN, model, model year, fuel type, region, the
    reason code and how many of the updates it takes.

    `bulk` (PostgreSQL; for a selection of much of the fleet): each update's ECUs are read in
    one pass over all ECUs of its type, grouped by vehicle and joined to the vehicles, instead
    of one indexed lookup per vehicle. The same rows; at a million vehicles the grouped pass
    takes half the time (sorted and merge-joined, as the campaign launch asks the planner
    for), on a small selection it reads far more than it needs."""
    columns: list[Any] = [
        Vehicle.id.label("vehicle_id"),
        Vehicle.vin,
        Vehicle.model,
        Vehicle.model_year,
        Vehicle.fuel_type,
        Vehicle.region,
        Vehicle.country,
        Vehicle.status,
        busy_condition(Vehicle.id, plan.busy_campaigns).label("busy"),
    ]
    # PostgreSQL joins each update's ECU lookup LATERAL, evaluated once per vehicle and open
    # to parallel workers. SQLite has no LATERAL: there the per-vehicle rows are materialised,
    # or each reference to a stage column below would run its correlated lookup again.
    postgres = is_postgresql(session.get_bind().dialect)
    laterals = []
    for update in plan.updates:
        stage, joined, on = _stage_before_dependencies(plan, update, postgres, bulk)
        columns.append(stage.label(f"s{update.id}"))
        if joined is not None:
            laterals.append((joined, on))
        for k, (rule, satisfying) in enumerate(
            zip(update.dependencies, plan.dependency_versions[update.id], strict=True)
        ):
            columns.append(
                _installed_dependency(rule.ecu_type, satisfying, postgres).label(
                    f"d{update.id}_{k}"
                )
            )
    rows = select(*columns).select_from(Vehicle)
    for joined, on in laterals:
        rows = rows.outerjoin(joined, on) if bulk else rows.join(joined, on)
    rows = rows.where(selection)
    per_vehicle: Any = (
        rows.subquery("per_vehicle")
        if postgres
        else rows.cte("per_vehicle").prefix_with("MATERIALIZED")
    )
    c, eligible = _resolve_dependencies(plan, per_vehicle)
    finals: list[ColumnElement[int]] = []
    for update in plan.updates:
        stage = c[f"s{update.id}"] // VERSION_SLOTS
        finals.append(
            case(
                (c[eligible[update.id]], ELIGIBLE),
                (stage >= AWAITING_DEPENDENCIES, AWAITING_DEPENDENCIES),
                else_=stage,
            )
        )
    if len(finals) == 1:
        best: ColumnElement[int] = finals[0]
    elif is_postgresql(session.get_bind().dialect):
        best = func.greatest(*finals)
    else:
        best = func.max(*finals)  # SQLite's max() of several arguments is a scalar function
    reason = case(
        (c.status != "active", VEHICLE_REASON_CODES[Reason.VEHICLE_INACTIVE]),
        (
            _region_refused(plan.regions, c.region, c.country),
            VEHICLE_REASON_CODES[Reason.REGION_NOT_ALLOWED],
        ),
        (c.busy, VEHICLE_REASON_CODES[Reason.BUSY_IN_OTHER_CAMPAIGN]),
        else_=best,
    )
    eligible_updates = sum((case((f == ELIGIBLE, 1), else_=0) for f in finals), start=literal(0))
    return select(
        c.vehicle_id,
        c.vin,
        c.model,
        c.model_year,
        c.fuel_type,
        c.region,
        c.country,
        reason.label("reason"),
        case((reason == ELIGIBLE, eligible_updates), else_=0).label("ecu_updates"),
        *(
            (c[f"s{u.id}"] % VERSION_SLOTS).label(f"version_{n}")
            for n, u in enumerate(plan.updates)
        ),
    )


@dataclass
class PreviewCounts:
    vehicles: int = 0
    by_reason: dict[Reason, int] = field(default_factory=dict)
    samples: dict[Reason, list[str]] = field(default_factory=dict)
    ecus_eligible: int = 0
    breakdowns: dict[str, dict[str, dict[Reason, int]]] = field(default_factory=dict)
    versions: dict[int, dict[str, dict[Reason, int]]] = field(default_factory=dict)


BREAKDOWNS = ("model", "model_year", "fuel_type", "region")


def _tune(session: Session) -> None:
    if is_postgresql(session.get_bind().dialect):
        # JIT compilation of this query costs more (~0.2 s) than it saves.
        session.execute(text("SET LOCAL jit = off"))


def run_preview(
    session: Session,
    plan: PreviewPlan,
    selection: ColumnElement[bool],
    *,
    sample_size: int = 5,
) -> PreviewCounts:
    """Counts per reason with sample VINs, breakdowns and installed versions, in the caller's
    transaction (the temporary table lives only as long as it)."""
    _tune(session)
    query = vehicle_query(session, plan, selection)
    table = Table(
        f"targeting_preview_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("vehicle_id", BigId, primary_key=True, autoincrement=False),
        Column("vin", String(17)),
        Column("model", String(100)),
        Column("model_year", Integer),
        Column("fuel_type", String(20)),
        Column("region", String(20)),
        Column("reason", Integer),
        Column("ecu_updates", Integer),
        *(Column(f"version_{n}", Integer) for n in range(len(plan.updates))),
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    table.create(connection)
    try:
        columns = [c.name for c in table.columns]
        inner = query.subquery()
        session.execute(
            insert(table).from_select(columns, select(*(inner.c[name] for name in columns)))
        )
        return _read_counts(session, table, plan, sample_size)
    finally:
        # After a failed statement PostgreSQL refuses everything until rollback, which drops
        # the table anyway; the drop must not replace the real error.
        with suppress(DBAPIError):
            table.drop(connection)


def _read_counts(
    session: Session, table: Table, plan: PreviewPlan, sample_size: int
) -> PreviewCounts:
    t = table.c
    counts = PreviewCounts()
    for code, number, ecus in session.execute(
        select(t.reason, func.count(), func.coalesce(func.sum(t.ecu_updates), 0)).group_by(t.reason)
    ):
        counts.by_reason[REASON_OF_CODE[code]] = number
        counts.vehicles += number
        counts.ecus_eligible += int(ecus)
    ranked = select(
        t.reason,
        t.vin,
        func.row_number().over(partition_by=t.reason, order_by=t.vin).label("rank"),
    ).subquery()
    for code, vin in session.execute(
        select(ranked.c.reason, ranked.c.vin)
        .where(ranked.c.rank <= sample_size)
        .order_by(ranked.c.reason, ranked.c.vin)
    ):
        counts.samples.setdefault(REASON_OF_CODE[code], []).append(vin)
    # One pass for the four breakdowns: the groups are few (reasons × models × years × ...).
    for name in BREAKDOWNS:
        counts.breakdowns[name] = {}
    grouped = [t[name] for name in BREAKDOWNS]
    for *values, code, number in session.execute(
        select(*grouped, t.reason, func.count()).group_by(*grouped, t.reason)
    ):
        reason = REASON_OF_CODE[code]
        for name, value in zip(BREAKDOWNS, values, strict=True):
            group = counts.breakdowns[name].setdefault(str(value), {})
            group[reason] = group.get(reason, 0) + number
    for n, update in enumerate(plan.updates):
        column = t[f"version_{n}"]
        installed = plan.installed[update.id]
        by_version: dict[str, dict[Reason, int]] = {}
        for position, code, number in session.execute(
            select(column, t.reason, func.count()).where(column > 0).group_by(column, t.reason)
        ):
            version = installed[position - 1]
            by_version.setdefault(version, {})[REASON_OF_CODE[code]] = number
        counts.versions[update.id] = by_version
    return counts


def stream_vehicles(
    session: Session,
    plan: PreviewPlan,
    selection: ColumnElement[bool],
    reasons: Sequence[Reason] = (),
    batch: int = 5000,
) -> Iterator[Any]:
    """Every selected vehicle with its reason (only `reasons`, when given), in VIN order."""
    _tune(session)
    inner = vehicle_query(session, plan, selection).subquery()
    query = select(inner).order_by(inner.c.vin)
    if reasons:
        codes = [
            VEHICLE_REASON_CODES[r] if r in VEHICLE_REASON_CODES else STAGE[r] for r in reasons
        ]
        query = query.where(inner.c.reason.in_(codes))
    result = session.execute(query.execution_options(yield_per=batch))
    yield from result
