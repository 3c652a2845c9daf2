"""`/api/v1/webhooks`: who may use it, secrets shown once and never again, validation naming
the field, every change audited without the secret, deliveries listed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from otacm.config import Settings
from otacm.security.keys import KeyStore
from tests.notifications.conftest import Clock, Receiver, alert, deliver
from tests.security.helpers import audit_rows, bearer, database_text

URL = "https://hooks.example.com/otacm/T0KEN-IN-PATH?key=abc"


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/webhooks", json={"url": URL, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.parametrize("role", ["campaign_manager", "engineer", "fleet_admin", "viewer"])
def test_only_admins_manage_webhooks(
    role: str, anonymous_client: TestClient, make_operator: Callable[..., str], keys: KeyStore
) -> None:
    headers = bearer(make_operator(role))
    for method, path, body in [
        ("POST", "/api/v1/webhooks", {"url": URL}),
        ("GET", "/api/v1/webhooks", None),
        ("GET", "/api/v1/webhooks/1", None),
        ("PATCH", "/api/v1/webhooks/1", {"active": False}),
        ("DELETE", "/api/v1/webhooks/1", None),
        ("POST", "/api/v1/webhooks/1/rotate-secret", {}),
        ("GET", "/api/v1/webhooks/1/deliveries", None),
    ]:
        response = anonymous_client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"] == "forbidden"


def test_the_secret_is_shown_once_and_never_again(
    client: TestClient, engine: Engine, keys: KeyStore
) -> None:
    created = create(client, description="ops alerts", event_types=["alert.failure_threshold"])
    secret = created["secret"]
    assert len(secret) == 43 and secret.isascii()
    assert created["url"] == URL and created["active"] is True
    assert created["event_types"] == ["alert.failure_threshold"]
    assert created["created_by"] == "test-admin"
    assert [s["expires_at"] for s in created["secrets"]] == [None]

    listed = client.get("/api/v1/webhooks")
    one = client.get(f"/api/v1/webhooks/{created['id']}")
    assert listed.status_code == one.status_code == 200
    assert "secret" not in listed.json()[0] and "secret" not in one.json()
    assert secret not in listed.text + one.text
    # Not in the audit log, not in any table: stored only wrapped under the server key.
    assert secret not in json.dumps(audit_rows(engine), default=str)
    assert secret not in database_text(engine)


def test_without_a_server_key_creating_a_webhook_is_refused(client: TestClient) -> None:
    response = client.post("/api/v1/webhooks", json={"url": URL})
    assert response.status_code == 409
    assert response.json()["error"] == "keys_not_initialised"
    assert "otacm keys init" in response.json()["detail"]
    assert client.get("/api/v1/webhooks").json() == []


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/otacm",  # plain http beyond localhost
        "ftp://hooks.example.com/",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com/#part",
        "not a url",
        "",
        "https://hooks.example.com/" + "a" * 2030,  # 2056 characters: over 2048
    ],
)
def test_a_bad_url_is_refused_naming_the_field(
    client: TestClient, keys: KeyStore, url: str
) -> None:
    response = client.post("/api/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "url"
    assert response.json()["error"] == "invalid_webhook_url"
    created = create(client)
    response = client.patch(f"/api/v1/webhooks/{created['id']}", json={"url": url})
    assert response.status_code == 422 and response.json()["field"] == "url"
    assert response.json()["error"] == "invalid_webhook_url"


def test_a_url_of_2048_characters_is_taken(client: TestClient, keys: KeyStore) -> None:
    url = "https://hooks.example.com/" + "a" * (2048 - 26)
    assert len(url) == 2048
    assert create(client, url=url)["url"] == url
    response = client.post("/api/v1/webhooks", json={"url": url + "a"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_webhook_url"
    assert response.json()["detail"] == "url: longer than 2048 characters"


def test_other_bad_fields_are_named(client: TestClient, keys: KeyStore) -> None:
    response = client.post("/api/v1/webhooks", json={"url": URL, "event_types": ["alert.oops"]})
    assert response.status_code == 422
    assert (response.json()["error"], response.json()["field"]) == (
        "unknown_event_type",
        "event_types",
    )
    response = client.post("/api/v1/webhooks", json={"url": URL, "description": "x" * 501})
    assert response.status_code == 422 and response.json()["field"] == "description"
    created = create(client)
    response = client.patch(f"/api/v1/webhooks/{created['id']}", json={"active": None})
    assert response.status_code == 422 and response.json()["field"] == "active"


def test_changes_are_audited_without_secrets_or_url_paths(
    client: TestClient, engine: Engine, keys: KeyStore
) -> None:
    created = create(client)
    webhook = f"/api/v1/webhooks/{created['id']}"
    changed = client.patch(
        webhook,
        json={"description": "on-call", "event_types": ["alert.timeout_spike"], "active": False},
    )
    assert changed.status_code == 200
    assert changed.json()["description"] == "on-call" and changed.json()["active"] is False
    assert client.patch(webhook, json={"description": "on-call"}).status_code == 200  # no change
    rotated = client.post(f"{webhook}/rotate-secret", json={"grace_period_seconds": 3600})
    assert rotated.status_code == 200
    assert client.delete(webhook).status_code == 204
    assert client.get(webhook).status_code == 404

    entries = [r for r in audit_rows(engine) if r["object_type"] == "webhook"]
    assert [r["action"] for r in entries] == [
        "webhook.create",
        "webhook.update",
        "webhook.rotate_secret",
        "webhook.delete",
    ]
    assert {r["actor"] for r in entries} == {"test-admin"}
    assert entries[0]["after"]["url"] == "https://hooks.example.com"
    assert entries[1]["after"]["changed"] == ["event_types", "description", "active"]
    assert entries[2]["after"]["grace_period_seconds"] == 3600
    text = json.dumps(entries, default=str)
    for secret in (created["secret"], rotated.json()["secret"]):
        assert secret not in text
    assert "T0KEN-IN-PATH" not in text and "key=abc" not in text


def test_the_list_reads_every_endpoints_secrets_in_one_query(
    client: TestClient, engine: Engine, keys: KeyStore
) -> None:
    ids = [create(client, description=f"n{n}")["id"] for n in range(3)]
    rotate = f"/api/v1/webhooks/{ids[1]}/rotate-secret"
    assert client.post(rotate, json={"grace_period_seconds": 3600}).status_code == 200
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        listed = client.get("/api/v1/webhooks")
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert listed.status_code == 200
    assert [w["id"] for w in listed.json()] == ids
    assert [len(w["secrets"]) for w in listed.json()] == [1, 2, 1]
    rotated = listed.json()[1]["secrets"]
    assert rotated[0]["expires_at"] is None and rotated[1]["expires_at"] is not None
    assert listed.json() == [client.get(f"/api/v1/webhooks/{i}").json() for i in ids]
    assert sum("webhook_secrets" in s for s in statements) == 1


def test_rotation_keeps_one_previous_secret_for_the_grace_period(
    client: TestClient, keys: KeyStore
) -> None:
    created = create(client)
    rotate = f"/api/v1/webhooks/{created['id']}/rotate-secret"
    first = client.post(rotate)  # no body: the default grace of 24 hours
    assert first.status_code == 200
    body = first.json()
    assert len(body["secret"]) == 43 and body["secret"] != created["secret"]
    assert body["previous_secret_expires_at"] is not None
    listed = client.get(f"/api/v1/webhooks/{created['id']}").json()["secrets"]
    assert len(listed) == 2 and listed[0]["expires_at"] is None
    assert listed[1]["expires_at"] is not None
    # Rotating again within the grace period: the oldest stops at once, two remain.
    assert client.post(rotate, json={"grace_period_seconds": 60}).status_code == 200
    assert len(client.get(f"/api/v1/webhooks/{created['id']}").json()["secrets"]) == 2
    # No grace: only the new secret signs.
    now = client.post(rotate, json={"grace_period_seconds": 0}).json()
    assert now["previous_secret_expires_at"] is None
    assert len(client.get(f"/api/v1/webhooks/{created['id']}").json()["secrets"]) == 1
    too_long = client.post(rotate, json={"grace_period_seconds": 31 * 86400})
    assert too_long.status_code == 422 and too_long.json()["field"] == "grace_period_seconds"
    assert client.post("/api/v1/webhooks/999/rotate-secret").status_code == 404


def test_deliveries_are_listed_with_their_status(
    client: TestClient,
    settings: Settings,
    engine: Engine,
    keys: KeyStore,
    receiver: Receiver,
    clock: Clock,
) -> None:
    response = client.post("/api/v1/webhooks", json={"url": receiver.url})
    created = response.json()
    receiver.secrets = [created["secret"].encode()]
    receiver.statuses = [503]
    for _ in range(3):
        alert(engine, settings, now=clock.now)
    deliver(engine, settings, clock)  # one 503, two delivered
    deliveries = f"/api/v1/webhooks/{created['id']}/deliveries"

    page = client.get(deliveries, params={"limit": 2})
    assert page.status_code == 200
    items = page.json()["items"]
    assert len(items) == 2 and page.json()["next_cursor"]
    rest = client.get(deliveries, params={"cursor": page.json()["next_cursor"]}).json()
    everything = items + rest["items"]
    assert [i["id"] for i in everything] == sorted((i["id"] for i in everything), reverse=True)
    assert sorted(i["status"] for i in everything) == ["delivered", "delivered", "pending"]
    [pending] = client.get(deliveries, params={"status": "pending"}).json()["items"]
    assert (pending["attempts"], pending["last_status_code"]) == (1, 503)
    assert pending["message_type"] == "alert.failure_threshold"
    assert pending["next_attempt_at"] is not None and pending["response_snippet"] == "not now"
    assert client.get("/api/v1/webhooks/999/deliveries").status_code == 404

    # Removing the endpoint drops its pending message: nothing more is sent.
    assert client.delete(f"/api/v1/webhooks/{created['id']}").status_code == 204
    clock.advance(timedelta(hours=1))
    assert deliver(engine, settings, clock).attempted == 0
    assert len(receiver.received) == 3
