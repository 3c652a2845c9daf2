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

A worker claims only the channels it can serve (`channels`): email where alert email is
configured, webhooks where the server key that opens their secrets is; the others' messages
wait for a worker that can. Whatever goes wrong with one message, an exception included, is
recorded on its row as a failed attempt, so that one bad message cannot stop a round.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
from sqlalchemy import Select, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import is_postgresql, unit_of_work, utcnow
from otacm.errors import OtacmError
from otacm.notifications import _sealing, mail, outbox, webhooks
from otacm.notifications.models import OutboxMessage, WebhookEndpoint
from otacm.notifications.outbox import Channel, Status
from otacm.notifications.repository import active_secrets
from otacm.notifications.webhooks import DeliveryResult, Outcome, WebhookMessage
from otacm.periodic import every

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
    message_id: str
    channel: Channel
    attempts: int  # made before this one
    first_attempt_at: datetime | None
    message: WebhookMessage | None = None  # None only with a problem
    url: str | None = None
    secrets: tuple[bytes, ...] = ()
    problem: str | None = None  # why the attempt cannot be made (it counts as a failed one)


@dataclass
class RoundReport:
    delivered: int = 0
    retrying: int = 0  # failed this time, another attempt is scheduled
    failed: int = 0  # given up
    lost: int = 0  # not recorded: the lease ran out and another worker took the message over,
    # or its endpoint was deactivated or removed during the attempt
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
    """Attempt every due message of the channels this worker serves (`channels`), at most
    `limit`; `factory` should make write sessions (BEGIN IMMEDIATE on SQLite)."""
    report = RoundReport()
    serves = channels(settings)
    own_client = client is None
    http = client or httpx.Client()
    try:
        for _ in range(limit):
            claim = _claim_next(factory, settings, clock(), serves)
            if claim is None:
                break
            try:
                result = _attempt(claim, settings, http, clock)
            except Exception as error:  # a bug or a surprise: it must not stop the round
                log.exception("outbox message %s: the attempt failed", claim.message_id)
                result = _as_retry(error, claim, settings)
            _record(factory, claim, result, clock(), report)
    finally:
        if own_client:
            http.close()
    return report


def channels(settings: Settings) -> frozenset[Channel]:
    """The channels a worker with `settings` can send on."""
    serves = set()
    if outbox.email_configured(settings):
        serves.add(Channel.EMAIL)
    if _sealing.has_server_key(settings):
        serves.add(Channel.WEBHOOK)
    return frozenset(serves)


def _attempt(claim: _Claim, settings: Settings, http: httpx.Client, clock: Clock) -> DeliveryResult:
    if claim.problem is not None:
        return DeliveryResult(Outcome.RETRY, None, timedelta(0), error=claim.problem)
    assert claim.message is not None
    if claim.channel is Channel.EMAIL:
        return mail.send(claim.message, settings)
    assert claim.url is not None
    return webhooks.deliver(claim.url, claim.message, claim.secrets, client=http, now=clock())


def _as_retry(error: Exception, claim: _Claim, settings: Settings) -> DeliveryResult:
    """A retry, with what went wrong in words that hold no secret and no URL path."""
    text = f"{type(error).__name__}: {error}"
    secrets = [s.decode("ascii", "replace") for s in claim.secrets]
    for secret in (*secrets, settings.smtp_password.get_secret_value()):
        if secret:
            text = text.replace(secret, "***")
    if claim.url:
        text = text.replace(claim.url, webhooks.origin(claim.url))
    return DeliveryResult(Outcome.RETRY, None, timedelta(0), error=f"failed: {text}"[:ERROR_CHARS])


def _due(now: datetime, serves: Collection[Channel]) -> Select[Any]:
    return (
        select(OutboxMessage)
        .where(
            OutboxMessage.status == Status.PENDING.value,
            OutboxMessage.channel.in_(sorted(channel.value for channel in serves)),
            OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until <= now),
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(1)
    )


def _claim_next(
    factory: sessionmaker[Session],
    settings: Settings,
    now: datetime,
    serves: Collection[Channel],
) -> _Claim | None:
    """Lease the next due message of a channel in `serves`, with what its attempt needs."""
    if not serves:
        return None
    with unit_of_work(factory) as session:
        query = _due(now, serves)
        if is_postgresql(session.get_bind().dialect):
            query = query.with_for_update(skip_locked=True)
        row: OutboxMessage | None = session.scalar(query)
        if row is None:
            return None
        token = str(uuid.uuid4())
        row.claim_token = token
        row.locked_until = now + LEASE
        claim = _Claim(
            row.id, token, row.message_id, Channel(row.channel), row.attempts, row.first_attempt_at
        )
        try:
            return _prepared(session, settings, claim, row, now)
        except Exception as error:  # a row that cannot be sent is retried, and ends given up
            log.exception("outbox message %s: cannot prepare its attempt", row.message_id)
            return replace(claim, problem=f"cannot prepare: {type(error).__name__}: {error}")


def _prepared(
    session: Session, settings: Settings, claim: _Claim, row: OutboxMessage, now: datetime
) -> _Claim:
    message = WebhookMessage(
        id=uuid.UUID(row.message_id),
        type=row.message_type,
        created_at=row.created_at,
        data=row.data,
    )
    if claim.channel is Channel.EMAIL:
        return replace(claim, message=message)
    # A webhook row has its endpoint: deleting one deletes its rows, deactivating fails them.
    endpoint = session.get_one(WebhookEndpoint, row.endpoint_id)
    claim = replace(claim, message=message, url=endpoint.url)
    try:
        secrets = _signing_secrets(session, settings, endpoint.id, now)
    except OtacmError as error:  # another server key, or no secret left
        return replace(claim, problem=f"cannot sign: {error.detail}")
    return replace(claim, secrets=secrets)


def _signing_secrets(
    session: Session, settings: Settings, endpoint_id: int, now: datetime
) -> tuple[bytes, ...]:
    rows = active_secrets(session, endpoint_id, now)
    if not rows:
        raise OtacmError(f"webhook {endpoint_id} has no active secret: rotate its secret")
    key = _sealing.server_key(settings)
    return tuple(_sealing.unseal(row.wrapped_secret, key, endpoint_id) for row in rows)


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
        log.warning(
            "outbox message %s: its outcome is not recorded: the lease ran out and another "
            "worker took the message over, or its endpoint was deactivated or removed",
            claim.message_id,
        )
        return
    if status is Status.DELIVERED:
        report.delivered += 1
        return
    report.errors.append(f"{claim.message_id} ({claim.channel.value}): {error}")
    if status is Status.PENDING:
        report.retrying += 1
    else:
        report.failed += 1
        log.warning("outbox message %s (%s) given up: %s", claim.message_id, claim.channel, error)


async def run_periodically(
    factory: sessionmaker[Session], settings: Settings, interval: float
) -> None:
    """The delivery loop of `otacm serve` and `otacm worker`: a round every `interval`
    seconds; a failing round is logged and the next one runs."""
    serves = ", ".join(sorted(channels(settings))) or "none (see docs/webhooks.md, Delivery)"
    log.info("notification delivery: a round every %g s; channels served: %s", interval, serves)
    with httpx.Client() as client:
        round_ = partial(deliver_round, factory, settings, client=client)
        await every(interval, round_, name="notification delivery round")
