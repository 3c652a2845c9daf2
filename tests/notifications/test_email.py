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
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine
from typer.testing import CliRunner

from otacm.alerts.service import AlertKind
from otacm.cli import app as cli
from otacm.config import Settings, get_settings
from otacm.notifications import delivery, outbox
from otacm.notifications.outbox import Channel
from otacm.security.keys import KeyStore
from tests.notifications.conftest import Clock, Receiver, add_webhook, alert, deliver, until_settled
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


def test_a_sender_the_email_cannot_carry_is_retried_and_the_round_goes_on(
    settings: Settings,
    engine: Engine,
    inbox: tuple[Inbox, int],
    keys: KeyStore,
    receiver: Receiver,
    clock: Clock,
) -> None:
    """Settings made without validation (`model_copy`) can still hold an address that breaks
    the email: the attempt fails like any other, and the webhook after it is delivered."""
    handler, port = inbox
    broken = mail_settings(settings, port, alert_email_from="otacm <")
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    alert(engine, broken, now=clock.now)
    assert sorted(r.channel for r in outbox_rows(engine)) == ["email", "webhook"]

    report = deliver(engine, broken, clock)

    assert (report.delivered, report.retrying) == (1, 1)
    assert len(receiver.received) == 1 and handler.messages == []
    email_row = next(r for r in outbox_rows(engine) if r.channel == "email")
    assert (email_row.status, email_row.attempts) == ("pending", 1)
    assert "IndexError" in (email_row.last_error or "")
    assert PASSWORD not in (email_row.last_error or "")

    fixed = mail_settings(settings, port)
    assert email_row.next_attempt_at is not None
    clock.now = email_row.next_attempt_at
    assert deliver(engine, fixed, clock).delivered == 1
    [(sender, _, _)] = handler.messages
    assert sender == "otacm@fleet.example"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTACM_ALERT_EMAIL_FROM", "otacm <"),
        ("OTACM_ALERT_EMAIL_FROM", "otacm"),
        ("OTACM_ALERT_EMAIL_FROM", "ops@fleet.example, oncall@fleet.example"),
        ("OTACM_ALERT_EMAIL_FROM", "otacm@fleet.example\r\nBcc: someone@else.example"),
        ("OTACM_ALERT_EMAIL_TO", "ops@fleet.example, otacm <"),
        ("OTACM_ALERT_EMAIL_TO", '["ops@fleet.example", "@fleet.example"]'),
    ],
)
def test_a_bad_address_is_refused_at_start_up_naming_the_setting(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    [error] = refused.value.errors()
    assert error["loc"] == (variable.removeprefix("OTACM_").lower(),)
    assert variable in error["msg"]


def test_the_cli_refuses_to_start_naming_the_setting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTACM_ALERT_EMAIL_TO", "ops@fleet.example, otacm <")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli, ["webhooks", "deliver", "--database-url", settings.resolved_database_url()]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "OTACM_ALERT_EMAIL_TO: 'otacm <' is not an email address" in output
    assert "delivered" not in output and "Traceback" not in output


def test_good_addresses_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTACM_ALERT_EMAIL_FROM", " otacm alerts <otacm@fleet.example> ")
    monkeypatch.setenv("OTACM_ALERT_EMAIL_TO", "ops@fleet.example, On Call <oncall@fleet.example>")
    taken = Settings()
    assert taken.alert_email_from == "otacm alerts <otacm@fleet.example>"
    assert taken.alert_email_to == ["ops@fleet.example", "On Call <oncall@fleet.example>"]
    assert Settings(alert_email_from="", alert_email_to=[]).alert_email_from == ""


def test_a_worker_without_email_settings_leaves_email_to_others(
    settings: Settings, engine: Engine, inbox: tuple[Inbox, int], clock: Clock
) -> None:
    handler, port = inbox
    configured = mail_settings(settings, port)
    alert(engine, configured, now=clock.now)  # raised where email is configured
    assert delivery.channels(configured) == {Channel.EMAIL}  # no server key here

    for unconfigured in (settings, mail_settings(settings, port, smtp_host="")):
        assert Channel.EMAIL not in delivery.channels(unconfigured)
        assert deliver(engine, unconfigured, clock).attempted == 0
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.last_error, row.claim_token) == (
        "pending",
        0,
        None,
        None,
    )
    assert deliver(engine, configured, clock).delivered == 1
    assert len(handler.messages) == 1
