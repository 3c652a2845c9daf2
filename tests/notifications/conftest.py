"""Fixtures of the notification tests: a real HTTP receiver on a local socket that checks every
signature with `webhooks.verify`, a fake clock, server keys, and small builders."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine, select

from otacm.alerts.service import AlertKind, raise_alert
from otacm.config import Settings
from otacm.db import make_write_session_factory, unit_of_work, utcnow
from otacm.notifications import delivery, service
from otacm.notifications.models import OutboxMessage
from otacm.notifications.schemas import WebhookCreate
from otacm.notifications.webhooks import WebhookSignatureError, verify
from otacm.security.keys import KeyStore
from tests.conftest import TEST_ACTOR


@dataclass
class Clock:
    """The time every component of a test agrees on: the delivery round signs with it and the
    receiver verifies with it, so a test can move hours ahead without waiting."""

    now: datetime = field(default_factory=utcnow)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified_with: list[bytes]  # the receiver's secrets that one of the v1 values matched
    status: int

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with `statuses` in turn (then `default`),
    verifies each request against `secrets` at `clock()`, and keeps what it received."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.secrets: list[bytes] = []
        self.statuses: list[int] = []
        self.default = 200
        self.delay = 0.0  # seconds before answering
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("Otacm-Signature", "")
                verified = []
                for secret in receiver.secrets:
                    try:
                        verify(body, header, secret, receiver.clock())
                    except WebhookSignatureError:
                        continue
                    verified.append(secret)
                time.sleep(receiver.delay)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    if not verified:
                        status = 401
                    receiver.received.append(Received(dict(self.headers), body, verified, status))
                answer = b'{"ok": true}' if status < 300 else b"not now"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/otacm?token=t0p"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ids(self) -> list[str]:
        return [r.headers["Otacm-Delivery"] for r in self.received]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    server = Receiver(clock)
    yield server
    server.close()


@pytest.fixture
def keys(settings: Settings) -> KeyStore:
    """Signing keys as `otacm keys init --no-root-passphrase` makes them: the server key that
    wraps webhook secrets is created beside them on first use."""
    store = KeyStore(settings.resolved_keys_dir())
    store.init(None, allow_unencrypted_root=True)
    return store


def add_webhook(engine: Engine, settings: Settings, url: str, **fields: Any) -> tuple[int, bytes]:
    """A webhook endpoint made through the service: (its id, its secret)."""
    with unit_of_work(make_write_session_factory(engine)) as session:
        endpoint, secret = service.create(
            session, TEST_ACTOR, WebhookCreate(url=url, **fields), settings=settings
        )
        return endpoint.id, secret.encode("ascii")


def alert(
    engine: Engine,
    settings: Settings,
    kind: AlertKind = AlertKind.FAILURE_THRESHOLD,
    *,
    now: datetime | None = None,
    campaign_id: int | None = 7,
    details: dict[str, Any] | None = None,
) -> int:
    """Raise an alert in a transaction of its own, as the rollout engine does; its id."""
    with unit_of_work(make_write_session_factory(engine)) as session:
        raised = raise_alert(
            session,
            kind,
            f"campaign {campaign_id} paused in wave 2: failure threshold crossed",
            campaign_id=campaign_id,
            details=details if details is not None else {"wave": 2, "failed": 13},
            now=now,
            settings=settings,
        )
        return raised.id


def deliver(
    engine: Engine, settings: Settings, clock: Clock, **kwargs: Any
) -> delivery.RoundReport:
    return delivery.deliver_round(
        make_write_session_factory(engine), settings, clock=clock, **kwargs
    )


def outbox(engine: Engine) -> list[OutboxMessage]:
    with unit_of_work(make_write_session_factory(engine)) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def until_settled(
    engine: Engine, settings: Settings, clock: Clock, *, rounds: int = 40
) -> list[delivery.RoundReport]:
    """Delivery rounds, the clock moved to each next attempt, until nothing is pending."""
    reports = []
    for _ in range(rounds):
        reports.append(deliver(engine, settings, clock))
        pending = [r for r in outbox(engine) if r.status == "pending"]
        if not pending:
            return reports
        due = min(r.next_attempt_at for r in pending if r.next_attempt_at is not None)
        clock.now = max(clock.now, due)
    raise AssertionError(f"still pending after {rounds} rounds")
