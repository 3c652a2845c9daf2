"""A campaign's rollout policy, and the pure rules the engine applies with it.

No database, no web: the engine reads a campaign's `RolloutPolicy`, counts deployments and asks
these functions what to do. Every function takes the time it needs as an argument (aware UTC
datetimes; a naive one is a ValueError), so a fake clock drives them all.

## Waves
`WavePlan.steps` are **cumulative**: each says how many of the campaign's vehicles have been
offered the update once that wave is open — a share (`percent`, rounded up) or a number
(`count`) of *all* the campaign's vehicles, canary included. "1 %, 10 %, 50 %, 100 %" therefore
opens 1 %, then 9 % more, and so on. Cumulative because that is how staged rollouts are said
aloud, and because the last step must then simply be 100 %, which makes "every vehicle gets a
wave" a rule the validator can check without knowing the fleet. With `canary_vins` the canary is
wave 0 and the steps are waves 1..n; without, the steps are waves 0..n-1 (`wave_count`). A step
that comes out below what earlier waves already reached (a count after a larger percent, a
canary bigger than 1 %) is an empty wave: wave numbers always match the plan.

Within the steps, vehicles are ranked by `SpreadOrder` — a keyed permutation of vehicle ids,
different per campaign and the same after a restart — so a wave is a scattering of the fleet,
not its first VINs. `assign_waves` does the split in memory; `wave_bounds` and `SpreadOrder.sql`
let the engine do the same split in SQL by rank.

## Verdicts
`WaveCounts` sorts a wave's deployments into four groups (`from_states` does it from counts per
state): **succeeded**; **failed** — `failed`, `timed_out` and `rolled_back` that will not be
retried (a timeout is a failure: a vehicle that stops reporting mid-install is what the failure
threshold is for); **withdrawn** — `declined`, `cancelled`, `expired`: finished without a
verdict on the software, so they count in neither share; **unfinished** — the rest, including
failures awaiting a retry. *Participants* are all but the withdrawn, *finished* are succeeded
plus failed. The success share is succeeded / participants and must *reach* the threshold; the
failure share is failed / finished and must *exceed* its threshold (so 0 % pauses on any failure
and 100 % never), once at least `failure_min_finished` deployments — or every participant of a
smaller wave — have finished. See `wave_verdict` for the order of the checks.
"""

from __future__ import annotations

import hashlib
import operator
import random
import re
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import cache, partial
from itertools import islice
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import BigInteger, ColumnElement, cast

from otacm.campaigns.states import COMMITTED, FINAL, RETRYABLE_FAILURES, DeploymentState

MAX_CANARY_VINS = 10_000
MAX_STEPS = 20
MAX_WINDOWS = 50
PERCENT_DECIMALS = 3  # 0.001 % is one vehicle in 100,000
DEFAULT_RETRY_ON = (DeploymentState.TIMED_OUT.value, "download_failed", "network_error")

_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_CODE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def _failure_code(value: str) -> str:
    code = value.strip().lower()
    if not _CODE.fullmatch(code):
        raise ValueError(
            f"{value[:70]!r} is not a failure code (a-z, 0-9, '_', '.', '-'; 64 at most)"
        )
    return code


FailureCode = Annotated[str, AfterValidator(_failure_code)]


def exact_share(percent: float) -> Fraction:
    """The percentage as written (7.1 is 71/10, not the float next to it)."""
    return Fraction(Decimal(repr(percent)))


def _check_decimals(value: float) -> float:
    if exact_share(value).denominator > 10**PERCENT_DECIMALS:
        raise ValueError(f"{value} has more than {PERCENT_DECIMALS} decimals")
    return value


Percent = Annotated[float, AfterValidator(_check_decimals)]


def _aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (UTC), got {value.isoformat()}")


# --- the models -------------------------------------------------------------------------------


class WaveStep(BaseModel):
    """How far the rollout reaches once this wave is open: exactly one of the two, cumulative."""

    model_config = ConfigDict(extra="forbid")

    percent: Percent | None = Field(default=None, gt=0, le=100, description="Of all vehicles")
    count: int | None = Field(default=None, ge=1, le=100_000_000, description="Vehicles")

    @model_validator(mode="after")
    def _one_of(self) -> WaveStep:
        if (self.percent is None) == (self.count is None):
            raise ValueError("a step gives either percent or count")
        return self

    def __str__(self) -> str:
        return f"{self.percent:g} %" if self.percent is not None else f"{self.count} vehicles"


class WavePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_vins: list[str] = Field(
        default_factory=list, max_length=MAX_CANARY_VINS, description="Wave 0, when given"
    )
    steps: list[WaveStep] = Field(
        default_factory=lambda: [WaveStep(percent=p) for p in (1, 10, 50, 100)],
        min_length=1,
        max_length=MAX_STEPS,
        description="Cumulative; growing; the last is 100 %",
    )
    soak_time: timedelta = Field(
        default=timedelta(hours=1),
        ge=timedelta(0),
        le=timedelta(days=30),
        description="From the success threshold being met to the next wave",
    )
    success_threshold_percent: Percent = Field(
        default=95, gt=0, le=100, description="Succeeded share of the wave needed to advance"
    )
    failure_threshold_percent: Percent = Field(
        default=10, ge=0, le=100, description="Failed share of finished above which it pauses"
    )
    failure_min_finished: int = Field(
        default=10, ge=1, le=1_000_000, description="Finished deployments before that applies"
    )

    @field_validator("canary_vins")
    @classmethod
    def _vins(cls, value: list[str]) -> list[str]:
        vins = list(dict.fromkeys(v.strip().upper() for v in value))
        for vin in vins:
            if not _VIN.fullmatch(vin):
                raise ValueError(f"{vin[:40]!r} is not a VIN (17 characters, ISO 3779 alphabet)")
        return vins

    @field_validator("steps")
    @classmethod
    def _growing(cls, steps: list[WaveStep]) -> list[WaveStep]:
        last: dict[str, tuple[int, float]] = {}
        for i, step in enumerate(steps):
            kind, size = ("percent", step.percent) if step.count is None else ("count", step.count)
            assert size is not None
            if kind in last and size <= last[kind][1]:
                j = last[kind][0]
                raise ValueError(
                    f"steps[{i}] ({step}) must be above steps[{j}] ({steps[j]}): steps are "
                    "cumulative"
                )
            last[kind] = (i, size)
        if steps[-1].percent != 100:
            raise ValueError(
                f"the last step is {steps[-1]}; it must be 100 % so that every vehicle gets a wave"
            )
        return steps

    @property
    def wave_count(self) -> int:
        return len(self.steps) + (1 if self.canary_vins else 0)


class RetryPolicy(BaseModel):
    """Per vehicle: a retryable failure is tried again after `base * 2**(attempt - 1)`, capped,
    minus up to `jitter_percent` of that delay."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=20, description="Including the first")
    retry_on: list[FailureCode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        max_length=100,
        description="Failure codes worth another attempt; timed_out stands for a timeout",
    )
    backoff_base: timedelta = Field(
        default=timedelta(minutes=5), ge=timedelta(seconds=1), le=timedelta(days=1)
    )
    backoff_cap: timedelta = Field(
        default=timedelta(hours=6), ge=timedelta(seconds=1), le=timedelta(days=7)
    )
    jitter_percent: Percent = Field(default=0, ge=0, le=100)

    @field_validator("retry_on")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("backoff_cap")
    @classmethod
    def _cap(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        base = info.data.get("backoff_base")
        if base is not None and value < base:
            raise ValueError(f"backoff_cap {value} is below backoff_base {base}")
        return value


class Timeouts(BaseModel):
    """How long the server waits on a deployment before it counts as `timed_out`."""

    model_config = ConfigDict(extra="forbid")

    in_progress: timedelta = Field(
        default=timedelta(hours=2),
        ge=timedelta(minutes=1),
        le=timedelta(days=7),
        description="accepted … installed without moving on for longer than this",
    )
    offered: timedelta | None = Field(
        default=None,
        ge=timedelta(minutes=1),
        le=timedelta(days=90),
        description="An offer unanswered for longer than this; none: wait (the end time ends it)",
    )


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_WEEKDAYS = list(Weekday)  # in date.weekday() order


@cache
def _zone_names() -> frozenset[str]:
    # Names, not files: `localtime` is whatever zone this server happens to be in.
    return frozenset(available_timezones() - {"localtime"})


class MaintenanceWindow(BaseModel):
    """Weekly: on each of `days`, from `start` local time for `duration` of wall-clock time.

    The day is the one the window opens on, so Fri 22:00 for 8 h closes Saturday 06:00. Both ends
    are wall times in `timezone` (22:00 for 8 h ends at 06:00 also on a DST night, after 7 or 9
    hours): a wall time that occurs twice counts at its first occurrence, one the clock skips at
    the moment the clock jumps past it. A window is half-open: open at its start, shut at its end.
    """

    model_config = ConfigDict(extra="forbid")

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: time = Field(description="Local wall time, without a zone")
    duration: timedelta = Field(gt=timedelta(0), le=timedelta(days=7))
    timezone: str = Field(min_length=1, max_length=64, description="IANA, e.g. Europe/Berlin")

    @field_validator("days", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v.strip().lower() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("days")
    @classmethod
    def _ordered(cls, value: list[Weekday]) -> list[Weekday]:
        return sorted(set(value), key=_WEEKDAYS.index)

    @field_validator("start")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("start is a local wall time; give its zone in timezone")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in _zone_names():
            raise ValueError(f"{value[:64]!r} is not an IANA time zone (e.g. Europe/Berlin)")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    waves: WavePlan = Field(default_factory=WavePlan)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    maintenance_windows: list[MaintenanceWindow] = Field(
        default_factory=list, max_length=MAX_WINDOWS, description="None: offers at any time"
    )
    dynamic: bool = Field(
        default=False, description="Vehicles that become eligible while it runs join it"
    )


# --- waves ------------------------------------------------------------------------------------

# A prime with P ≡ 2 (mod 3), so x -> x**3 permutes 0..P-1, and P*P + P < 2**63, so the SQL form
# never overflows a BIGINT on PostgreSQL or SQLite.
_P = 2_999_999_777
_MAX_KEY = 2**63  # vehicle keys are BIGINT ids


@dataclass(frozen=True, slots=True)
class SpreadOrder:
    """Vehicles of one campaign in a scattered order: by `key(id)`, ties (ids P apart) by id.

    key(v) = ((x**3 mod P) * c + d) mod P with x = (v * a + b) mod P: a permutation of 0..P-1
    keyed by the campaign, nonlinear so that consecutive ids land far apart."""

    a: int
    b: int
    c: int
    d: int

    def key(self, vehicle_key: int) -> int:
        x = (vehicle_key * self.a + self.b) % _P
        return (x * x * x * self.c + self.d) % _P

    def expression(self, column: ColumnElement[int]) -> ColumnElement[int]:
        """The same key as an SQL expression over an integer column (PostgreSQL and SQLite),
        reduced after each product so no step leaves BIGINT; rank by it, then by the id."""
        x = ((cast(column, BigInteger) % _P) * self.a + self.b) % _P
        return ((((x * x) % _P) * x % _P) * self.c + self.d) % _P


def spread_order(campaign_id: int) -> SpreadOrder:
    digest = hashlib.blake2b(f"otacm.waves:{campaign_id}".encode(), digest_size=32).digest()
    a, b, c, d = (int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8))
    return SpreadOrder(a=1 + a % (_P - 1), b=b % _P, c=1 + c % (_P - 1), d=d % _P)


def wave_bounds(total: int, plan: WavePlan, canary: int = 0) -> list[int]:
    """Cumulative wave ends: wave w holds ranks `bounds[w-1]` (0 for w = 0) up to `bounds[w]`,
    with the `canary` vehicles ranked first. The last bound is `total`."""
    if not 0 <= canary <= total:
        raise ValueError(f"canary {canary} is not within 0..{total} vehicles")
    if canary and not plan.canary_vins:
        raise ValueError("canary vehicles given for a plan without canary_vins")
    bounds = [canary] if plan.canary_vins else []
    reached = canary
    for step in plan.steps:
        if step.count is not None:
            wanted = min(total, step.count)
        else:
            share = exact_share(step.percent or 0) / 100
            wanted = -(-total * share.numerator // share.denominator)  # rounded up
        reached = max(reached, wanted)
        bounds.append(reached)
    return bounds


def wave_for_rank(rank: int, bounds: Sequence[int]) -> int:
    """The wave of the vehicle at 0-based `rank` (canary first, then `SpreadOrder`)."""
    if not 0 <= rank < bounds[-1]:
        raise ValueError(f"rank {rank} is not within 0..{bounds[-1] - 1}")
    return bisect_right(bounds, rank)


def _ranked(vehicle_keys: Sequence[int], order: SpreadOrder, wide: bool) -> list[int]:
    """Per vehicle an int that sorts like (spread key, id), the same for the same vehicle."""
    a, b, c, d, p = order.a, order.b, order.c, order.d, _P
    if wide:  # ids from P on can share a key: the id goes below it
        return [((((x := (v * a + b) % p) * x * x * c + d) % p) << 64) | v for v in vehicle_keys]
    # Below P the key alone is unique (a permutation of 0..P-1): smaller ints sort faster.
    return [((x := (v * a + b) % p) * x * x * c + d) % p for v in vehicle_keys]


def assign_waves(
    vehicle_keys: Sequence[int],
    plan: WavePlan,
    *,
    campaign_id: int,
    canary: Collection[int] = frozenset(),
) -> list[int]:
    """The wave of each of `vehicle_keys` (unique ids ≥ 0), in their order.

    `canary` are the ids of the plan's canary vehicles; those not among `vehicle_keys` are not
    part of the campaign and are left out. The result depends only on the set of ids, the plan
    and the campaign, never on the order of `vehicle_keys`. Equal to ranking by `wave_bounds`
    and `SpreadOrder` in SQL."""
    if canary and not plan.canary_vins:
        raise ValueError("canary vehicles given for a plan without canary_vins")
    if not vehicle_keys:
        return []
    highest = max(vehicle_keys)
    if min(vehicle_keys) < 0 or highest >= _MAX_KEY:
        raise ValueError("vehicle keys are BIGINT ids in 0..2**63-1")
    order = spread_order(campaign_id)
    wide = highest >= _P
    ranked = _ranked(vehicle_keys, order, wide)
    # Only ids in range can be among the vehicles (and only those rank like one of them).
    in_canary = set(_ranked([v for v in canary if 0 <= v <= highest], order, wide))
    rest = sorted(k for k in ranked if k not in in_canary) if in_canary else sorted(ranked)
    canaries = len(ranked) - len(rest)
    if any(map(operator.eq, rest, islice(rest, 1, None))) or (
        in_canary and len({k for k in ranked if k in in_canary}) != canaries
    ):
        raise ValueError("vehicle_keys lists a vehicle twice")
    offset = 1 if plan.canary_vins else 0
    ends = [end - canaries for end in wave_bounds(len(ranked), plan, canaries)[offset:-1]]
    # A vehicle's wave is the number of earlier waves whose last key is below its own.
    lasts = [rest[end - 1] if end else -1 for end in ends]
    if not offset:
        return list(map(partial(bisect_left, lasts), ranked))
    return [0 if k in in_canary else 1 + bisect_left(lasts, k) for k in ranked]


# --- verdicts ---------------------------------------------------------------------------------

_WITHDRAWN = FINAL - {DeploymentState.SUCCEEDED}


@dataclass(frozen=True, slots=True)
class WaveCounts:
    """A wave's deployments by outcome (module docstring); `unfinished` is what remains."""

    total: int
    succeeded: int = 0
    failed: int = 0
    withdrawn: int = 0

    def __post_init__(self) -> None:
        parts = (self.succeeded, self.failed, self.withdrawn)
        if min(self.total, *parts) < 0 or sum(parts) > self.total:
            raise ValueError(f"inconsistent wave counts: {self}")

    @classmethod
    def from_states(
        cls, by_state: Mapping[DeploymentState, int], *, retrying: int = 0
    ) -> WaveCounts:
        """`retrying`: deployments in a retryable failure state with a retry scheduled."""
        failures = sum(by_state.get(s, 0) for s in RETRYABLE_FAILURES)
        if not 0 <= retrying <= failures:
            raise ValueError(f"retrying {retrying} is not within 0..{failures} failures")
        return cls(
            total=sum(by_state.values()),
            succeeded=by_state.get(DeploymentState.SUCCEEDED, 0),
            failed=failures - retrying,
            withdrawn=sum(by_state.get(s, 0) for s in _WITHDRAWN),
        )

    @property
    def participants(self) -> int:
        return self.total - self.withdrawn

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def unfinished(self) -> int:
        return self.participants - self.finished


class Action(StrEnum):
    ADVANCE = "advance"  # open the next wave
    WAIT = "wait"
    PAUSE = "pause"  # pause the campaign and raise an alert
    COMPLETE = "complete"  # the last wave is done: the campaign is finished


class VerdictReason(StrEnum):
    EMPTY_WAVE = "empty_wave"
    FAILURE_THRESHOLD = "failure_threshold_exceeded"
    BELOW_SUCCESS_THRESHOLD = "finished_below_success_threshold"
    IN_PROGRESS = "in_progress"
    SOAKING = "soaking"
    SUCCESS_THRESHOLD = "success_threshold_met"
    RESUMED = "finished_after_resume"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: VerdictReason
    # The wave may advance once its soak time is over: the engine keeps the first time it sees
    # this as `threshold_met_at`, and forgets it should it turn false again.
    qualified: bool = False
    soak_ends_at: datetime | None = None


def success_met(counts: WaveCounts, plan: WavePlan) -> bool:
    share = exact_share(plan.success_threshold_percent)
    return counts.participants > 0 and counts.succeeded * 100 >= share * counts.participants


def failure_exceeded(
    counts: WaveCounts, plan: WavePlan, resumed_with: WaveCounts | None = None
) -> bool:
    """Failed share of finished above the threshold, counting only what finished after
    `resumed_with` (the counts when an operator resumed the wave) when given."""
    before = resumed_with or WaveCounts(total=0)
    finished = max(0, counts.finished - before.finished)
    failed = max(0, counts.failed - before.failed)
    needed = min(plan.failure_min_finished, counts.participants - before.finished)
    share = exact_share(plan.failure_threshold_percent)
    return needed > 0 and finished >= needed and failed * 100 > share * finished


def wave_verdict(
    counts: WaveCounts,
    plan: WavePlan,
    *,
    wave: int,
    now: datetime,
    threshold_met_at: datetime | None = None,
    resumed_with: WaveCounts | None = None,
) -> Verdict:
    """What to do with the open wave `wave`, in this order:

    1. an empty wave advances (completes, if last) at once;
    2. failure threshold exceeded → pause (after a resume: by what finished since, `resumed_with`);
    3. the last wave completes when nothing is unfinished, and waits until then;
    4. an earlier wave *qualifies* when the success threshold is met, or when it has finished
       after an operator resumed it (resuming accepts what it did); finished without
       qualifying → pause, an operator decides; else wait;
    5. a qualified wave advances once `soak_time` has passed since `threshold_met_at` (now, if
       not yet recorded) — at once when none of it succeeded: there is nothing to watch.
    """
    _aware("now", now)
    if not 0 <= wave < plan.wave_count:
        raise ValueError(f"wave {wave} is not within 0..{plan.wave_count - 1}")
    last = wave == plan.wave_count - 1
    if counts.total == 0:
        return Verdict(Action.COMPLETE if last else Action.ADVANCE, VerdictReason.EMPTY_WAVE, True)
    if failure_exceeded(counts, plan, resumed_with):
        return Verdict(Action.PAUSE, VerdictReason.FAILURE_THRESHOLD)
    finished = counts.unfinished == 0
    if last:
        if finished:
            return Verdict(Action.COMPLETE, VerdictReason.FINISHED)
        return Verdict(Action.WAIT, VerdictReason.IN_PROGRESS)
    met = success_met(counts, plan)
    if not met and not (finished and resumed_with is not None):
        if finished:
            return Verdict(Action.PAUSE, VerdictReason.BELOW_SUCCESS_THRESHOLD)
        return Verdict(Action.WAIT, VerdictReason.IN_PROGRESS)
    reason = VerdictReason.SUCCESS_THRESHOLD if met else VerdictReason.RESUMED
    if counts.succeeded == 0 or not plan.soak_time:
        return Verdict(Action.ADVANCE, reason, True)
    if threshold_met_at is not None:
        _aware("threshold_met_at", threshold_met_at)
    ends = (threshold_met_at or now) + plan.soak_time
    if now >= ends:
        return Verdict(Action.ADVANCE, reason, True, ends)
    return Verdict(Action.WAIT, VerdictReason.SOAKING, True, ends)


# --- retries and timeouts ---------------------------------------------------------------------


def backoff(attempt: int, policy: RetryPolicy) -> timedelta:
    """The delay after failed attempt `attempt` (1-based), before jitter."""
    if attempt < 1:
        raise ValueError(f"attempt {attempt} is not 1 or more")
    # 2**20 seconds is beyond any cap, and keeps the product inside timedelta's range.
    return min(policy.backoff_cap, policy.backoff_base * (1 << min(attempt - 1, 20)))


def next_retry_at(
    attempt: int,
    failed_at: datetime,
    policy: RetryPolicy,
    code: str,
    *,
    key: int | str = 0,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after attempt `attempt` failed with `code`; None when the code is not
    retryable or that was the last attempt. Jitter takes up to `jitter_percent` off the delay,
    drawn from `rng`, or else derived from (`key`, `attempt`) — pass the deployment id, and a
    re-run of the same engine step computes the same time."""
    _aware("failed_at", failed_at)
    delay = backoff(attempt, policy)
    if attempt >= policy.max_attempts or code.strip().lower() not in policy.retry_on:
        return None
    if policy.jitter_percent:
        if rng is not None:
            draw = rng.random()
        else:
            digest = hashlib.blake2b(f"{key}:{attempt}".encode(), digest_size=8).digest()
            draw = int.from_bytes(digest, "big") / 2**64
        delay -= delay * (policy.jitter_percent / 100 * draw)
    return failed_at + delay


def timeout_for(state: DeploymentState, timeouts: Timeouts) -> timedelta | None:
    """How long `state` may last; None when no clock runs (pending, postponed, finished)."""
    if state in COMMITTED:
        return timeouts.in_progress
    return timeouts.offered if state is DeploymentState.OFFERED else None


def is_timed_out(
    state: DeploymentState, state_entered_at: datetime, now: datetime, timeouts: Timeouts
) -> bool:
    """Whether the deployment has been in `state` for longer than its timeout. Pass the time of
    the last progress report instead of `state_entered_at` to let a long download live on."""
    _aware("state_entered_at", state_entered_at)
    _aware("now", now)
    limit = timeout_for(state, timeouts)
    return limit is not None and now - state_entered_at > limit


# --- maintenance windows ----------------------------------------------------------------------


def _first_instant(local: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the wall clock in `zone` reads `local` or later."""
    early = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    late = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if early <= late:  # it exists: once, or twice (fold=0 is the first time)
        return early
    # In a gap: fold=1 reads the clock before the jump, fold=0 after. Find the jump (whole
    # seconds, like every transition in the tz database).
    low, high = int(late.timestamp()), int(early.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        wall = datetime.fromtimestamp(middle, zone).replace(tzinfo=None)
        low, high = (low, middle) if wall >= local else (middle, high)
    return datetime.fromtimestamp(high, UTC)


def _occurrence(window: MaintenanceWindow, day: date) -> tuple[datetime, datetime] | None:
    if _WEEKDAYS[day.weekday()] not in window.days:
        return None
    opens = datetime.combine(day, window.start)
    start = _first_instant(opens, window.zone)
    end = _first_instant(opens + window.duration, window.zone)
    return (start, end) if end > start else None  # a window inside a skipped hour is empty


def _occurrences(
    window: MaintenanceWindow, now: datetime, first: int, last: int
) -> list[tuple[datetime, datetime]]:
    today = now.astimezone(window.zone).date()
    days = (today + timedelta(days=n) for n in range(first, last + 1))
    return [o for o in map(partial(_occurrence, window), days) if o is not None]


def in_window(now: datetime, windows: Sequence[MaintenanceWindow]) -> bool:
    """Whether offers may be made at `now`: inside a window, or always when there are none."""
    _aware("now", now)
    return not windows or any(
        start <= now < end
        for w in windows
        for start, end in _occurrences(w, now, -(w.duration.days + 2), 0)
    )


def current_window_end(now: datetime, windows: Sequence[MaintenanceWindow]) -> datetime | None:
    """When the window open at `now` closes (the latest end, windows overlapping); None when
    no window is open, or there are none (always open)."""
    _aware("now", now)
    ends = [
        end
        for w in windows
        for start, end in _occurrences(w, now, -(w.duration.days + 2), 0)
        if start <= now < end
    ]
    return max(ends, default=None)


def next_window_start(now: datetime, windows: Sequence[MaintenanceWindow]) -> datetime | None:
    """The first window opening after `now` (UTC); None without windows (always open)."""
    _aware("now", now)
    starts = [s for w in windows for s, _ in _occurrences(w, now, -1, 15) if s > now]
    return min(starts, default=None)
