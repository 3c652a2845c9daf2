"""The rollout policy: validation, the wave split (in memory and in SQL), wave verdicts at every
threshold, retry backoff, timeouts and maintenance windows across DST changes and midnight."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import BigInteger, Column, Engine, MetaData, Table, select

from otacm.campaigns.policy import (
    Action,
    MaintenanceWindow,
    RetryPolicy,
    RolloutPolicy,
    Timeouts,
    Verdict,
    VerdictReason,
    WaveCounts,
    WavePlan,
    Weekday,
    assign_waves,
    backoff,
    failure_exceeded,
    in_window,
    is_timed_out,
    next_retry_at,
    next_window_start,
    spread_order,
    success_met,
    timeout_for,
    wave_bounds,
    wave_for_rank,
    wave_verdict,
)
from otacm.campaigns.states import COMMITTED, DeploymentState

S = DeploymentState
P = 2_999_999_777  # the modulus of the spread order
CANARY = ["1HGCM82633A004352"]
T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[tuple[Any, ...], str]:
    (first, *_) = exc.value.errors()
    return first["loc"], first["msg"]


def steps(*sizes: float | str) -> list[dict[str, float]]:
    """`steps(1, 10, "500", 100)`: numbers are percents, strings are counts."""
    return [{"count": int(s)} if isinstance(s, str) else {"percent": s} for s in sizes]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"steps": steps(10, 5, 100)}, ("steps",), "steps[1] (5 %) must be above steps[0]"),
        ({"steps": steps(10, 10, 100)}, ("steps",), "steps[1] (10 %) must be above steps[0]"),
        ({"steps": steps("50", 10, "20", 100)}, ("steps",), "steps[2] (20 vehicles)"),
        ({"steps": steps(1, 50)}, ("steps",), "the last step is 50 %; it must be 100 %"),
        ({"steps": steps(1, "5000")}, ("steps",), "the last step is 5000 vehicles"),
        ({"steps": steps(100, 100)}, ("steps",), "steps[1] (100 %) must be above"),
        ({"steps": []}, ("steps",), "at least 1 item"),
        ({"steps": [{"percent": 1, "count": 5}, {"percent": 100}]}, ("steps", 0), "either"),
        ({"steps": [{}, {"percent": 100}]}, ("steps", 0), "either percent or count"),
        ({"steps": steps(0, 100)}, ("steps", 0, "percent"), "greater than 0"),
        ({"steps": steps(0.0005, 100)}, ("steps", 0, "percent"), "more than 3 decimals"),
        ({"steps": steps(101)}, ("steps", 0, "percent"), "less than or equal to 100"),
        ({"steps": [{"count": 0}, {"percent": 100}]}, ("steps", 0, "count"), "greater than"),
        ({"steps": [{"size": 3}, {"percent": 100}]}, ("steps", 0, "size"), "Extra inputs"),
        ({"canary_vins": ["1HGCM82633A00435"]}, ("canary_vins",), "'1HGCM82633A00435' is not"),
        ({"canary_vins": ["IHGCM82633A004352"]}, ("canary_vins",), "is not a VIN"),
        ({"soak_time": -1}, ("soak_time",), "greater than or equal to 0"),
        ({"soak_time": "P31D"}, ("soak_time",), "less than or equal to 30 days"),
        ({"success_threshold_percent": 0}, ("success_threshold_percent",), "greater than 0"),
        ({"success_threshold_percent": 100.5}, ("success_threshold_percent",), "less than"),
        ({"failure_threshold_percent": -1}, ("failure_threshold_percent",), "greater than"),
        ({"failure_threshold_percent": 1.2345}, ("failure_threshold_percent",), "decimals"),
        ({"failure_min_finished": 0}, ("failure_min_finished",), "greater than or equal to 1"),
        ({"waves": steps(100)}, ("waves",), "Extra inputs are not permitted"),
    ],
)
def test_wave_plan_errors_name_the_field(
    data: dict[str, Any], loc: tuple[Any], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        WavePlan.model_validate(data)
    assert error(exc)[0] == loc
    assert message in error(exc)[1]


def test_wave_plan_defaults_and_normalisation() -> None:
    plan = WavePlan()
    assert [str(s) for s in plan.steps] == ["1 %", "10 %", "50 %", "100 %"]
    assert plan.wave_count == 4
    assert plan.soak_time == timedelta(hours=1)
    plan = WavePlan.model_validate(
        {
            "canary_vins": [" 1hgcm82633a004352", "1HGCM82633A004352", "WVWZZZ1JZXW000001"],
            "steps": steps("20", 2.5, "100", 12.345, 100),
            "soak_time": "PT30M",
        }
    )
    assert plan.canary_vins == ["1HGCM82633A004352", "WVWZZZ1JZXW000001"]
    assert plan.wave_count == 6
    assert plan.soak_time == timedelta(minutes=30)
    assert WavePlan.model_validate(plan.model_dump(mode="json")) == plan


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"max_attempts": 0}, ("max_attempts",), "greater than or equal to 1"),
        ({"retry_on": ["ok", "not ok"]}, ("retry_on", 1), "'not ok' is not a failure code"),
        ({"retry_on": ["9lives"]}, ("retry_on", 0), "is not a failure code"),
        ({"backoff_base": 0}, ("backoff_base",), "greater than or equal to 1 second"),
        ({"backoff_base": 600, "backoff_cap": 60}, ("backoff_cap",), "below backoff_base"),
        ({"backoff_cap": "P8D"}, ("backoff_cap",), "less than or equal to 7 days"),
        ({"jitter_percent": 120}, ("jitter_percent",), "less than or equal to 100"),
        ({"retries": 3}, ("retries",), "Extra inputs"),
    ],
)
def test_retry_policy_errors_name_the_field(
    data: dict[str, Any], loc: tuple[Any], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        RetryPolicy.model_validate(data)
    assert error(exc)[0] == loc
    assert message in error(exc)[1]


def test_retry_codes_are_normalised() -> None:
    policy = RetryPolicy(retry_on=[" Download_Failed", "download_failed", "timed_out"])
    assert policy.retry_on == ["download_failed", "timed_out"]
    assert RetryPolicy().retry_on == ["timed_out", "download_failed", "network_error"]


WINDOW = {"days": ["mon"], "start": "22:00", "duration": "PT8H", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"days": []}, ("days",), "at least 1 item"),
        ({"days": ["mo"]}, ("days", 0), "'mon', 'tue', 'wed'"),
        ({"start": "25:00"}, ("start",), "hour value is outside expected range"),
        ({"start": "22:00+01:00"}, ("start",), "start is a local wall time"),
        ({"duration": 0}, ("duration",), "greater than 0 seconds"),
        ({"duration": "P8D"}, ("duration",), "less than or equal to 7 days"),
        ({"timezone": "Mars/Olympus"}, ("timezone",), "'Mars/Olympus' is not an IANA time zone"),
        ({"timezone": "../../etc/passwd"}, ("timezone",), "is not an IANA time zone"),
        ({"timezone": "localtime"}, ("timezone",), "'localtime' is not an IANA time zone"),
        ({"timezone": "Europe"}, ("timezone",), "'Europe' is not an IANA time zone"),
        ({"timezone": ""}, ("timezone",), "at least 1 character"),
        ({"end": "06:00"}, ("end",), "Extra inputs are not permitted"),
    ],
)
def test_window_errors_name_the_field(
    changes: dict[str, Any], loc: tuple[Any], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        MaintenanceWindow.model_validate({**WINDOW, **changes})
    assert error(exc)[0] == loc
    assert message in error(exc)[1]


def test_window_days_any_case_in_week_order() -> None:
    window = MaintenanceWindow.model_validate(
        {"days": ["FRI", "Mon", "mon"], "start": "22:30", "duration": "PT8H", "timezone": "UTC"}
    )
    assert window.days == [Weekday.MON, Weekday.FRI]
    assert window.start == time(22, 30)


def test_timeouts_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        Timeouts.model_validate({"in_progress": 30})
    assert error(exc)[0] == ("in_progress",)
    with pytest.raises(ValidationError) as exc:
        Timeouts.model_validate({"offered": "PT10S"})
    assert error(exc)[0] == ("offered",)


def test_rollout_policy_nests_field_names_and_round_trips() -> None:
    with pytest.raises(ValidationError) as exc:
        RolloutPolicy.model_validate({"waves": {"steps": steps(50)}})
    assert error(exc)[0] == ("waves", "steps")
    window = {"days": ["sat"], "start": "01:00", "duration": "PT4H", "timezone": "Europe/Berln"}
    with pytest.raises(ValidationError) as exc:
        RolloutPolicy.model_validate({"maintenance_windows": [window]})
    assert error(exc)[0] == ("maintenance_windows", 0, "timezone")
    with pytest.raises(ValidationError) as exc:
        RolloutPolicy.model_validate({"dynamic": True, "retries": {"max_attempts": 99}})
    assert error(exc)[0] == ("retries", "max_attempts")

    policy = RolloutPolicy.model_validate(
        {
            "waves": {"canary_vins": CANARY, "steps": steps("10", 25, 100)},
            "retries": {"max_attempts": 5, "retry_on": ["timed_out"], "jitter_percent": 20},
            "timeouts": {"in_progress": "PT45M", "offered": "P2D"},
            "maintenance_windows": [{**window, "timezone": "Europe/Berlin"}],
            "dynamic": True,
        }
    )
    assert RolloutPolicy.model_validate_json(policy.model_dump_json()) == policy
    assert RolloutPolicy() == RolloutPolicy.model_validate({})
    assert RolloutPolicy().dynamic is False


# --- wave bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "sizes", "canary", "bounds"),
    [
        (1000, (1, 10, 50, 100), None, [10, 100, 500, 1000]),
        (50, (1, 10, 50, 100), None, [1, 5, 25, 50]),  # rounded up: 0.5 → 1
        (1, (1, 10, 50, 100), None, [1, 1, 1, 1]),
        (0, (1, 10, 50, 100), None, [0, 0, 0, 0]),
        (1000, (7.1, 100), None, [71, 1000]),  # 7.1 % exactly, not the float next to it
        (100_000, (0.001, 99.999, 100), None, [1, 99_999, 100_000]),
        (1000, (1, 10, 100), 3, [3, 10, 100, 1000]),
        (1000, (1, 10, 100), 30, [30, 30, 100, 1000]),  # a canary above 1 %: wave 1 empty
        (1000, (1, 100), 0, [0, 10, 1000]),  # no canary vehicle took part: wave 0 empty
        (1000, ("5", 10, "200", 100), None, [5, 100, 200, 1000]),
        (1000, (50, "200", 100), None, [500, 500, 1000]),  # a count below 50 %: empty
        (30, ("50", 100), None, [30, 30]),
        (30, ("5", 100), 30, [30, 30, 30]),
    ],
)
def test_wave_bounds(
    total: int, sizes: tuple[float | str, ...], canary: int | None, bounds: list[int]
) -> None:
    plan = WavePlan.model_validate(
        {"steps": steps(*sizes), "canary_vins": CANARY if canary is not None else []}
    )
    assert wave_bounds(total, plan, canary or 0) == bounds
    assert len(bounds) == plan.wave_count


def test_wave_bounds_refuses_impossible_canaries() -> None:
    with pytest.raises(ValueError, match="without canary_vins"):
        wave_bounds(10, WavePlan(), 1)
    with pytest.raises(ValueError, match="not within 0..10"):
        wave_bounds(10, WavePlan(canary_vins=CANARY), 11)


@st.composite
def plans(draw: st.DrawFn) -> WavePlan:
    """Valid plans: growing percents (three decimals) and counts, interleaved, then 100 %."""
    percents = sorted(draw(st.sets(st.integers(1, 99_999), max_size=5)))
    counts = sorted(draw(st.sets(st.integers(1, 400), max_size=4)))
    kinds = draw(st.permutations(["p"] * len(percents) + ["c"] * len(counts)))
    taken = {"p": iter(percents), "c": iter(counts)}
    plan_steps: list[dict[str, float]] = []
    for kind in kinds:
        value = next(taken[kind])
        plan_steps.append({"percent": value / 1000} if kind == "p" else {"count": value})
    canary = draw(st.booleans())
    return WavePlan.model_validate(
        {"steps": [*plan_steps, {"percent": 100}], "canary_vins": CANARY if canary else []}
    )


@settings(max_examples=300, deadline=None)
@given(plan=plans(), total=st.integers(0, 5000), data=st.data())
def test_wave_bounds_follow_the_plan(plan: WavePlan, total: int, data: st.DataObject) -> None:
    canary = data.draw(st.integers(0, total)) if plan.canary_vins else 0
    bounds = wave_bounds(total, plan, canary)
    assert len(bounds) == plan.wave_count
    assert bounds == sorted(bounds)
    assert bounds[-1] == total
    if plan.canary_vins:
        assert bounds[0] == canary
    offset = 1 if plan.canary_vins else 0
    for i, step in enumerate(plan.steps):
        previous = bounds[offset + i - 1] if offset + i else 0
        if step.count is not None:
            wanted = min(total, step.count)
        else:
            assert step.percent is not None
            # The smallest n with n / total ≥ percent / 100, in integers.
            permille = round(step.percent * 1000)
            wanted = next(n for n in range(total + 1) if n * 100_000 >= permille * total)
        assert bounds[offset + i] == max(previous, wanted)


# --- assigning waves --------------------------------------------------------------------------


def expected_waves(
    keys: list[int], plan: WavePlan, campaign_id: int, canary: set[int]
) -> dict[int, int]:
    """The plain definition: canary first, then by (spread key, id); wave by rank."""
    order = spread_order(campaign_id)
    first = sorted(canary & set(keys))
    rest = sorted(set(keys) - canary, key=lambda v: (order.key(v), v))
    bounds = wave_bounds(len(keys), plan, len(first))
    return {v: wave_for_rank(rank, bounds) for rank, v in enumerate(first + rest)}


vehicle_ids = st.one_of(
    st.integers(0, 10_000), st.integers(0, 2**63 - 1), st.sampled_from([P - 1, P, P + 1])
)


@settings(max_examples=300, deadline=None)
@given(
    plan=plans(),
    keys=st.sets(vehicle_ids, max_size=400),
    campaign_id=st.integers(0, 2**40),
    data=st.data(),
)
def test_assign_waves_is_the_plan_in_spread_order(
    plan: WavePlan, keys: set[int], campaign_id: int, data: st.DataObject
) -> None:
    ordered = sorted(keys)
    canary: set[int] = set()
    if plan.canary_vins and ordered:
        canary = data.draw(st.sets(st.sampled_from(ordered), max_size=5))
        canary |= data.draw(st.sets(st.integers(-5, 2**63 + 5), max_size=2))  # not in it
    shuffled = data.draw(st.permutations(ordered))

    waves = assign_waves(shuffled, plan, campaign_id=campaign_id, canary=canary)

    assert len(waves) == len(shuffled)
    by_vehicle = dict(zip(shuffled, waves, strict=True))
    assert by_vehicle == expected_waves(ordered, plan, campaign_id, canary)
    # Every vehicle in exactly one wave, the sizes those of the plan, the canary first.
    bounds = wave_bounds(len(keys), plan, len(canary & keys))
    sizes = Counter(waves)
    assert [sizes[w] for w in range(plan.wave_count)] == [
        end - start for start, end in zip([0, *bounds], bounds, strict=False)
    ]
    if plan.canary_vins:
        assert {v for v, w in by_vehicle.items() if w == 0} == canary & keys
    # Deterministic, whatever the order of the input.
    again = assign_waves(ordered, plan, campaign_id=campaign_id, canary=canary)
    assert dict(zip(ordered, again, strict=True)) == by_vehicle


def test_assign_waves_of_a_larger_fleet_has_exact_sizes() -> None:
    plan = WavePlan(canary_vins=CANARY)
    keys = list(range(1, 100_001))
    waves = assign_waves(keys, plan, campaign_id=7, canary={5, 6, 7, 200_000})
    assert Counter(waves) == {0: 3, 1: 997, 2: 9000, 3: 40000, 4: 50000}
    assert [waves[4], waves[5], waves[6]] == [0, 0, 0]
    assert assign_waves(keys, plan, campaign_id=7, canary={5, 6, 7}) == waves


def test_waves_are_spread_over_the_fleet() -> None:
    """Consecutive ids (the first VINs built) do not make up a wave: each tenth of the id range
    holds about a tenth of every wave."""
    keys = list(range(1, 20_001))
    plan = WavePlan.model_validate({"steps": steps(10, 100)})
    for campaign_id in range(1, 21):
        waves = assign_waves(keys, plan, campaign_id=campaign_id)
        first = [v for v, w in zip(keys, waves, strict=True) if w == 0]
        per_block = Counter((v - 1) // 2000 for v in first)
        assert len(first) == 2000
        assert all(130 <= per_block[block] <= 270 for block in range(10)), per_block


def test_different_campaigns_pick_different_vehicles() -> None:
    keys = list(range(1, 10_001))
    plan = WavePlan.model_validate({"steps": steps(10, 100)})
    firsts = []
    for campaign_id in range(1, 11):
        waves = assign_waves(keys, plan, campaign_id=campaign_id)
        firsts.append({v for v, w in zip(keys, waves, strict=True) if w == 0})
    for i, one in enumerate(firsts):
        for other in firsts[i + 1 :]:
            # Independent draws of 1,000 out of 10,000 share about 100.
            assert len(one & other) < 200
    orders = {tuple(sorted(keys, key=spread_order(c).key)) for c in range(1, 11)}
    assert len(orders) == 10


def test_assign_waves_refuses_bad_input() -> None:
    plan = WavePlan()
    assert assign_waves([], plan, campaign_id=1) == []
    with pytest.raises(ValueError, match="twice"):
        assign_waves([1, 2, 3, 2], plan, campaign_id=1)
    with pytest.raises(ValueError, match="twice"):
        assign_waves([P + 1, 5, P + 1], plan, campaign_id=1)
    with pytest.raises(ValueError, match="twice"):
        assign_waves([1, 2, 2], WavePlan(canary_vins=CANARY), campaign_id=1, canary={2})
    with pytest.raises(ValueError, match="BIGINT"):
        assign_waves([1, -2], plan, campaign_id=1)
    with pytest.raises(ValueError, match="BIGINT"):
        assign_waves([2**63], plan, campaign_id=1)
    with pytest.raises(ValueError, match="without canary_vins"):
        assign_waves([1, 2], plan, campaign_id=1, canary={1})


def test_ids_a_modulus_apart_share_a_key_and_are_told_apart_by_id() -> None:
    order = spread_order(3)
    assert order.key(5) == order.key(5 + P)
    plan = WavePlan.model_validate({"steps": [{"count": 1}, {"percent": 100}]})
    for keys in ([5, 5 + P], [5 + P, 5]):
        waves = dict(zip(keys, assign_waves(keys, plan, campaign_id=3), strict=True))
        assert waves == {5: 0, 5 + P: 1}


def test_wave_for_rank() -> None:
    bounds = [3, 3, 10, 20]
    assert [wave_for_rank(r, bounds) for r in (0, 2, 3, 9, 10, 19)] == [0, 0, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        wave_for_rank(20, bounds)


EDGE_IDS = [0, 1, 2, 3, 999, 2**31 - 1, 2**31, 2**32 + 7, P - 1, P, P + 1, 2**62, 2**63 - 1]


def test_spread_order_in_sql_is_the_same(engine: Engine) -> None:
    """The SQL form gives the same keys and the same order on SQLite and PostgreSQL, with no
    BIGINT overflow even for the largest ids."""
    ids = EDGE_IDS + random.Random(5).sample(range(1, 10_000_000), 2000)
    table = Table("spread_ids", MetaData(), Column("v", BigInteger), prefixes=["TEMPORARY"])
    with engine.connect() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"v": v} for v in ids])
        for campaign_id in (1, 2, 123_456_789, 2**40):
            order = spread_order(campaign_id)
            key = order.expression(table.c.v)
            rows = conn.execute(select(table.c.v, key).order_by(key, table.c.v)).all()
            assert [(int(v), int(k)) for v, k in rows] == sorted(
                ((v, order.key(v)) for v in ids), key=lambda row: (row[1], row[0])
            )
        conn.rollback()


# --- verdicts ---------------------------------------------------------------------------------

PLAN = WavePlan.model_validate(
    {
        "steps": steps(10, 100),
        "soak_time": "PT1H",
        "success_threshold_percent": 95,
        "failure_threshold_percent": 10,
        "failure_min_finished": 10,
    }
)
FIRST, LAST = 0, 1


def verdict(
    total: int,
    succeeded: int = 0,
    failed: int = 0,
    withdrawn: int = 0,
    *,
    wave: int = FIRST,
    plan: WavePlan = PLAN,
    **kwargs: Any,
) -> Verdict:
    counts = WaveCounts(total, succeeded, failed, withdrawn)
    return wave_verdict(counts, plan, wave=wave, now=T0, **kwargs)


def plan_with(**changes: Any) -> WavePlan:
    return PLAN.model_copy(update=changes)


@pytest.mark.parametrize(
    ("counts", "met"),
    [
        ((20, 19), True),  # 95 % of 20
        ((20, 18), False),
        ((100, 95), True),
        ((100, 94, 6), False),
        ((20, 18, 0, 1), False),  # 18 of 19 taking part: 94.7 %
        ((20, 18, 0, 2), True),  # declined, cancelled, expired count in neither share
        ((20, 0, 0, 20), False),  # nobody took part: no evidence
        ((0,), False),
    ],
)
def test_success_threshold_is_reached_at_the_boundary(counts: tuple[int, ...], met: bool) -> None:
    assert success_met(WaveCounts(*counts), PLAN) is met


def test_success_threshold_with_decimals_is_exact() -> None:
    plan = plan_with(success_threshold_percent=99.9)
    assert success_met(WaveCounts(1000, 999), plan)
    assert not success_met(WaveCounts(1000, 998), plan)


@pytest.mark.parametrize(
    ("counts", "exceeded"),
    [
        ((100, 0, 9), False),  # 9 finished: below the minimum of 10
        ((100, 9, 1), False),  # 10 % of 10 finished: reached, not exceeded
        ((100, 8, 2), True),
        ((100, 18, 2), False),
        ((100, 17, 3), True),
        ((100, 17, 3, 50), True),  # withdrawn deployments are not finished ones
        ((5, 0, 4), False),  # a wave of 5: all 5 must finish first
        ((5, 4, 1), True),  # then the minimum is the wave: 1 of 5 is 20 %
        ((12, 0, 2, 10), True),  # 2 taking part, both finished and failed
        ((0,), False),
    ],
)
def test_failure_threshold_is_exceeded_at_the_boundary(
    counts: tuple[int, ...], exceeded: bool
) -> None:
    assert failure_exceeded(WaveCounts(*counts), PLAN) is exceeded


def test_failure_threshold_zero_pauses_on_any_failure_and_100_never() -> None:
    zero = plan_with(failure_threshold_percent=0)
    assert failure_exceeded(WaveCounts(100, 9, 1), zero)
    assert not failure_exceeded(WaveCounts(100, 10, 0), zero)
    assert not failure_exceeded(WaveCounts(100, 0, 100), plan_with(failure_threshold_percent=100))


def test_an_empty_wave_moves_on_at_once() -> None:
    assert verdict(0) == Verdict(Action.ADVANCE, VerdictReason.EMPTY_WAVE, True)
    assert verdict(0, wave=LAST).action is Action.COMPLETE


def test_a_wave_waits_then_soaks_then_advances() -> None:
    assert verdict(20, 18) == Verdict(Action.WAIT, VerdictReason.IN_PROGRESS)
    soaking = verdict(20, 19)
    assert soaking == Verdict(Action.WAIT, VerdictReason.SOAKING, True, T0 + timedelta(hours=1))
    met_at = T0 - timedelta(hours=1)
    assert verdict(20, 19, threshold_met_at=met_at + US).action is Action.WAIT
    advance = verdict(20, 19, threshold_met_at=met_at)
    assert advance == Verdict(Action.ADVANCE, VerdictReason.SUCCESS_THRESHOLD, True, T0)
    assert verdict(20, 20, threshold_met_at=met_at - timedelta(days=3)).action is Action.ADVANCE


def test_no_soak_time_advances_at_once() -> None:
    plan = plan_with(soak_time=timedelta(0))
    assert verdict(20, 19, plan=plan) == Verdict(
        Action.ADVANCE, VerdictReason.SUCCESS_THRESHOLD, True
    )


def test_failures_pause_before_anything_else() -> None:
    paused = Verdict(Action.PAUSE, VerdictReason.FAILURE_THRESHOLD)
    assert verdict(100, 8, 2) == paused
    assert verdict(100, 8, 2, wave=LAST) == paused
    assert verdict(100, 89, 11, wave=LAST) == paused  # even with nothing left to do
    assert verdict(100, 9, 1) == Verdict(Action.WAIT, VerdictReason.IN_PROGRESS)
    # A success threshold met does not hide failures.
    lenient = plan_with(success_threshold_percent=50)
    assert verdict(100, 60, 11, plan=lenient) == paused


def test_a_wave_that_finished_below_the_success_threshold_pauses() -> None:
    assert verdict(20, 18, 2) == Verdict(Action.PAUSE, VerdictReason.BELOW_SUCCESS_THRESHOLD)
    assert verdict(20, 0, 0, 20) == Verdict(Action.PAUSE, VerdictReason.BELOW_SUCCESS_THRESHOLD)
    # The last wave completes instead: there is no next wave to protect.
    assert verdict(20, 18, 2, wave=LAST) == Verdict(Action.COMPLETE, VerdictReason.FINISHED)
    assert verdict(20, 0, 0, 20, wave=LAST).action is Action.COMPLETE


def test_the_last_wave_completes_when_nothing_is_unfinished() -> None:
    assert verdict(20, 19, wave=LAST) == Verdict(Action.WAIT, VerdictReason.IN_PROGRESS)
    assert verdict(20, 19, 0, 1, wave=LAST) == Verdict(Action.COMPLETE, VerdictReason.FINISHED)
    assert verdict(20, 19, 1, wave=LAST).action is Action.COMPLETE


def test_resuming_accepts_what_the_wave_did_so_far() -> None:
    at_pause = WaveCounts(100, 10, 10)
    # Only what finished since counts against the failure threshold...
    assert verdict(100, 10, 10, resumed_with=at_pause).action is Action.WAIT
    assert verdict(100, 19, 11, resumed_with=at_pause).action is Action.WAIT  # 1 of 10
    assert verdict(100, 18, 12, resumed_with=at_pause).action is Action.PAUSE  # 2 of 10
    # ...and a finished wave below the success threshold advances (after its soak time).
    finished = verdict(100, 85, 15, resumed_with=at_pause, threshold_met_at=T0)
    assert finished == Verdict(Action.WAIT, VerdictReason.SOAKING, True, T0 + timedelta(hours=1))
    met_at = T0 - timedelta(hours=2)
    advance = verdict(100, 85, 15, resumed_with=at_pause, threshold_met_at=met_at)
    assert (advance.action, advance.reason) == (Action.ADVANCE, VerdictReason.RESUMED)
    # Nothing succeeded: nothing to watch during a soak.
    nothing = verdict(10, 0, 0, 10, resumed_with=WaveCounts(10, 0, 0, 10))
    assert nothing == Verdict(Action.ADVANCE, VerdictReason.RESUMED, True)
    # The last wave after its failure pause: completes.
    assert verdict(100, 89, 11, wave=LAST, resumed_with=WaveCounts(100, 89, 11)).action is (
        Action.COMPLETE
    )


def test_verdict_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="wave 2 is not within 0..1"):
        verdict(10, wave=2)
    with pytest.raises(ValueError, match="aware"):
        wave_verdict(WaveCounts(10), PLAN, wave=0, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="inconsistent"):
        WaveCounts(10, 5, 5, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        WaveCounts(10, -1)


def test_wave_counts_from_states() -> None:
    by_state = {
        S.PENDING: 3,
        S.OFFERED: 2,
        S.DOWNLOADING: 1,
        S.SUCCEEDED: 10,
        S.FAILED: 2,
        S.TIMED_OUT: 2,
        S.ROLLED_BACK: 1,
        S.DECLINED: 1,
        S.CANCELLED: 1,
        S.EXPIRED: 1,
    }
    counts = WaveCounts.from_states(by_state, retrying=2)
    assert counts == WaveCounts(total=24, succeeded=10, failed=3, withdrawn=3)
    assert (counts.participants, counts.finished, counts.unfinished) == (21, 13, 8)
    with pytest.raises(ValueError, match="retrying 6"):
        WaveCounts.from_states(by_state, retrying=6)


wave_counts = st.builds(
    lambda parts: WaveCounts(sum(parts), *parts[:3]),
    st.lists(st.integers(0, 60), min_size=4, max_size=4),
)


@settings(max_examples=500, deadline=None)
@given(
    counts=wave_counts,
    wave=st.sampled_from([FIRST, LAST]),
    success=st.integers(1, 100),
    failure=st.integers(0, 100),
    minimum=st.integers(1, 30),
    soak=st.sampled_from([timedelta(0), timedelta(hours=1)]),
    met_at=st.sampled_from([None, T0 - timedelta(hours=2), T0]),
)
def test_verdict_invariants(
    counts: WaveCounts,
    wave: int,
    success: int,
    failure: int,
    minimum: int,
    soak: timedelta,
    met_at: datetime | None,
) -> None:
    plan = plan_with(
        success_threshold_percent=success,
        failure_threshold_percent=failure,
        failure_min_finished=minimum,
        soak_time=soak,
    )
    result = wave_verdict(counts, plan, wave=wave, now=T0, threshold_met_at=met_at)
    if counts.total and failure_exceeded(counts, plan):
        assert result.action is Action.PAUSE
    if result.action is Action.COMPLETE:
        assert wave == LAST and counts.unfinished == 0
    if result.action is Action.ADVANCE:
        assert wave == FIRST and result.qualified
        assert counts.total == 0 or success_met(counts, plan)
    if wave == FIRST and counts.total and not failure_exceeded(counts, plan):
        assert result.qualified is success_met(counts, plan)
    if result.action is Action.WAIT and result.qualified:
        assert result.soak_ends_at is not None and result.soak_ends_at > T0


# --- retries ----------------------------------------------------------------------------------

RETRIES = RetryPolicy(
    max_attempts=8, backoff_base=timedelta(minutes=1), backoff_cap=timedelta(minutes=10)
)


def test_backoff_doubles_up_to_the_cap_until_attempts_run_out() -> None:
    delays = [next_retry_at(attempt, T0, RETRIES, "timed_out") for attempt in range(1, 9)]
    assert [d - T0 if d else None for d in delays] == [
        timedelta(minutes=m) for m in (1, 2, 4, 8, 10, 10, 10)
    ] + [None]
    assert backoff(10**6, RETRIES) == timedelta(minutes=10)


def test_only_retryable_codes_are_retried() -> None:
    assert next_retry_at(1, T0, RETRIES, "verification_failed") is None
    assert next_retry_at(1, T0, RETRIES, " Download_Failed ") == T0 + timedelta(minutes=1)
    assert next_retry_at(1, T0, RetryPolicy(max_attempts=1), "timed_out") is None
    assert next_retry_at(1, T0, RetryPolicy(retry_on=[]), "timed_out") is None


def test_jitter_takes_a_deterministic_share_off_the_delay() -> None:
    policy = RETRIES.model_copy(update={"jitter_percent": 50})
    delay = timedelta(minutes=4)
    times = [next_retry_at(3, T0, policy, "timed_out", key=k) for k in range(200)]
    assert all(t is not None and T0 + delay / 2 <= t <= T0 + delay for t in times)
    assert len(set(times)) > 150
    assert times == [next_retry_at(3, T0, policy, "timed_out", key=k) for k in range(200)]
    assert next_retry_at(3, T0, policy, "timed_out", key=7) != next_retry_at(
        4, T0, policy, "timed_out", key=7
    )
    seeded = [next_retry_at(3, T0, policy, "timed_out", rng=random.Random(9)) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert seeded[0] == T0 + delay * (1 - 0.5 * random.Random(9).random())


def test_retry_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="attempt 0"):
        next_retry_at(0, T0, RETRIES, "timed_out")
    with pytest.raises(ValueError, match="aware"):
        next_retry_at(1, datetime(2025, 1, 1), RETRIES, "timed_out")


# --- timeouts ---------------------------------------------------------------------------------


def test_in_progress_times_out_after_longer_than_the_limit() -> None:
    timeouts = Timeouts(in_progress=timedelta(minutes=30))
    for state in COMMITTED:
        assert not is_timed_out(state, T0, T0 + timedelta(minutes=30), timeouts)
        assert is_timed_out(state, T0, T0 + timedelta(minutes=30) + US, timeouts)
    assert timeout_for(S.OFFERED, timeouts) is None
    assert not is_timed_out(S.OFFERED, T0, T0 + timedelta(days=365), timeouts)


def test_an_offer_times_out_only_with_its_own_limit() -> None:
    timeouts = Timeouts(offered=timedelta(days=2))
    assert not is_timed_out(S.OFFERED, T0, T0 + timedelta(days=2), timeouts)
    assert is_timed_out(S.OFFERED, T0, T0 + timedelta(days=2) + US, timeouts)


@pytest.mark.parametrize(
    "state", sorted(set(DeploymentState) - COMMITTED - {DeploymentState.OFFERED})
)
def test_no_clock_runs_while_pending_postponed_or_finished(state: DeploymentState) -> None:
    timeouts = Timeouts(in_progress=timedelta(minutes=1), offered=timedelta(minutes=1))
    assert timeout_for(state, timeouts) is None
    assert not is_timed_out(state, T0, T0 + timedelta(days=30), timeouts)


def test_timeouts_need_aware_times() -> None:
    with pytest.raises(ValueError, match="state_entered_at must be an aware"):
        is_timed_out(S.INSTALLING, datetime(2025, 1, 1), T0, Timeouts())


# --- maintenance windows ----------------------------------------------------------------------


def window(days: str, start: str, duration: timedelta, zone: str) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate(
        {"days": days.split(), "start": start, "duration": duration, "timezone": zone}
    )


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


def open_between(windows: list[MaintenanceWindow], start: datetime, end: datetime) -> None:
    """Open from `start` (included) to `end` (excluded), shut just around."""
    assert not in_window(start - US, windows)
    assert in_window(start, windows)
    assert in_window(end - US, windows)
    assert not in_window(end, windows)


def test_no_windows_is_always_open() -> None:
    assert in_window(T0, [])
    assert next_window_start(T0, []) is None


def test_a_window_crossing_midnight_belongs_to_its_first_day() -> None:
    berlin = "Europe/Berlin"
    friday_night = [window("fri", "22:00", timedelta(hours=8), berlin)]
    open_between(friday_night, local(berlin, 2025, 6, 6, 22), local(berlin, 2025, 6, 7, 6))
    assert not in_window(local(berlin, 2025, 6, 5, 23), friday_night)  # Thursday night
    wednesday = local(berlin, 2025, 6, 4, 12)
    assert next_window_start(wednesday, friday_night) == local(berlin, 2025, 6, 6, 22)
    # Sunday night into Monday: across the end of the week.
    sunday_night = [window("sun", "23:00", timedelta(hours=2), "UTC")]
    open_between(
        sunday_night, datetime(2025, 6, 8, 23, tzinfo=UTC), datetime(2025, 6, 9, 1, tzinfo=UTC)
    )
    monday = datetime(2025, 6, 9, 0, 30, tzinfo=UTC)
    assert next_window_start(monday, sunday_night) == datetime(2025, 6, 15, 23, tzinfo=UTC)


def test_several_windows() -> None:
    windows = [
        window("mon tue wed thu fri", "01:00", timedelta(hours=4), "America/New_York"),
        window("sat sun", "00:00", timedelta(hours=24), "America/New_York"),
    ]
    friday_noon = local("America/New_York", 2025, 6, 6, 12)
    assert not in_window(friday_noon, windows)
    assert next_window_start(friday_noon, windows) == local("America/New_York", 2025, 6, 7)
    # The weekend runs into Monday's window: one stretch from Saturday 00:00 to Monday 05:00.
    open_between(
        windows,
        local("America/New_York", 2025, 6, 7),
        local("America/New_York", 2025, 6, 9, 5),
    )


@pytest.mark.parametrize(
    ("zone", "day", "start", "hours", "opens_utc", "closes_utc"),
    [
        # Berlin, spring forward 2025-03-30 02:00 → 03:00: 01:00-04:00 lasts 2 hours.
        ("Europe/Berlin", date(2025, 3, 30), "01:00", 3, (3, 30, 0, 0), (3, 30, 2, 0)),
        # Berlin, fall back 2025-10-26 03:00 → 02:00: 01:00-04:00 lasts 4 hours.
        ("Europe/Berlin", date(2025, 10, 26), "01:00", 3, (10, 25, 23, 0), (10, 26, 3, 0)),
        # Across midnight and the change: Saturday 22:00 to Sunday 06:00.
        ("Europe/Berlin", date(2025, 3, 29), "22:00", 8, (3, 29, 21, 0), (3, 30, 4, 0)),
        ("Europe/Berlin", date(2025, 10, 25), "22:00", 8, (10, 25, 20, 0), (10, 26, 5, 0)),
        # New York, spring forward 2025-03-09 02:00 → 03:00 and fall back 2025-11-02 02:00 → 01:00.
        ("America/New_York", date(2025, 3, 8), "22:00", 6, (3, 9, 3, 0), (3, 9, 8, 0)),
        ("America/New_York", date(2025, 11, 1), "22:00", 6, (11, 2, 2, 0), (11, 2, 9, 0)),
        # A start the clock skips opens when the clock jumps past it (03:00 EDT).
        ("America/New_York", date(2025, 3, 9), "02:30", 2, (3, 9, 7, 0), (3, 9, 8, 30)),
        # A start that happens twice opens the first time (01:30 EDT), ends at 03:30 EST.
        ("America/New_York", date(2025, 11, 2), "01:30", 2, (11, 2, 5, 30), (11, 2, 8, 30)),
        # An end that happens twice closes the first time (02:30 CEST).
        ("Europe/Berlin", date(2025, 10, 26), "00:00", 2.5, (10, 25, 22, 0), (10, 26, 0, 30)),
    ],
)
def test_windows_across_dst_changes_keep_their_wall_times(
    zone: str,
    day: date,
    start: str,
    hours: float,
    opens_utc: tuple[int, int, int, int],
    closes_utc: tuple[int, int, int, int],
) -> None:
    weekday = list(Weekday)[day.weekday()].value
    windows = [window(weekday, start, timedelta(hours=hours), zone)]
    opens = datetime(day.year, *opens_utc, tzinfo=UTC)
    closes = datetime(day.year, *closes_utc, tzinfo=UTC)
    open_between(windows, opens, closes)
    assert next_window_start(opens - timedelta(days=1), windows) == opens
    assert next_window_start(opens, windows) == next_window_start(
        opens + timedelta(days=6), windows
    )


def test_a_window_inside_a_skipped_hour_is_empty_that_day() -> None:
    skipped = [window("sun", "02:15", timedelta(minutes=30), "Europe/Berlin")]
    the_day = datetime(2025, 3, 30, 1, 0, tzinfo=UTC)  # 03:00 CEST, just after the jump
    assert not in_window(the_day, skipped)
    before = datetime(2025, 3, 29, 12, tzinfo=UTC)
    assert next_window_start(before, skipped) == local("Europe/Berlin", 2025, 4, 6, 2, 15)


def test_windows_need_aware_times() -> None:
    windows = [window("mon", "01:00", timedelta(hours=1), "UTC")]
    with pytest.raises(ValueError, match="aware"):
        in_window(datetime(2025, 1, 1), windows)
    with pytest.raises(ValueError, match="aware"):
        next_window_start(datetime(2025, 1, 1), windows)


ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute DST change
    "America/St_Johns",
    "Asia/Kathmandu",
    "Pacific/Chatham",
]
windows_strategy = st.lists(
    st.builds(
        lambda days, hour, minute, minutes, zone: MaintenanceWindow(
            days=days,
            start=time(hour, minute),
            duration=timedelta(minutes=minutes),
            timezone=zone,
        ),
        st.lists(st.sampled_from(list(Weekday)), min_size=1, max_size=7),
        st.integers(0, 23),
        st.sampled_from([0, 15, 30, 45, 59]),
        st.integers(1, 7 * 24 * 60),
        st.sampled_from(ZONES),
    ),
    min_size=1,
    max_size=3,
)
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(windows=windows_strategy, now=instants, data=st.data())
def test_the_next_start_is_the_end_of_a_shut_stretch(
    windows: list[MaintenanceWindow], now: datetime, data: st.DataObject
) -> None:
    following = next_window_start(now, windows)
    assert following is not None and following > now
    assert following - now <= timedelta(days=8)
    assert in_window(following, windows)
    if not in_window(now, windows):
        # Shut all the way from now to the next start.
        assert not in_window(following - US, windows)
        shut = (following - now) // US
        assert not in_window(now + US * data.draw(st.integers(0, shut - 1)), windows)
