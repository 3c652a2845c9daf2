"""Alert email through the outbox to a real SMTP server (aiosmtpd) on a local socket."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from sqlalchemy import Engine

from otacm.alerts.service import AlertKind
from otacm.config import Settings
from otacm.notifications import outbox
from tests.notifications.conftest import Clock, alert, deliver, until_settled
from tests.notifications.conftest import outbox as outbox_rows

USER, PASSWORD = "otacm-alerts", "smtp-password-9f8e7d6c"


@dataclass
class Inbox:
    """An SMTP server's handler: keeps what it accepts; `rcpt_reply` refuses recipients."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    rcpt_reply: str | None = None
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if ok:
            self.logins.append(USER)
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    with socket.socket() as probe:  # a free port; aiosmtpd checks the one it is given
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=handler.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def mail_settings(settings: Settings, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_starttls": False,
        "smtp_username": USER,
        "smtp_password": SecretStr(PASSWORD),
        "alert_email_from": "otacm@fleet.example",
        "alert_email_to": ["ops@fleet.example", "oncall@fleet.example"],
    }
    return settings.model_copy(update={**values, **overrides})


def test_an_alert_arrives_by_email(
    settings: Settings,
    engine: Engine,
    inbox: tuple[Inbox, int],
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, port = inbox
    configured = mail_settings(settings, port)
    caplog.set_level(logging.DEBUG)
    alert_id = alert(engine, configured, AlertKind.TIMEOUT_SPIKE, now=clock.now)
    [row] = outbox_rows(engine)
    assert (row.channel, row.endpoint_id) == ("email", None)
    assert row.message_type == "alert.timeout_spike"

    report = deliver(engine, configured, clock)

    assert report.delivered == 1
    [(sender, recipients, message)] = handler.messages
    assert sender == "otacm@fleet.example"
    assert recipients == ["ops@fleet.example", "oncall@fleet.example"]
    assert handler.logins == [USER]
    assert message["Subject"].strip() == (  # a long subject is folded onto the next line
        "[otacm warning] campaign 7 paused in wave 2: failure threshold crossed"
    )
    assert message["To"] == "ops@fleet.example, oncall@fleet.example"
    assert message["Message-ID"] == f"<{row.message_id}@otacm.invalid>"
    assert message["Otacm-Event"] == "alert.timeout_spike"
    text = message.get_content()
    assert f"alert:     {alert_id}" in text and "campaign:  7" in text
    assert '"failed": 13' in text
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 250)
    assert PASSWORD not in caplog.text


def test_without_smtp_settings_no_email_is_queued(
    settings: Settings, engine: Engine, inbox: tuple[Inbox, int], clock: Clock
) -> None:
    _, port = inbox
    for unconfigured in (
        settings,
        mail_settings(settings, port, smtp_host=""),
        mail_settings(settings, port, alert_email_to=[]),
    ):
        alert(engine, unconfigured, now=clock.now)
        assert not outbox.email_configured(unconfigured)
    assert outbox_rows(engine) == []


def test_a_permanent_refusal_gives_up_and_a_temporary_one_is_retried(
    settings: Settings, engine: Engine, inbox: tuple[Inbox, int], clock: Clock
) -> None:
    handler, port = inbox
    configured = mail_settings(settings, port)
    handler.rcpt_reply = "550 5.1.1 no such mailbox"
    alert(engine, configured, now=clock.now)
    assert deliver(engine, configured, clock).failed == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.last_status_code) == ("failed", 550)
    assert "no such mailbox" in (row.last_error or "")

    handler.rcpt_reply = "451 4.3.0 try again later"
    alert(engine, configured, now=clock.now)
    assert deliver(engine, configured, clock).retrying == 1
    handler.rcpt_reply = None
    clock.advance(timedelta(minutes=1))
    assert deliver(engine, configured, clock).delivered == 1
    assert len(handler.messages) == 1


def test_a_wrong_password_or_no_server_is_retried_then_given_up(
    settings: Settings, engine: Engine, inbox: tuple[Inbox, int], clock: Clock
) -> None:
    handler, port = inbox
    wrong = mail_settings(settings, port, smtp_password=SecretStr("not-the-password"))
    alert(engine, wrong, now=clock.now)
    assert deliver(engine, wrong, clock).retrying == 1
    [row] = outbox_rows(engine)
    assert row.last_error == "SMTP login refused (535)"
    assert "not-the-password" not in (row.last_error or "")

    nobody = mail_settings(settings, 1)  # nothing listens on port 1
    until_settled(engine, nobody, clock)
    [row] = outbox_rows(engine)
    assert row.status == "failed" and row.attempts >= 13
    assert "given up after" in (row.last_error or "") and handler.messages == []
