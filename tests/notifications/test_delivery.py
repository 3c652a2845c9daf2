"""Alerts through the outbox to a real HTTP receiver: signed, retried, given up, filtered, and
each message delivered once by several workers sharing the database."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from otacm.alerts.service import AlertKind, raise_alert
from otacm.config import Settings
from otacm.db import make_engine, make_write_session_factory, unit_of_work
from otacm.notifications import delivery, service, webhooks
from otacm.notifications.models import OutboxMessage, WebhookSecret
from otacm.notifications.outbox import Channel
from otacm.notifications.schemas import WebhookUpdate
from otacm.notifications.webhooks import (
    GIVE_UP_AFTER,
    MAX_ATTEMPTS,
    DeliveryResult,
    Outcome,
    WebhookMessage,
)
from otacm.security.keys import KeyStore
from tests.conftest import TEST_ACTOR
from tests.notifications.conftest import (
    Clock,
    Receiver,
    add_webhook,
    alert,
    deliver,
    until_settled,
)
from tests.notifications.conftest import outbox as outbox_rows
from tests.security.helpers import audit_rows


def test_a_raised_alert_reaches_the_receiver_signed(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    alert_id = alert(engine, settings, now=clock.now)

    report = deliver(engine, settings, clock)

    assert (report.delivered, report.retrying, report.failed) == (1, 0, 0)
    [got] = receiver.received
    assert got.verified_with == [secret]
    body = got.json
    assert got.headers["Otacm-Delivery"] == body["id"]
    assert got.headers["Otacm-Event"] == body["type"] == "alert.failure_threshold"
    assert body["data"] == {
        "alert_id": alert_id,
        "kind": "failure_threshold",
        "severity": "critical",
        "campaign_id": 7,
        "message": "campaign 7 paused in wave 2: failure threshold crossed",
        "details": {"wave": 2, "failed": 13},
    }
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    assert row.message_id == body["id"]
    assert row.delivered_at == clock.now and row.claim_token is None
    # Nothing is left to do.
    assert deliver(engine, settings, clock).attempted == 0


def test_a_rolled_back_alert_queues_nothing(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver
) -> None:
    add_webhook(engine, settings, receiver.url)
    with pytest.raises(RuntimeError), unit_of_work(make_write_session_factory(engine)) as session:
        raise_alert(session, AlertKind.TIMEOUT_SPIKE, "x", settings=settings)
        assert len(session.query(OutboxMessage).all()) == 1
        raise RuntimeError("the engine's step failed")
    assert outbox_rows(engine) == []


def test_a_failed_attempt_is_retried_with_the_same_message(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    receiver.statuses = [500, 200]
    alert(engine, settings, now=clock.now)

    first = deliver(engine, settings, clock)
    assert (first.delivered, first.retrying) == (0, 1)
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 500)
    assert row.response_snippet == "not now" and row.last_error == "answered 500"
    assert row.next_attempt_at is not None
    assert clock.now + timedelta(seconds=24) <= row.next_attempt_at
    assert row.next_attempt_at <= clock.now + timedelta(seconds=30)
    assert deliver(engine, settings, clock).attempted == 0  # not due yet

    clock.advance(timedelta(seconds=30))
    second = deliver(engine, settings, clock)

    assert second.delivered == 1
    one, two = receiver.received
    assert one.headers["Otacm-Delivery"] == two.headers["Otacm-Delivery"] == row.message_id
    assert one.body == two.body
    assert one.headers["Otacm-Signature"] != two.headers["Otacm-Signature"]  # signed afresh
    assert two.verified_with == [secret]
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
    assert row.first_attempt_at == clock.now - timedelta(seconds=30)


def test_delivery_gives_up_after_the_limit(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    receiver.default = 503
    start = clock.now
    alert(engine, settings, now=clock.now)

    reports = until_settled(engine, settings, clock)

    [row] = outbox_rows(engine)
    assert row.status == "failed"
    assert 13 <= row.attempts <= min(14, MAX_ATTEMPTS)
    assert len(receiver.received) == row.attempts
    assert len(set(receiver.ids())) == 1
    assert row.last_attempt_at is not None and row.last_attempt_at - start <= GIVE_UP_AFTER
    assert row.last_error == f"given up after {row.attempts} attempts; the last: answered 503"
    assert sum(r.failed for r in reports) == 1


def test_a_rejection_gives_up_at_once(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    add_webhook(engine, settings, receiver.url)
    receiver.secrets = [b"not-the-endpoints-secret-at-all"]  # the receiver answers 401
    alert(engine, settings, now=clock.now)

    report = deliver(engine, settings, clock)

    assert report.failed == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 1, 401)
    assert row.next_attempt_at is None


def test_inactive_endpoints_and_unwanted_types_get_nothing(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    base = receiver.url.split("?")[0]
    add_webhook(engine, settings, f"{base}?who=inactive", active=False)
    add_webhook(
        engine, settings, f"{base}?who=finished-only", event_types=["alert.campaign_finished"]
    )
    wanted, secret = add_webhook(
        engine,
        settings,
        f"{base}?who=thresholds",
        event_types=["alert.failure_threshold", "alert.timeout_spike"],
    )
    receiver.secrets = [secret]

    alert(engine, settings, AlertKind.FAILURE_THRESHOLD, now=clock.now)
    [row] = outbox_rows(engine)
    assert row.endpoint_id == wanted

    deliver(engine, settings, clock)
    assert [r.json["type"] for r in receiver.received] == ["alert.failure_threshold"]


def test_deactivating_an_endpoint_stops_its_pending_messages(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    webhook_id, secret = add_webhook(engine, settings, receiver.url)
    other_id, other_secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret, other_secret]
    alert(engine, settings, now=clock.now)
    alert(engine, settings, now=clock.now)
    with unit_of_work(make_write_session_factory(engine)) as session:
        service.update(session, TEST_ACTOR, webhook_id, WebhookUpdate(active=False))

    # Given up by the change itself, before any delivery round ran.
    mine = [r for r in outbox_rows(engine) if r.endpoint_id == webhook_id]
    assert [(r.status, r.attempts, r.next_attempt_at) for r in mine] == [("failed", 0, None)] * 2
    assert {r.last_error for r in mine} == {"not sent: the webhook endpoint was deactivated"}
    [entry] = [r for r in audit_rows(engine) if r["action"] == "webhook.update"]
    assert entry["after"]["pending_messages_given_up"] == 2
    assert entry["after"]["changed"] == ["active"]

    report = deliver(engine, settings, clock)

    assert report.delivered == 2 and report.attempted == 2  # the other endpoint's only
    assert {r.headers["Otacm-Delivery"] for r in receiver.received} == {
        r.message_id for r in outbox_rows(engine) if r.endpoint_id == other_id
    }
    # Switched on again, it gets what is raised from then on, not what was given up.
    with unit_of_work(make_write_session_factory(engine)) as session:
        service.update(session, TEST_ACTOR, webhook_id, WebhookUpdate(active=True))
    assert deliver(engine, settings, clock).attempted == 0
    alert(engine, settings, now=clock.now)
    assert deliver(engine, settings, clock).delivered == 2
    entries = [r for r in audit_rows(engine) if r["action"] == "webhook.update"]
    assert "pending_messages_given_up" not in entries[-1]["after"]


def test_a_message_under_way_when_its_endpoint_is_deactivated_stays_given_up(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    webhook_id, _ = add_webhook(engine, settings, receiver.url)
    alert(engine, settings, now=clock.now)
    factory = make_write_session_factory(engine)
    under_way = delivery._claim_next(factory, settings, clock.now, delivery.channels(settings))
    assert under_way is not None
    with unit_of_work(factory) as session:
        service.update(session, TEST_ACTOR, webhook_id, WebhookUpdate(active=False))
    late = delivery.RoundReport()
    retry = DeliveryResult(Outcome.RETRY, 503, timedelta(seconds=1))
    delivery._record(factory, under_way, retry, clock.now, late)

    assert late.lost == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.claim_token) == ("failed", 0, None)
    clock.advance(timedelta(hours=1))
    assert deliver(engine, settings, clock).attempted == 0


def test_an_alert_raised_while_an_endpoint_is_deactivated_is_not_queued_for_it(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    """The alert's transaction waits for the deactivation's (FOR SHARE on PostgreSQL, the write
    lock on SQLite) and then sees the endpoint inactive: no message slips past the change."""
    webhook_id, _ = add_webhook(engine, settings, receiver.url)
    with unit_of_work(make_write_session_factory(engine)) as session:
        service.update(session, TEST_ACTOR, webhook_id, WebhookUpdate(active=False))
        raising = threading.Thread(target=alert, args=(engine, settings), kwargs={"now": clock.now})
        raising.start()
        raising.join(0.5)
        assert raising.is_alive()  # waiting for the deactivation to commit or roll back
    raising.join(30)

    assert not raising.is_alive()
    assert outbox_rows(engine) == []
    assert deliver(engine, settings, clock).attempted == 0 and receiver.received == []


def test_during_a_rotation_both_secrets_sign(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    webhook_id, old = add_webhook(engine, settings, receiver.url)
    with unit_of_work(make_write_session_factory(engine)) as session:
        _, new, expires = service.rotate_secret(
            session,
            TEST_ACTOR,
            webhook_id,
            grace=timedelta(hours=1),
            settings=settings,
            now=clock.now,
        )
    assert expires == clock.now + timedelta(hours=1)
    receiver.secrets = [old, new.encode()]
    alert(engine, settings, now=clock.now)
    deliver(engine, settings, clock)

    clock.advance(timedelta(hours=1, seconds=1))
    alert(engine, settings, now=clock.now)
    deliver(engine, settings, clock)

    during, after = receiver.received
    assert during.verified_with == [old, new.encode()]
    assert during.headers["Otacm-Signature"].count("v1=") == 2
    assert after.verified_with == [new.encode()]
    assert after.headers["Otacm-Signature"].count("v1=") == 1


def test_secrets_are_stored_wrapped_and_bound_to_their_endpoint(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    first, secret = add_webhook(engine, settings, receiver.url)
    second, _ = add_webhook(engine, settings, receiver.url)
    with unit_of_work(make_write_session_factory(engine)) as session:
        rows = {s.endpoint_id: s for s in session.query(WebhookSecret)}
        assert secret not in rows[first].wrapped_secret
        # A wrapped secret copied onto another endpoint does not open there.
        rows[second].wrapped_secret = rows[first].wrapped_secret
    receiver.secrets = [secret]
    alert(engine, settings, now=clock.now)

    report = deliver(engine, settings, clock)

    assert report.delivered == 1 and report.retrying == 1
    assert any("cannot sign" in line for line in report.errors)
    assert len(receiver.received) == 1


def test_a_worker_without_the_server_key_leaves_webhook_messages_to_others(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    alert(engine, settings, now=clock.now)
    elsewhere = settings.model_copy(update={"keys_dir": settings.data_dir / "no-keys"})
    assert delivery.channels(elsewhere) == frozenset()
    assert delivery.channels(settings) == {Channel.WEBHOOK}

    for _ in range(3):
        report = deliver(engine, elsewhere, clock)
        assert report.attempted == 0 and receiver.received == []
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)
    assert row.locked_until is None and row.claim_token is None  # not even leased
    assert deliver(engine, settings, clock).delivered == 1  # at once: nothing was burnt


def test_an_attempt_that_raises_is_recorded_as_a_retry_and_the_round_goes_on(
    settings: Settings,
    engine: Engine,
    keys: KeyStore,
    receiver: Receiver,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    alert(engine, settings, now=clock.now)
    alert(engine, settings, now=clock.now)
    first, second = outbox_rows(engine)
    real = webhooks.deliver
    calls = []

    def deliver_with_a_bug(url: str, message: WebhookMessage, *args: Any, **kw: Any) -> Any:
        calls.append(str(message.id))
        if len(calls) == 1:
            raise IndexError(f"string index out of range ({url}, {secret.decode()})")
        return real(url, message, *args, **kw)

    monkeypatch.setattr(webhooks, "deliver", deliver_with_a_bug)
    report = deliver(engine, settings, clock)

    assert calls == [first.message_id, second.message_id]
    assert (report.delivered, report.retrying, report.failed) == (1, 1, 0)
    broken, delivered = outbox_rows(engine)
    assert delivered.status == "delivered"
    assert (broken.status, broken.attempts, broken.claim_token) == ("pending", 1, None)
    assert broken.next_attempt_at is not None and broken.next_attempt_at > clock.now
    error = broken.last_error or ""
    assert "IndexError: string index out of range" in error
    assert secret.decode() not in error and "token=t0p" not in error  # no secret, no path
    assert "http://127.0.0.1" in error  # the origin stays
    monkeypatch.setattr(webhooks, "deliver", real)
    clock.now = broken.next_attempt_at
    assert deliver(engine, settings, clock).delivered == 1


def test_an_expired_lease_is_taken_over_and_the_late_answer_dropped(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    alert(engine, settings, now=clock.now)
    factory = make_write_session_factory(engine)
    stalled = delivery._claim_next(factory, settings, clock.now, delivery.channels(settings))
    assert stalled is not None
    assert deliver(engine, settings, clock).attempted == 0  # leased: nobody else takes it

    clock.advance(delivery.LEASE)
    assert deliver(engine, settings, clock).delivered == 1
    late = delivery.RoundReport()
    result = DeliveryResult(Outcome.RETRY, 502, timedelta(seconds=9), error="late")
    delivery._record(factory, stalled, result, clock.now, late)

    assert late.lost == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 200)


def test_two_workers_deliver_each_message_exactly_once(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    """Two delivery workers, each with its own engine (as two `otacm serve` processes would
    have), against one database: on PostgreSQL they claim with SKIP LOCKED side by side."""
    base = receiver.url.split("?")[0]
    secrets = [add_webhook(engine, settings, f"{base}?n={n}")[1] for n in range(2)]
    receiver.secrets = secrets
    receiver.delay = 0.01
    for _ in range(15):
        alert(engine, settings, now=clock.now)
    expected = {r.message_id for r in outbox_rows(engine)}
    assert len(expected) == 30

    start = threading.Barrier(2)
    reports: list[delivery.RoundReport] = []

    def work() -> None:
        own = make_engine(settings.resolved_database_url())
        try:
            start.wait()
            reports.append(deliver(own, settings, clock))
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(receiver.ids()) == sorted(expected)  # each one, once
    assert sum(r.delivered for r in reports) == 30
    assert all(r.lost == 0 and r.retrying == 0 for r in reports)
    if engine.dialect.name == "postgresql":
        assert all(r.delivered > 0 for r in reports)  # they really worked side by side
    assert {r.status for r in outbox_rows(engine)} == {"delivered"}
