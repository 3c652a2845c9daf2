"""Alert email: one message of the outbox rendered as a plain-text email and sent by SMTP.

`send` makes one attempt and returns the same `DeliveryResult` a webhook attempt does, so that
email shares the outbox's retry schedule: a permanent SMTP refusal (5xx) gives up, anything
else (4xx, a refused connection, a timeout, a failed login) is tried again later. The
Message-ID is derived from the outbox message id, so a mail client shows a message that was
sent twice (its answer lost) once. The SMTP password is used for the login only.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from datetime import UTC, timedelta
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import format_datetime

from otacm.config import Settings
from otacm.notifications.outbox import email_configured
from otacm.notifications.webhooks import (
    DEFAULT_TIMEOUT,
    EVENT_HEADER,
    DeliveryResult,
    Outcome,
    WebhookMessage,
)

MAX_SUBJECT = 150  # characters of the alert's message in the subject line
MESSAGE_ID_DOMAIN = "otacm.invalid"  # a reserved name: the ids are unique by their UUID part


def render(message: WebhookMessage, settings: Settings) -> EmailMessage:
    data = dict(message.data)
    summary = " ".join(str(data.get("message", message.type)).split())
    if len(summary) > MAX_SUBJECT:
        summary = summary[: MAX_SUBJECT - 1] + "…"
    severity = data.get("severity")
    email = EmailMessage()
    email["Subject"] = f"[otacm {severity}] {summary}" if severity else f"[otacm] {summary}"
    email["From"] = settings.alert_email_from
    email["To"] = ", ".join(settings.alert_email_to)
    email["Date"] = format_datetime(message.created_at.astimezone(UTC))
    email["Message-ID"] = f"<{message.id}@{MESSAGE_ID_DOMAIN}>"
    email[EVENT_HEADER] = message.type
    created = message.created_at.astimezone(UTC).isoformat(timespec="seconds")
    lines = [str(data.get("message", "")), "", f"type:      {message.type}"]
    if severity:
        lines.append(f"severity:  {severity}")
    if data.get("campaign_id") is not None:
        lines.append(f"campaign:  {data['campaign_id']}")
    if data.get("alert_id") is not None:
        lines.append(f"alert:     {data['alert_id']} (acknowledge it in otacm)")
    lines.append(f"raised at: {created.replace('+00:00', 'Z')}")
    details = data.get("details")
    if details:
        lines += ["", "details:", json.dumps(details, indent=2, sort_keys=True, default=str)]
    lines += ["", f"message id: {message.id}"]
    email.set_content("\n".join(lines) + "\n")
    return email


def send(
    message: WebhookMessage, settings: Settings, *, timeout: timedelta = DEFAULT_TIMEOUT
) -> DeliveryResult:
    """One attempt to mail `message` to `OTACM_ALERT_EMAIL_TO` through `OTACM_SMTP_HOST`."""
    started = time.monotonic()

    def result(outcome: Outcome, code: int | None, error: str | None = None) -> DeliveryResult:
        elapsed = timedelta(seconds=time.monotonic() - started)
        return DeliveryResult(outcome, code, elapsed, error=error[:500] if error else None)

    if not email_configured(settings):
        return result(
            Outcome.RETRY,
            None,
            "alert email is not configured here: set OTACM_SMTP_HOST, OTACM_ALERT_EMAIL_FROM "
            "and OTACM_ALERT_EMAIL_TO",
        )
    try:
        email = render(message, settings)
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=timeout.total_seconds()
        ) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            refused = smtp.send_message(email)
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _ in error.recipients.values()]
        permanent = all(500 <= code < 600 for code in codes)
        return result(
            Outcome.GIVE_UP if permanent else Outcome.RETRY,
            max(codes, default=None),
            f"every recipient refused: {_refusals(error.recipients)}",
        )
    except smtplib.SMTPAuthenticationError as error:
        # Permanent for this message only once the configuration is fixed: keep retrying.
        return result(Outcome.RETRY, error.smtp_code, f"SMTP login refused ({error.smtp_code})")
    except smtplib.SMTPResponseException as error:
        text = _text(error.smtp_error)
        permanent = 500 <= error.smtp_code < 600
        outcome = Outcome.GIVE_UP if permanent else Outcome.RETRY
        return result(outcome, error.smtp_code, f"SMTP {error.smtp_code}: {text}")
    except (smtplib.SMTPException, OSError) as error:  # refused, reset, DNS, TLS, timeout
        return result(Outcome.RETRY, None, f"{type(error).__name__}: {error}"[:300])
    except (ValueError, LookupError, MessageError) as error:  # e.g. an address it cannot carry
        # Settings are checked when they are read; these came in some other way. Retried, so
        # that correcting the configuration delivers the message.
        problem = f"{type(error).__name__}: {error}"
        return result(Outcome.RETRY, None, f"cannot send the email as configured: {problem}"[:300])
    if refused:
        return result(Outcome.DELIVERED, 250, f"some recipients refused: {_refusals(refused)}")
    return result(Outcome.DELIVERED, 250)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _refusals(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{address} ({code} {_text(reply)[:80]})" for address, (code, reply) in recipients.items()
    )
