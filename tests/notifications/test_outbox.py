"""The outbox's message types, what it refuses, and the delivery loop inside `otacm serve`."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.alerts.service import SEVERITY, AlertKind
from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_write_session_factory, unit_of_work, utcnow
from otacm.notifications import outbox
from otacm.security.keys import KeyStore
from tests.notifications.conftest import Receiver, add_webhook, alert
from tests.notifications.conftest import outbox as outbox_rows

DOC = Path(__file__).parent.parent.parent / "docs" / "webhooks.md"


def test_every_alert_kind_has_a_message_type_and_the_doc_lists_them() -> None:
    assert tuple(f"alert.{k.value}" for k in AlertKind) == outbox.ALERT_MESSAGE_TYPES
    table = re.compile(r"^\| `(alert\.[a-z_]+)` \|.*\| (\w+) \|$", re.M)
    documented = dict(table.findall(DOC.read_text()))
    assert documented == {f"alert.{k.value}": SEVERITY[k] for k in AlertKind}


def test_enqueue_refuses_unknown_types_and_data_receivers_could_not_parse(
    engine: Engine,
) -> None:
    with unit_of_work(make_write_session_factory(engine)) as session:
        with pytest.raises(ValueError, match="not one of the message types"):
            outbox.enqueue(session, "campaign.paused", {}, now=utcnow(), email=False)
        with pytest.raises(ValueError):
            outbox.enqueue(
                session, "alert.timeout_spike", {"share": float("nan")}, now=utcnow(), email=True
            )
    assert outbox_rows(engine) == []


def test_the_server_delivers_on_its_own_every_interval(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver
) -> None:
    _, secret = add_webhook(engine, settings, receiver.url)
    receiver.secrets = [secret]
    receiver.clock = utcnow  # the server signs with the real time
    serving = settings.model_copy(update={"notification_interval": timedelta(milliseconds=50)})
    with TestClient(create_app(serving, engine)):
        alert(engine, settings)
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(receiver.received) == 1 and receiver.received[0].verified_with == [secret]
    assert [r.status for r in outbox_rows(engine)] == ["delivered"]


def test_a_nan_in_alert_details_does_not_fail_the_alert_on_sqlite(
    settings: Settings, engine: Engine, keys: KeyStore, receiver: Receiver
) -> None:
    """SQLite stores NaN in the alert's details (PostgreSQL's JSONB refuses the alert itself);
    the notification carries null instead of failing the engine's step."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL refuses NaN in the alert row already")
    add_webhook(engine, settings, receiver.url)
    alert(engine, settings, details={"share": float("nan"), "wave": 2})
    [row] = outbox_rows(engine)
    assert row.data["details"] == {"share": None, "wave": 2}
