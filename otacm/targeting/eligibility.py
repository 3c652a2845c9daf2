"""Eligibility: whether a vehicle takes an update, and if not, the one reason why.

This module is the definition. The bulk preview (`preview.py`) computes the same answer for a
whole fleet in SQL, and a property test holds the two to each other on random fleets.

For one vehicle and one update the checks run in this order; the first that fails is the
update's *stage*, and later stages are closer to eligible:

| stage | reason | the check that failed |
|---:|---|---|
| 1 | model_incompatible | model in `compatible_models`, model year in range |
| 2 | fuel_type_incompatible | fuel type in `fuel_types` |
| 3 | no_matching_ecu | a fitted ECU of the update's `ecu_type` |
| 4 | hardware_incompatible | its hardware part number and version in the update's lists |
| 5 | protocol_mismatch | its bus protocol is the update's |
| 6 | downgrade_blocked | installed not newer, nor released with a higher release counter |
| 7 | already_up_to_date | installed does not read as the update's version (4.01 reads as 4.1) |
| 8 | installed_version_not_applicable | installed in `applicable_versions` or range, if given |
| 9 | dependency_unmet | each dependency met: see `dependency_met`, `resolve_dependencies` |
| 10 | eligible | |

With several ECUs of the type, the ECU that gets furthest decides. With several updates, the
vehicle is eligible when any update is, and otherwise takes the reason of the update that got
furthest. Three vehicle-level reasons come first, in this order: `vehicle_inactive` (status
is not active), `region_not_allowed` (the selection's region and country rules exclude it),
`busy_in_other_campaign` (it has an unfinished deployment in another live campaign that
carries an update for one of the same ECU types).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from otacm.updates import versions


class Reason(StrEnum):
    ELIGIBLE = "eligible"
    ALREADY_UP_TO_DATE = "already_up_to_date"
    NO_MATCHING_ECU = "no_matching_ecu"
    HARDWARE_INCOMPATIBLE = "hardware_incompatible"
    MODEL_INCOMPATIBLE = "model_incompatible"
    FUEL_TYPE_INCOMPATIBLE = "fuel_type_incompatible"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    INSTALLED_VERSION_NOT_APPLICABLE = "installed_version_not_applicable"
    DEPENDENCY_UNMET = "dependency_unmet"
    DOWNGRADE_BLOCKED = "downgrade_blocked"
    REGION_NOT_ALLOWED = "region_not_allowed"
    VEHICLE_INACTIVE = "vehicle_inactive"
    BUSY_IN_OTHER_CAMPAIGN = "busy_in_other_campaign"


# Per-update stages, in check order (see the module docstring).
STAGES: tuple[Reason, ...] = (
    Reason.MODEL_INCOMPATIBLE,
    Reason.FUEL_TYPE_INCOMPATIBLE,
    Reason.NO_MATCHING_ECU,
    Reason.HARDWARE_INCOMPATIBLE,
    Reason.PROTOCOL_MISMATCH,
    Reason.DOWNGRADE_BLOCKED,
    Reason.ALREADY_UP_TO_DATE,
    Reason.INSTALLED_VERSION_NOT_APPLICABLE,
    Reason.DEPENDENCY_UNMET,
    Reason.ELIGIBLE,
)
STAGE = {reason: number for number, reason in enumerate(STAGES, start=1)}
ELIGIBLE = STAGE[Reason.ELIGIBLE]
AWAITING_DEPENDENCIES = STAGE[Reason.DEPENDENCY_UNMET]
VEHICLE_REASONS = (
    Reason.VEHICLE_INACTIVE,
    Reason.REGION_NOT_ALLOWED,
    Reason.BUSY_IN_OTHER_CAMPAIGN,
)


@dataclass(frozen=True, slots=True)
class DependencyRule:
    ecu_type: str
    min_version: str | None = None
    max_version: str | None = None

    def admits(self, version: str) -> bool:
        """`version` lies in [min_version, max_version] (natural order, bounds optional)."""
        try:
            if self.min_version and versions.compare_reading(version, self.min_version) < 0:
                return False
            return not (
                self.max_version and versions.compare_reading(version, self.max_version) > 0
            )
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class UpdateRule:
    """What eligibility needs of a released software update."""

    id: int
    ecu_type: str
    version: str
    protocol: str
    release_counter: int
    compatible_models: frozenset[str]
    model_year_min: int | None
    model_year_max: int | None
    fuel_types: frozenset[str]
    hardware_part_numbers: frozenset[str]
    hardware_versions: frozenset[str]
    applicable_versions: frozenset[str] = frozenset()
    applicable_version_min: str | None = None
    applicable_version_max: str | None = None
    dependencies: tuple[DependencyRule, ...] = ()


@dataclass(frozen=True, slots=True)
class VehicleFacts:
    vin: str
    status: str
    model: str
    model_year: int
    fuel_type: str
    region: str
    country: str
    busy: bool = False


@dataclass(frozen=True, slots=True)
class EcuFacts:
    ecu_type: str
    serial: str
    hardware_part_number: str
    hardware_version: str
    protocol: str
    software_version: str


@dataclass(frozen=True, slots=True)
class RegionRule:
    """Where a selection may go; empty lists allow everything."""

    allowed_regions: frozenset[str] = frozenset()
    excluded_regions: frozenset[str] = frozenset()
    allowed_countries: frozenset[str] = frozenset()
    excluded_countries: frozenset[str] = frozenset()

    def allows(self, region: str, country: str) -> bool:
        if self.allowed_regions and region not in self.allowed_regions:
            return False
        if region in self.excluded_regions:
            return False
        if self.allowed_countries and country not in self.allowed_countries:
            return False
        return country not in self.excluded_countries


@dataclass(frozen=True, slots=True)
class UpdateDecision:
    update_id: int
    reason: Reason
    # The ECUs that would take the update (empty unless eligible).
    ecu_serials: tuple[str, ...] = ()

    @property
    def stage(self) -> int:
        return STAGE[self.reason]


@dataclass(frozen=True, slots=True)
class VehicleDecision:
    reason: Reason
    updates: tuple[UpdateDecision, ...] = field(default_factory=tuple)

    @property
    def eligible_updates(self) -> tuple[UpdateDecision, ...]:
        return tuple(d for d in self.updates if d.reason is Reason.ELIGIBLE)


# Known release counters of installed images: (ecu_type, versions.reading_key(version)) -> the
# highest counter of a released update of that type and version.
KnownCounters = Mapping[tuple[str, str], int]


def installed_version_stage(
    installed: str,
    update: UpdateRule,
    known_counters: KnownCounters,
    *,
    allow_downgrade: bool = False,
) -> int:
    """Stage 6, 7, 8 or 9 for an ECU whose hardware and protocol fit: what its installed
    version says. The bulk preview classifies each distinct installed version with this."""
    try:
        order = versions.compare_reading(installed, update.version)
        counter = known_counters.get((update.ecu_type, versions.reading_key(installed)), 0)
    except ValueError:
        return STAGE[Reason.INSTALLED_VERSION_NOT_APPLICABLE]
    if not allow_downgrade and (order > 0 or counter > update.release_counter):
        return STAGE[Reason.DOWNGRADE_BLOCKED]
    if order == 0:
        return STAGE[Reason.ALREADY_UP_TO_DATE]
    if not _applicable(installed, update):
        return STAGE[Reason.INSTALLED_VERSION_NOT_APPLICABLE]
    return AWAITING_DEPENDENCIES


def _applicable(installed: str, update: UpdateRule) -> bool:
    has_list = bool(update.applicable_versions)
    has_range = bool(update.applicable_version_min or update.applicable_version_max)
    if not has_list and not has_range:
        return True
    if has_list and any(_reads_same(installed, v) for v in update.applicable_versions):
        return True
    if has_range:
        rule = DependencyRule("", update.applicable_version_min, update.applicable_version_max)
        return rule.admits(installed)
    return False


def _reads_same(a: str, b: str) -> bool:
    try:
        return versions.compare_reading(a, b) == 0
    except ValueError:
        return False


def _ecu_stage(
    ecu: EcuFacts, update: UpdateRule, known_counters: KnownCounters, allow_downgrade: bool
) -> int:
    if (
        ecu.hardware_part_number not in update.hardware_part_numbers
        or ecu.hardware_version not in update.hardware_versions
    ):
        return STAGE[Reason.HARDWARE_INCOMPATIBLE]
    if ecu.protocol != update.protocol:
        return STAGE[Reason.PROTOCOL_MISMATCH]
    return installed_version_stage(
        ecu.software_version, update, known_counters, allow_downgrade=allow_downgrade
    )


def vehicle_fits(vehicle: VehicleFacts, update: UpdateRule) -> int | None:
    """Stage 1 or 2 when the vehicle itself does not fit the update, else None."""
    year_ok = (update.model_year_min is None or vehicle.model_year >= update.model_year_min) and (
        update.model_year_max is None or vehicle.model_year <= update.model_year_max
    )
    if vehicle.model not in update.compatible_models or not year_ok:
        return STAGE[Reason.MODEL_INCOMPATIBLE]
    if vehicle.fuel_type not in update.fuel_types:
        return STAGE[Reason.FUEL_TYPE_INCOMPATIBLE]
    return None


def _stage_before_dependencies(
    vehicle: VehicleFacts,
    ecus: Sequence[EcuFacts],
    update: UpdateRule,
    known_counters: KnownCounters,
    allow_downgrade: bool,
) -> tuple[int, tuple[str, ...]]:
    unfit = vehicle_fits(vehicle, update)
    if unfit is not None:
        return unfit, ()
    candidates = [e for e in ecus if e.ecu_type == update.ecu_type]
    if not candidates:
        return STAGE[Reason.NO_MATCHING_ECU], ()
    stages = {e.serial: _ecu_stage(e, update, known_counters, allow_downgrade) for e in candidates}
    best = max(stages.values())
    return best, tuple(sorted(s for s, stage in stages.items() if stage == best))


def _installed_satisfies(ecus: Sequence[EcuFacts], rule: DependencyRule) -> bool:
    return any(e.ecu_type == rule.ecu_type and rule.admits(e.software_version) for e in ecus)


def dependency_met(
    rule: DependencyRule,
    provider: UpdateRule | None,
    candidates: set[int],
    eligible: set[int],
    installed_satisfies: bool,
) -> bool:
    """One dependency, for a vehicle. When the selection carries an update for the depended-on
    ECU type that fits the vehicle (a candidate), that ECU will run the update's version
    afterwards: the dependency is met only if that version satisfies it and the update is
    itself eligible. Otherwise the installed version decides."""
    if provider is not None and provider.id in candidates:
        return rule.admits(provider.version) and provider.id in eligible
    return installed_satisfies


def resolve_dependencies(
    updates: Sequence[UpdateRule],
    candidates: set[int],
    provider_of: Mapping[str, UpdateRule],
    installed_satisfies: Callable[[DependencyRule], bool],
) -> set[int]:
    """The candidates (stage 9+) whose dependencies all hold, built up from those that need
    nothing of the selection: an update counts only once its providers do, so a chain whose
    first link fails fails whole, and updates that need each other (a cycle, which no install
    order can satisfy) stay `dependency_unmet`."""
    eligible: set[int] = set()
    while True:
        added = {
            u.id
            for u in updates
            if u.id in candidates
            and u.id not in eligible
            and all(
                dependency_met(
                    rule,
                    provider_of.get(rule.ecu_type)
                    if provider_of.get(rule.ecu_type) is not u
                    else None,
                    candidates,
                    eligible,
                    installed_satisfies(rule),
                )
                for rule in u.dependencies
            )
        }
        if not added:
            return eligible
        eligible |= added


def evaluate(
    vehicle: VehicleFacts,
    ecus: Sequence[EcuFacts],
    updates: Sequence[UpdateRule],
    *,
    regions: RegionRule | None = None,
    known_counters: KnownCounters | None = None,
    allow_downgrade: bool = False,
) -> VehicleDecision:
    """The decision for one vehicle (its fitted ECUs) and the updates of one selection."""
    counters = known_counters or {}
    early = _stage_before_dependencies
    before = {u.id: early(vehicle, ecus, u, counters, allow_downgrade) for u in updates}
    candidates = {u.id for u in updates if before[u.id][0] >= AWAITING_DEPENDENCIES}
    provider_of = {u.ecu_type: u for u in updates}
    eligible = resolve_dependencies(
        updates, candidates, provider_of, lambda rule: _installed_satisfies(ecus, rule)
    )
    decisions: list[UpdateDecision] = []
    for update in updates:
        stage, serials = before[update.id]
        if update.id in eligible:
            stage = ELIGIBLE
        reason = STAGES[stage - 1]
        decisions.append(
            UpdateDecision(update.id, reason, serials if reason is Reason.ELIGIBLE else ())
        )
    if vehicle.status != "active":
        return VehicleDecision(Reason.VEHICLE_INACTIVE, tuple(decisions))
    if regions is not None and not regions.allows(vehicle.region, vehicle.country):
        return VehicleDecision(Reason.REGION_NOT_ALLOWED, tuple(decisions))
    if vehicle.busy:
        return VehicleDecision(Reason.BUSY_IN_OTHER_CAMPAIGN, tuple(decisions))
    best = max((d.stage for d in decisions), default=STAGE[Reason.NO_MATCHING_ECU])
    return VehicleDecision(STAGES[best - 1], tuple(decisions))


def install_order(updates: Sequence[UpdateRule], install_orders: Mapping[int, int]) -> list[int]:
    """The order a vehicle installs its eligible updates in: dependencies first, then the
    updates' `install_order` hint, then id."""
    by_type = {u.ecu_type: u for u in updates}
    placed: list[int] = []
    visiting: set[int] = set()

    def place(update: UpdateRule) -> None:
        if update.id in placed or update.id in visiting:
            return
        visiting.add(update.id)
        for rule in update.dependencies:
            provider = by_type.get(rule.ecu_type)
            if provider is not None and rule.admits(provider.version):
                place(provider)
        visiting.discard(update.id)
        placed.append(update.id)

    for update in sorted(updates, key=lambda u: (install_orders.get(u.id, 0), u.id)):
        place(update)
    return placed
