"""Exponential backoff with jitter: growing, capped, spread out, reset by a success."""

from __future__ import annotations

import random

import pytest

from otacm.simulator.backoff import Backoff, BackoffPolicy


def test_the_bound_doubles_up_to_the_maximum() -> None:
    policy = BackoffPolicy(initial=1.0, factor=2.0, maximum=10.0)
    assert [policy.bound(n) for n in range(0, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.bound(100_000) == 10.0  # no overflow after a very long outage


def test_each_delay_lies_in_the_jittered_part_of_its_bound() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=60.0, jitter=0.5)
    rng = random.Random(3)
    for failures in range(1, 12):
        bound = policy.bound(failures)
        for _ in range(50):
            assert bound / 2 <= policy.delay(failures, rng) <= bound


def test_jitter_spreads_a_fleet_and_none_keeps_it_in_lockstep() -> None:
    jittered = BackoffPolicy(initial=8.0, maximum=8.0, jitter=0.5)
    spread = {round(jittered.delay(1, random.Random(seed)), 6) for seed in range(100)}
    assert len(spread) > 90
    exact = BackoffPolicy(initial=8.0, maximum=8.0, jitter=0.0)
    assert {exact.delay(1, random.Random(seed)) for seed in range(100)} == {8.0}


def test_a_success_starts_the_waits_from_the_first_step_again() -> None:
    backoff = Backoff(BackoffPolicy(initial=1.0, maximum=100.0, jitter=0.0))
    assert [backoff.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(
    "settings",
    [
        {"initial": 0.0},
        {"factor": 0.5},
        {"initial": 10.0, "maximum": 5.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_policies_that_make_no_sense_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**settings)
