"""Builders and helpers shared by the TUF tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from otacm.db import make_session_factory, unit_of_work
from otacm.security.tuf.repository import TargetSpec

PASSPHRASE = "a long enough test passphrase"
# A fixed clock for tests that do not involve a client (clients check against the real time).
T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A unit of work that, on SQLite, takes the write lock at BEGIN, as writers of the
    repository should."""
    factory = make_session_factory(engine.execution_options(sqlite_begin="IMMEDIATE"))
    with unit_of_work(factory) as session:
        yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    with unit_of_work(make_session_factory(engine)) as session:
        yield session


def target(
    update_id: int = 7, filename: str = "bcm-4.2.0.bin", content: bytes = b"firmware", **custom: Any
) -> TargetSpec:
    return TargetSpec(
        path=f"updates/{update_id}/{filename}",
        length=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        custom={
            "update_id": update_id,
            "ecu_type": "BCM",
            "hardware_ids": ["5Q0937084"],
            "release_counter": 3,
            **custom,
        },
    )
