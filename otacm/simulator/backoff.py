"""Exponential backoff with jitter: how long a vehicle waits before trying again.

A server restart or a network outage fails every vehicle's request at the same moment; if they
all tried again after the same delays they would come back in lockstep and hit the server as
one wave each time. Each delay is therefore drawn at random from the upper part of its
exponential step ("equal jitter"): the waits still grow, but a fleet spreads out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 1.0  # seconds: the first wait's upper bound
    factor: float = 2.0  # each failure multiplies the bound by this
    maximum: float = 300.0  # seconds: the bound never grows beyond this
    jitter: float = 0.5  # fraction of the bound drawn at random (0: no jitter, 1: full jitter)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError("backoff needs initial > 0, factor >= 1 and maximum >= initial")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter is a fraction between 0 and 1")

    def bound(self, failures: int) -> float:
        """The longest wait after `failures` failures in a row (1 for the first)."""
        if failures < 1:
            return 0.0
        # Capped exponent first: factor ** 10_000 would overflow a float.
        steps = min(failures - 1, 64)
        return float(min(self.maximum, self.initial * self.factor**steps))

    def delay(self, failures: int, rng: random.Random) -> float:
        """A wait after `failures` failures in a row, in [bound * (1 - jitter), bound]."""
        bound = self.bound(failures)
        return bound - rng.uniform(0.0, bound * self.jitter)


@dataclass(slots=True)
class Backoff:
    """The failures in a row of one kind of request, and the wait they call for."""

    policy: BackoffPolicy
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return self.policy.delay(self.failures, self.rng)

    def reset(self) -> None:
        """A success: the next failure starts from the first step again."""
        self.failures = 0
