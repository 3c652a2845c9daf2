"""Sending the outbox: a delivery round claims due messages one at a time and attempts them.

Each message goes through three steps, each its own short transaction or none:

1. claim: the next due row (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the
   write transaction serialises claims) gets a lease, `locked_until` and a fresh
   `claim_token`, and the transaction commits at once;
2. attempt: the HTTP request (or SMTP session) runs with no transaction open, so a slow
   receiver holds no lock and no connection;
3. record: the outcome is written where the row still carries this claim's token.

Several `otacm serve` and `otacm worker` processes may run rounds against one database: a
leased row is skipped by the others, so each message is attempted by one of them at a time. A
worker that dies mid-attempt leaves a lease that runs out after `LEASE`; then the message is
attempted again, with the same id (`Otacm-Delivery`), which receivers use to drop repeats.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Select, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import is_postgresql, unit_of_work, utcnow
from otacm.errors import OtacmError
from otacm.notifications import _sealing, mail, webhooks
from otacm.notifications.models import OutboxMessage, WebhookEndpoint, WebhookSecret
from otacm.notifications.outbox import Channel, Status
from otacm.notifications.webhooks import DeliveryResult, Outcome, WebhookMessage

log = logging.getLogger(__name__)

# A claim's lease: longer than the slowest attempt (10 s for each of connect, send and read).
LEASE = timedelta(minutes=2)
ROUND_LIMIT = 500  # messages per round at most, so that one round cannot run for ever
ERROR_CHARS = 1000  # of an attempt's error kept on the row

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class _Claim:
    id: int
    token: str
    channel: Channel
    message: WebhookMessage
    attempts: int  # made before this one
    first_attempt_at: datetime | None
    url: str | None = None
    secrets: tuple[bytes, ...] = ()
    problem: str | None = None  # why the attempt cannot be made (it counts as a failed one)


@dataclass
class RoundReport:
    delivered: int = 0
    retrying: int = 0  # failed this time, another attempt is scheduled
    failed: int = 0  # given up
    lost: int = 0  # the lease ran out and another worker took the message over
    errors: list[str] = field(default_factory=list)  # one line per failed attempt

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed + self.lost


def deliver_round(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    client: httpx.Client | None = None,
    clock: Clock = utcnow,
    limit: int = ROUND_LIMIT,
) -> RoundReport:
    """Attempt every message that is due, at most `limit`; `factory` should make write
    sessions (BEGIN IMMEDIATE on SQLite)."""
    report = RoundReport()
    own_client = client is None
    http = client or httpx.Client()
    try:
        for _ in range(limit):
            claim = _claim_next(factory, settings, clock())
            if claim is None:
                break
            if claim.problem is not None:
                result = DeliveryResult(Outcome.RETRY, None, timedelta(0), error=claim.problem)
            elif claim.channel is Channel.EMAIL:
                result = mail.send(claim.message, settings)
            else:
                assert claim.url is not None
                result = webhooks.deliver(
                    claim.url, claim.message, claim.secrets, client=http, now=clock()
                )
            _record(factory, claim, result, clock(), report)
    finally:
        if own_client:
            http.close()
    return report


def _due(now: datetime) -> Select[Any]:
    return (
        select(OutboxMessage)
        .where(
            OutboxMessage.status == Status.PENDING.value,
            OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until <= now),
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(1)
    )


def _claim_next(factory: sessionmaker[Session], settings: Settings, now: datetime) -> _Claim | None:
    """Lease the next due message; messages of deactivated endpoints are given up on the way."""
    while True:
        with unit_of_work(factory) as session:
            query = _due(now)
            if is_postgresql(session.get_bind().dialect):
                query = query.with_for_update(skip_locked=True)
            row: OutboxMessage | None = session.scalar(query)
            if row is None:
                return None
            endpoint = None
            if row.channel == Channel.WEBHOOK.value and row.endpoint_id is not None:
                endpoint = session.get(WebhookEndpoint, row.endpoint_id)
            if row.channel == Channel.WEBHOOK.value and (endpoint is None or not endpoint.active):
                row.status = Status.FAILED.value
                row.next_attempt_at = None
                row.last_error = "not sent: the webhook endpoint was deactivated"
                continue
            token = str(uuid.uuid4())
            row.claim_token = token
            row.locked_until = now + LEASE
            message = WebhookMessage(
                id=uuid.UUID(row.message_id),
                type=row.message_type,
                created_at=row.created_at,
                data=row.data,
            )
            claim = _Claim(
                row.id, token, Channel(row.channel), message, row.attempts, row.first_attempt_at
            )
            if endpoint is None:
                return claim
            try:
                secrets = _signing_secrets(session, settings, endpoint.id, now)
            except OtacmError as error:  # no server key here, or another one
                return replace(claim, url=endpoint.url, problem=f"cannot sign: {error.detail}")
            return replace(claim, url=endpoint.url, secrets=secrets)


def _signing_secrets(
    session: Session, settings: Settings, endpoint_id: int, now: datetime
) -> tuple[bytes, ...]:
    rows = active_secrets(session, endpoint_id, now)
    if not rows:
        raise OtacmError(f"webhook {endpoint_id} has no active secret: rotate its secret")
    key = _sealing.server_key(settings)
    return tuple(_sealing.unseal(row.wrapped_secret, key, endpoint_id) for row in rows)


def active_secrets(session: Session, endpoint_id: int, now: datetime) -> list[WebhookSecret]:
    """The secrets that sign an endpoint's messages now, newest first."""
    return list(
        session.scalars(
            select(WebhookSecret)
            .where(
                WebhookSecret.endpoint_id == endpoint_id,
                or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
            )
            .order_by(WebhookSecret.id.desc())
        )
    )


def _record(
    factory: sessionmaker[Session],
    claim: _Claim,
    result: DeliveryResult,
    now: datetime,
    report: RoundReport,
) -> None:
    attempts = claim.attempts + 1
    first = claim.first_attempt_at or now
    error = result.error
    if error is None and result.outcome is not Outcome.DELIVERED:
        error = f"answered {result.status_code}"
    next_at: datetime | None = None
    if result.outcome is Outcome.DELIVERED:
        status = Status.DELIVERED
    else:
        next_at = webhooks.schedule_retry(result, attempt=attempts, first_attempt_at=first, now=now)
        status = Status.PENDING if next_at is not None else Status.FAILED
        if status is Status.FAILED and result.outcome is Outcome.RETRY:
            error = f"given up after {attempts} attempts; the last: {error}"
    with unit_of_work(factory) as session:
        done = session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == claim.id, OutboxMessage.claim_token == claim.token)
            .values(
                status=status.value,
                attempts=attempts,
                first_attempt_at=first,
                last_attempt_at=now,
                next_attempt_at=next_at,
                last_status_code=result.status_code,
                last_error=error[:ERROR_CHARS] if error else None,
                response_snippet=result.response_snippet or None,
                delivered_at=now if status is Status.DELIVERED else None,
                locked_until=None,
                claim_token=None,
            )
        )
    if not done.rowcount:  # type: ignore[attr-defined]
        report.lost += 1
        log.warning("outbox message %s: lease lost, another worker has it", claim.message.id)
        return
    if status is Status.DELIVERED:
        report.delivered += 1
        return
    report.errors.append(f"{claim.message.id} ({claim.channel.value}): {error}")
    if status is Status.PENDING:
        report.retrying += 1
    else:
        report.failed += 1
        log.warning("outbox message %s (%s) given up: %s", claim.message.id, claim.channel, error)


async def run_periodically(
    factory: sessionmaker[Session], settings: Settings, interval: float
) -> None:
    """The delivery loop of `otacm serve` and `otacm worker`: a round every `interval`
    seconds; a failing round is logged and the next one runs."""
    with httpx.Client() as client:
        while True:
            try:
                await run_in_threadpool(deliver_round, factory, settings, client=client)
            except Exception:
                log.exception("the notification delivery round failed")
            await asyncio.sleep(interval)
