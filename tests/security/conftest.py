"""Security test settings: Argon2 at a test-sized cost.

Production hashing costs ~150 ms per password, and these tests hash and check passwords a few
hundred times. Every test here still hashes with Argon2id through `otacm.security.service`,
only with the smallest cost parameters; a test marked `real_argon2` keeps the shipped ones.
"""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from otacm.security import service


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_argon2: hash passwords with otacm's own Argon2 cost parameters"
    )


@pytest.fixture(autouse=True)
def cheap_argon2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("real_argon2") is None:
        monkeypatch.setattr(
            service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        )
