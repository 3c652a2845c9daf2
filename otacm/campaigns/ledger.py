"""The deployment ledger: every applied move of a deployment is written, in the transaction
that moves it, as a history event and as tally deltas.

- `deployment_events` is each deployment's history: when, which event, from which state to
  which, the attempt, the failure code, and whether the vehicle, the engine or an operator
  caused it (`GET /api/v1/campaigns/{id}/deployments/{deployment_id}`).
- `deployment_tallies` holds signed deltas per (campaign, wave, state, failure code): −1 for the
  state left, +1 for the state entered. A campaign's progress is their sum (`counts`), read
  without touching its deployments, so `GET /api/v1/campaigns/{id}` costs the same for a hundred
  vehicles or a million. Appending, rather than updating one counter row per state, keeps
  vehicles that report at the same moment from queueing on a hot row; the engine folds a
  campaign's deltas into one row per key (`compact`) once they pile up.

Moves come one at a time (`record`, from `deployments.apply_event`) or in bulk (`move_many`:
timeouts, retries, expiry, cancellation). A bulk move locks the rows it moves and reads each
one's state before moving it, so the tallies match what was moved while vehicles report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from otacm.campaigns.models import Deployment, DeploymentEventRecord, DeploymentTally
from otacm.campaigns.states import (
    RETRYABLE_FAILURES,
    TRANSITIONS,
    DeploymentEvent,
    DeploymentState,
)
from otacm.db import is_postgresql

# Deltas a campaign may gather before the engine folds them.
COMPACT_AFTER = 2_000
# Ids bound per statement on SQLite (its limit is 32,766 variables).
_SQLITE_CHUNK = 20_000

TallyKey = tuple[int, str, str | None]  # wave, state, failure code


class Source(StrEnum):
    VEHICLE = "vehicle"
    ENGINE = "engine"
    OPERATOR = "operator"


def _add_deltas(session: Session, campaign_id: int, deltas: Mapping[TallyKey, int]) -> None:
    rows = [
        {"campaign_id": campaign_id, "wave": w, "state": s, "failure_code": c, "delta": d}
        for (w, s, c), d in deltas.items()
        if d
    ]
    if rows:
        session.execute(insert(DeploymentTally), rows)


def record(
    session: Session,
    deployment: Deployment,
    *,
    event: DeploymentEvent,
    before: tuple[str, str | None],
    now: datetime,
    source: Source,
    detail: str | None = None,
) -> None:
    """Write the move `deployment` just made from `before` (its state and failure code)."""
    session.add(
        DeploymentEventRecord(
            deployment_id=deployment.id,
            campaign_id=deployment.campaign_id,
            at=now,
            event=event.value,
            from_state=before[0],
            to_state=deployment.state,
            attempt=deployment.attempts,
            failure_code=deployment.failure_code,
            detail=detail,
            source=source.value,
        )
    )
    deltas: Counter[TallyKey] = Counter()
    deltas[(deployment.wave, before[0], before[1])] -= 1
    deltas[(deployment.wave, deployment.state, deployment.failure_code)] += 1
    _add_deltas(session, deployment.campaign_id, deltas)


def record_launch(session: Session, campaign_id: int, wave_sizes: Mapping[int, int]) -> None:
    """A launch wrote every deployment `pending`, `wave_sizes[wave]` of them per wave."""
    _add_deltas(session, campaign_id, {(w, "pending", None): n for w, n in wave_sizes.items()})


def _id_chunks(session: Session, ids: Sequence[int]) -> Iterator[ColumnElement[bool]]:
    """`Deployment.id` among `ids`: one array parameter on PostgreSQL, chunks on SQLite."""
    if is_postgresql(session.get_bind().dialect):
        yield Deployment.id == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger)))
        return
    for start in range(0, len(ids), _SQLITE_CHUNK):
        yield Deployment.id.in_(ids[start : start + _SQLITE_CHUNK])


def move_many(
    session: Session,
    campaign_id: int,
    conditions: Sequence[ColumnElement[bool]],
    event: DeploymentEvent,
    values: Mapping[str, Any],
    now: datetime,
    source: Source,
) -> int:
    """Apply `event` to the campaign's deployments matching `conditions` by setting `values`
    (the new `state` among them, as the state machine would for each), with their history and
    tallies; return how many moved. The conditions must select only deployments the event
    moves: this is the bulk form of `deployments.apply_event` for the engine and operators."""
    query = select(Deployment.id, Deployment.wave, Deployment.state, Deployment.failure_code).where(
        Deployment.campaign_id == campaign_id, *conditions
    )
    if is_postgresql(session.get_bind().dialect):
        # Locked as read: a vehicle's report on one of them waits for this transaction, and
        # what is counted below is exactly what the UPDATE moves.
        query = query.with_for_update()
    rows = session.execute(query).all()
    if not rows:
        return 0
    new_state = str(values["state"])
    for before in {row.state for row in rows}:
        # The state machine is the only authority on moves, in bulk too.
        if TRANSITIONS.get((DeploymentState(before), event)) != DeploymentState(new_state):
            raise ValueError(f"{event.value} does not move {before} to {new_state}")
    by_state: dict[str, list[int]] = {}
    deltas: Counter[TallyKey] = Counter()
    for deployment_id, wave, state, code in rows:
        by_state.setdefault(state, []).append(deployment_id)
        deltas[(wave, state, code)] -= 1
        deltas[(wave, new_state, values.get("failure_code", code))] += 1
    ids = [row[0] for row in rows]
    for chunk in _id_chunks(session, ids):
        session.execute(
            update(Deployment)
            .where(chunk)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    for before, state_ids in by_state.items():
        for chunk in _id_chunks(session, state_ids):
            session.execute(
                insert(DeploymentEventRecord).from_select(
                    [
                        "deployment_id",
                        "campaign_id",
                        "at",
                        "event",
                        "from_state",
                        "to_state",
                        "attempt",
                        "failure_code",
                        "source",
                    ],
                    select(
                        Deployment.id,
                        Deployment.campaign_id,
                        literal(now, DeploymentEventRecord.at.type),
                        literal(event.value),
                        literal(before),
                        Deployment.state,
                        Deployment.attempts,
                        Deployment.failure_code,
                        literal(source.value),
                    ).where(chunk),
                )
            )
    _add_deltas(session, campaign_id, deltas)
    return len(rows)


def counts(session: Session, campaign_id: int) -> dict[TallyKey, int]:
    """How many of the campaign's deployments are in each (wave, state, failure code)."""
    query = (
        select(
            DeploymentTally.wave,
            DeploymentTally.state,
            DeploymentTally.failure_code,
            func.sum(DeploymentTally.delta),
        )
        .where(DeploymentTally.campaign_id == campaign_id)
        .group_by(DeploymentTally.wave, DeploymentTally.state, DeploymentTally.failure_code)
    )
    return {(w, s, c): int(n) for w, s, c, n in session.execute(query) if n}


def retrying(session: Session, campaign_id: int, wave: int | None = None) -> int:
    """Failures of the campaign (or of one wave) with a retry scheduled: not finished yet.
    Not a tally (scheduling a retry is no move), but few rows, found by index."""
    query = select(func.count()).where(
        Deployment.campaign_id == campaign_id,
        Deployment.state.in_([s.value for s in RETRYABLE_FAILURES]),
        Deployment.next_attempt_at.is_not(None),
    )
    if wave is not None:
        query = query.where(Deployment.wave == wave)
    return int(session.scalar(query) or 0)


def wave_counts(session: Session, campaign_id: int, wave: int) -> dict[str, int]:
    """How many of the wave's deployments are in each state."""
    found: dict[str, int] = {}
    for (number, state, _), count in counts(session, campaign_id).items():
        if number == wave:
            found[state] = found.get(state, 0) + count
    return found


def compact(session: Session, campaign_id: int) -> bool:
    """Fold the campaign's deltas into one row per key once there are more than
    `COMPACT_AFTER`. The rows summed are the rows deleted (DELETE … RETURNING), so a delta
    committed meanwhile is never lost. The caller holds the campaign (the engine's claim)."""
    gathered = session.scalar(
        select(func.count()).select_from(
            select(DeploymentTally.id)
            .where(DeploymentTally.campaign_id == campaign_id)
            .limit(COMPACT_AFTER + 1)
            .subquery()
        )
    )
    if (gathered or 0) <= COMPACT_AFTER:
        return False
    folded: Counter[TallyKey] = Counter()
    deleted = session.execute(
        delete(DeploymentTally)
        .where(DeploymentTally.campaign_id == campaign_id)
        .returning(
            DeploymentTally.wave,
            DeploymentTally.state,
            DeploymentTally.failure_code,
            DeploymentTally.delta,
        )
    )
    for wave, state, code, delta in deleted:
        folded[(wave, state, code)] += delta
    _add_deltas(session, campaign_id, folded)
    return True
