"""`otacm webhooks`: add (the secret on stdout, once), list, rotate, deliveries, deliver,
remove, against the test's database and keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from otacm.cli import app
from otacm.config import Settings, get_settings
from otacm.security.keys import KeyStore
from tests.notifications.conftest import Clock, Receiver, alert
from tests.security.helpers import audit_rows

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's settings come from the environment: point them at the test's keys."""
    monkeypatch.setenv("OTACM_KEYS_DIR", str(settings.resolved_keys_dir()))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def otacm(settings: Settings, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stdout and stderr)."""
    result = runner.invoke(
        app, [*args, "--database-url", settings.resolved_database_url()], env={"COLUMNS": "250"}
    )
    return result.exit_code, result.stdout, result.output


def test_add_list_rotate_deliver_remove(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver, clock: Clock
) -> None:
    code, secret, output = otacm(
        settings, "webhooks", "add", receiver.url, "--description", "on-call",
        "--event", "alert.failure_threshold",
    )  # fmt: skip
    assert code == 0, output
    secret = secret.strip()
    assert len(secret) == 43 and "webhook 1 added" in output

    code, listed, _ = otacm(settings, "webhooks", "list")
    assert code == 0 and "on-call" in listed and "alert.failure_threshold" in listed
    assert secret not in listed

    code, rotated, output = otacm(settings, "webhooks", "rotate", "1", "--grace-hours", "1")
    assert code == 0, output
    new = rotated.strip()
    assert len(new) == 43 and new != secret and "keeps signing until" in output

    receiver.secrets = [secret.encode(), new.encode()]
    alert(engine, settings)
    code, _, output = otacm(settings, "webhooks", "deliver")
    assert code == 0 and "1 delivered, 0 to retry, 0 given up" in output
    assert "left pending for another process: email (not configured here)" in output
    assert receiver.received[0].verified_with == receiver.secrets

    code, deliveries, _ = otacm(settings, "webhooks", "deliveries", "1")
    assert code == 0 and "delivered" in deliveries and "alert.failure_threshold" in deliveries

    code, _, output = otacm(settings, "webhooks", "remove", "1")
    assert code == 0 and "webhook 1 removed" in output
    code, _, output = otacm(settings, "webhooks", "remove", "1")
    assert code == 1 and "there is no webhook 1" in output

    entries = [r for r in audit_rows(engine) if r["object_type"] == "webhook"]
    assert [r["action"] for r in entries] == [
        "webhook.create",
        "webhook.rotate_secret",
        "webhook.delete",
    ]
    assert all(r["actor"].startswith("cli:") for r in entries)
    assert secret not in str(entries) and new not in str(entries)


def test_deliver_without_the_server_key_leaves_webhook_messages_pending(
    settings: Settings,
    engine: Engine,
    keys: KeyStore,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, output = otacm(settings, "webhooks", "add", receiver.url)
    assert code == 0, output
    alert(engine, settings)
    monkeypatch.setenv("OTACM_KEYS_DIR", str(settings.data_dir / "elsewhere"))
    get_settings.cache_clear()

    code, _, output = otacm(settings, "webhooks", "deliver")

    assert code == 0 and "0 delivered, 0 to retry, 0 given up" in output
    assert "webhooks (no server key in" in " ".join(output.split())
    assert receiver.received == []
    code, deliveries, _ = otacm(settings, "webhooks", "deliveries", "1")
    assert code == 0 and "pending" in deliveries


def test_add_refuses_a_bad_url_or_missing_keys(settings: Settings) -> None:
    code, _, output = otacm(settings, "webhooks", "add", "https://hooks.example.com/")
    assert code == 1 and "otacm keys init" in output
    KeyStore(settings.resolved_keys_dir()).init(None, allow_unencrypted_root=True)
    code, _, output = otacm(settings, "webhooks", "add", "http://hooks.example.com/")
    assert code == 1 and "url: must use https" in output
    code, _, output = otacm(settings, "webhooks", "add", "https://x.example/" + "a" * 2048)
    assert code == 1 and "url: longer than 2048 characters" in output
    assert "validation error" not in output.lower()
    code, _, output = otacm(settings, "webhooks", "add", "https://x.example/", "--event", "nope")
    assert code == 1 and "event_types" in output
