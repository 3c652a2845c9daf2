"""The audit log: what an operator action leaves behind, the hash chain, and reading it back."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, func, select, update

from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work, utcnow
from otacm.security import audit, service
from otacm.security.audit import Actor
from otacm.security.models import AuditEntry, User
from tests.builders import jsonl, vehicle, vin
from tests.conftest import TEST_PASSWORD
from tests.security.helpers import (
    audit_rows,
    bearer,
    console_login,
    database_text,
    login_form,
    otacm,
    post_login,
)

NEW_PASSWORD = "a brand new passphrase 42"
AUDIT = AuditEntry.__table__


def by_request(engine: Engine, request_id: str) -> list[dict[str, Any]]:
    return [r for r in audit_rows(engine) if r["request_id"] == request_id]


def one(rows: list[dict[str, Any]], action: str) -> dict[str, Any]:
    found = [r for r in rows if r["action"] == action]
    assert len(found) == 1, rows
    return found[0]


def verify(engine: Engine) -> tuple[int, audit.ChainBreak | None]:
    with unit_of_work(make_session_factory(engine)) as session:
        return audit.verify(session)


def test_api_actions_record_who_when_where_what_and_the_change(
    client: TestClient, engine: Engine
) -> None:
    started = utcnow()
    response = client.post(
        "/api/v1/users",
        json={"name": "alice", "role": "viewer", "password": NEW_PASSWORD},
        headers={"X-Request-ID": "req-user-create"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == "req-user-create"
    response = client.post(
        "/api/v1/tokens",
        json={"user": "alice", "name": "ci", "expires_in": "30d"},
        headers={"X-Request-ID": "req-token-create"},
    )
    assert response.status_code == 201, response.text
    token = response.json()
    response = client.delete(
        f"/api/v1/tokens/{token['id']}", headers={"X-Request-ID": "req-token-revoke"}
    )
    assert response.status_code == 200, response.text
    response = client.post(
        "/api/v1/fleet/imports",
        content=jsonl([vehicle(1)]),
        headers={"Content-Type": "application/x-ndjson", "X-Request-ID": "req-import"},
    )
    assert response.status_code == 200, response.text
    response = client.post(
        f"/api/v1/vehicles/{vin(1)}/status",
        json={"status": "scrapped", "reason": "written off after a crash"},
        headers={"X-Request-ID": "req-status"},
    )
    assert response.status_code == 200, response.text
    finished = utcnow()

    user_create = one(by_request(engine, "req-user-create"), "user.create")
    token_create = one(by_request(engine, "req-token-create"), "token.create")
    token_revoke = one(by_request(engine, "req-token-revoke"), "token.revoke")
    status = one(by_request(engine, "req-status"), "vehicle.set_status")
    imports = by_request(engine, "req-import")
    assert {r["action"] for r in imports} >= {"fleet.import.start", "fleet.import.finish"}
    for entry in (user_create, token_create, token_revoke, status, *imports):
        assert entry["actor"] == "test-admin"
        assert entry["actor_role"] == "admin"
        assert entry["address"] == "testclient"
        assert entry["outcome"] == "success"
        assert started <= entry["at"] <= finished

    assert (user_create["object_type"], user_create["object_id"]) == ("user", "alice")
    assert user_create["before"] is None
    assert user_create["after"] == {
        "name": "alice",
        "role": "viewer",
        "disabled": False,
        "locked": False,
    }
    assert (token_create["object_type"], token_create["object_id"]) == ("token", str(token["id"]))
    assert token_create["after"]["user"] == "alice"
    assert token_create["after"]["name"] == "ci"
    assert token_create["after"]["expires_at"] is not None
    assert (token_revoke["object_type"], token_revoke["object_id"]) == ("token", str(token["id"]))
    assert (status["object_type"], status["object_id"]) == ("vehicle", vin(1))
    assert status["before"] == {"status": "active"}
    assert status["after"] == {"status": "scrapped"}
    assert status["detail"] == "written off after a crash"
    assert verify(engine) == (len(audit_rows(engine)), None)


def test_a_request_without_a_request_id_gets_one(client: TestClient, engine: Engine) -> None:
    response = client.patch("/api/v1/users/test-admin", json={"role": "admin"})
    assert response.status_code == 200, response.text
    entry = audit_rows(engine)[-1]
    assert entry["action"] == "user.update"
    assert entry["request_id"]
    assert entry["request_id"] == response.headers["X-Request-ID"]  # the caller can quote it


def test_a_refused_attempt_is_recorded_and_changes_nothing(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    viewer = make_operator("viewer", "vera")
    response = anonymous_client.post(
        "/api/v1/users",
        json={"name": "mallory", "role": "admin", "password": NEW_PASSWORD},
        headers={**bearer(viewer), "X-Request-ID": "req-refused"},
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    [entry] = by_request(engine, "req-refused")
    assert entry["outcome"] == "refused"
    assert (entry["actor"], entry["actor_role"], entry["address"]) == (
        "vera",
        "viewer",
        "testclient",
    )
    assert entry["action"] == "POST /api/v1/users"
    assert "users.manage" in entry["detail"]
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(User).where(User.name == "mallory")) is None
    assert verify(engine)[1] is None


def test_a_refused_token_for_someone_else_is_recorded(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    viewer = make_operator("viewer", "vera")
    make_operator("admin", "ada")
    response = anonymous_client.post(
        "/api/v1/tokens",
        json={"user": "ada", "name": "borrowed"},
        headers={**bearer(viewer), "X-Request-ID": "req-borrow"},
    )
    assert response.status_code == 403
    assert [r["outcome"] for r in by_request(engine, "req-borrow")] == ["refused"]


def test_a_write_refused_for_want_of_the_csrf_token_is_recorded(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("admin", "ada")
    console_login(anonymous_client, "ada", TEST_PASSWORD)
    response = anonymous_client.post(
        "/api/v1/users",
        json={"name": "mallory", "role": "admin", "password": NEW_PASSWORD},
        headers={"X-Request-ID": "req-forged"},
    )
    assert response.status_code == 403
    [entry] = by_request(engine, "req-forged")
    assert (entry["actor"], entry["outcome"]) == ("ada", "refused")
    assert entry["action"] == "POST /api/v1/users" and "CSRF" in entry["detail"]


def test_console_logins_record_the_request_id(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("admin", "ada")
    for password, request_id in (("wrong but long enough", "req-bad"), (TEST_PASSWORD, "req-ok")):
        anonymous_client.post(
            "/login",
            data={"name": "ada", "password": password, "csrf": login_form(anonymous_client)},
            headers={"X-Request-ID": request_id},
            follow_redirects=False,
        )
    assert [r["outcome"] for r in by_request(engine, "req-bad")] == ["refused"]
    assert [r["outcome"] for r in by_request(engine, "req-ok")] == ["success"]


def test_a_failed_action_leaves_no_success_entry(client: TestClient, engine: Engine) -> None:
    before = audit_rows(engine)
    attempts = [
        ("post", "/api/v1/users", {"name": "bob", "role": "viewer", "password": "short"}, 422),
        ("post", "/api/v1/users", {"name": "bob", "role": "pilot", "password": NEW_PASSWORD}, 422),
        (
            "post",
            "/api/v1/users",
            {"name": "test-admin", "role": "viewer", "password": NEW_PASSWORD},
            409,
        ),
        ("post", f"/api/v1/vehicles/{vin(7)}/status", {"status": "inactive", "reason": "x"}, 404),
        ("post", "/api/v1/users/test-admin/password", {"password": "short"}, 422),
        ("post", "/api/v1/tokens", {"expires_in": "soon"}, 422),
        ("delete", "/api/v1/tokens/424242", None, 404),
    ]
    for method, path, body, status in attempts:
        response = client.request(method, path, json=body)
        assert response.status_code == status, (path, response.text)
    assert audit_rows(engine) == before
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(User).where(User.name == "bob")) is None


def test_an_action_that_rolls_back_takes_its_entry_with_it(engine: Engine) -> None:
    factory = make_session_factory(engine)
    actor = Actor("someone", "admin", "local", "req-rollback")
    with pytest.raises(RuntimeError), unit_of_work(factory) as session:
        service.create_user(session, actor, "ghost", "viewer", NEW_PASSWORD)
        raise RuntimeError("the rest of the action failed")
    with unit_of_work(factory) as session:
        assert session.scalar(select(User).where(User.name == "ghost")) is None
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0
        # ...and with it nothing to roll back, the action and its entry land together.
        service.create_user(session, actor, "ghost", "viewer", NEW_PASSWORD)
    assert [r["action"] for r in audit_rows(engine)] == ["user.create"]
    assert verify(engine) == (1, None)


# --- the hash chain -------------------------------------------------------------------------


def write_chain(engine: Engine, entries: int = 6) -> list[int]:
    """A chain of entries of different shapes, each written by `audit.record`; their ids."""
    with unit_of_work(make_session_factory(engine)) as session:
        for i in range(entries):
            audit.record(
                session,
                Actor(f"operator-{i % 3}", "admin", f"10.0.0.{i}", f"req-{i}"),
                "vehicle.set_status" if i % 2 else "user.update",
                object_type="vehicle",
                object_id=f"VIN{i}",
                before={"status": "active", "n": i},
                after={"status": "inactive", "n": i, "nested": {"k": [i, "x"]}},
                outcome="refused" if i == 4 else "success",
                detail=None if i == 2 else f"change number {i}",
            )
    ids = [r["id"] for r in audit_rows(engine)]
    assert len(ids) == entries
    return ids


def _swap_contents(engine: Engine, first: int, second: int) -> None:
    rows = {r["id"]: r for r in audit_rows(engine) if r["id"] in (first, second)}
    with engine.begin() as conn:
        for target, source in ((first, second), (second, first)):
            values = {k: v for k, v in rows[source].items() if k != "id"}
            conn.execute(update(AUDIT).where(AUDIT.c.id == target).values(**values))


TAMPERING: dict[str, tuple[Callable[[Engine, list[int]], None], int, str]] = {
    # name: (how, index of the entry verify must name, what the reason says)
    "changed detail": (
        lambda e, ids: _execute(e, update(AUDIT).where(AUDIT.c.id == ids[3]).values(detail="x")),
        3,
        "changed",
    ),
    "detail set where there was none": (
        lambda e, ids: _execute(e, update(AUDIT).where(AUDIT.c.id == ids[2]).values(detail="x")),
        2,
        "changed",
    ),
    "changed after": (
        lambda e, ids: _execute(
            e,
            update(AUDIT)
            .where(AUDIT.c.id == ids[1])
            .values(after={"status": "active", "n": 1, "nested": {"k": [1, "x"]}}),
        ),
        1,
        "changed",
    ),
    "changed outcome": (
        lambda e, ids: _execute(
            e, update(AUDIT).where(AUDIT.c.id == ids[4]).values(outcome="success")
        ),
        4,
        "changed",
    ),
    "changed actor of the first entry": (
        lambda e, ids: _execute(e, update(AUDIT).where(AUDIT.c.id == ids[0]).values(actor="x")),
        0,
        "changed",
    ),
    "changed time": (
        lambda e, ids: _execute(
            e,
            update(AUDIT).where(AUDIT.c.id == ids[2]).values(at=datetime(2020, 1, 1, tzinfo=UTC)),
        ),
        2,
        "changed",
    ),
    "removed middle entry": (
        lambda e, ids: _execute(e, delete(AUDIT).where(AUDIT.c.id == ids[2])),
        3,
        "removed",
    ),
    "removed first entry": (
        lambda e, ids: _execute(e, delete(AUDIT).where(AUDIT.c.id == ids[0])),
        1,
        "removed",
    ),
    "swapped neighbours": (lambda e, ids: _swap_contents(e, ids[2], ids[3]), 2, "reordered"),
    "swapped distant entries": (lambda e, ids: _swap_contents(e, ids[1], ids[4]), 1, "reordered"),
    "entry hash recomputed over changed content": (
        lambda e, ids: _rehash(e, ids[3], detail="rewritten"),
        4,
        "removed",
    ),
}


def _execute(engine: Engine, statement: Any) -> None:
    with engine.begin() as conn:
        assert conn.execute(statement).rowcount == 1


def _rehash(engine: Engine, entry_id: int, **changes: Any) -> None:
    """Change an entry and give it a matching entry_hash: only the next link can tell."""
    with unit_of_work(make_session_factory(engine)) as session:
        entry = session.get(AuditEntry, entry_id)
        assert entry is not None
        for key, value in changes.items():
            setattr(entry, key, value)
        entry.entry_hash = audit._entry_hash(entry)


def test_a_clean_chain_verifies(engine: Engine) -> None:
    write_chain(engine, 7)
    assert verify(engine) == (7, None)
    with unit_of_work(make_session_factory(engine)) as session:
        assert audit.verify(session, batch=2) == (7, None)  # across batch boundaries too


def test_an_empty_log_verifies(engine: Engine) -> None:
    assert verify(engine) == (0, None)


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampering_is_detected_at_the_first_broken_entry(engine: Engine, tampering: str) -> None:
    ids = write_chain(engine)
    how, broken_index, reason = TAMPERING[tampering]
    how(engine, ids)
    checked, broken = verify(engine)
    assert broken is not None
    assert broken.entry_id == ids[broken_index]
    assert reason in broken.reason
    assert checked == len([r for r in audit_rows(engine) if r["id"] < broken.entry_id])
    with unit_of_work(make_session_factory(engine)) as session:
        assert audit.verify(session, batch=2)[1] == broken


def test_removing_the_newest_entries_is_detected_with_an_anchor(
    settings: Settings, engine: Engine
) -> None:
    ids = write_chain(engine)
    code, stdout, output = otacm(settings, "audit", "verify")
    assert code == 0, output
    anchor = stdout.strip().splitlines()[-1]
    assert anchor.startswith(f"{ids[-1]}:")
    _execute(engine, delete(AUDIT).where(AUDIT.c.id == ids[-1]))
    # Without the anchor a shortened chain still verifies: that is what the anchor is for.
    assert verify(engine)[1] is None
    code, _, output = otacm(settings, "audit", "verify", "--anchor", anchor)
    assert code == 1 and f"entry {ids[-1]}" in output and "cut short" in output


def test_cli_verify_exits_0_on_a_clean_log_and_1_naming_the_broken_entry(
    settings: Settings, engine: Engine
) -> None:
    ids = write_chain(engine)
    code, _, output = otacm(settings, "audit", "verify")
    assert code == 0, output
    assert "intact" in output and f"{len(ids)} entries" in output
    _execute(engine, update(AUDIT).where(AUDIT.c.id == ids[3]).values(detail="tampered"))
    code, _, output = otacm(settings, "audit", "verify")
    assert code == 1, output
    assert f"entry {ids[3]}" in output and "changed" in output
    assert "3 entries before it verified" in output


# --- reading the log ------------------------------------------------------------------------


def fill_log(engine: Engine) -> datetime:
    """Entries from alice, bob and carol before and after the returned moment."""
    factory = make_session_factory(engine)
    with unit_of_work(factory) as session:
        for i in range(5):
            audit.record(session, Actor("alice", "admin", "a"), "user.create", object_id=f"u{i}")
        audit.record(session, Actor("bob", "viewer", "b"), "POST /api/v1/users", outcome="refused")
    with unit_of_work(factory) as session:
        moment = session.scalars(select(AuditEntry.at).order_by(AuditEntry.id.desc())).first()
    assert moment is not None
    moment += timedelta(microseconds=1)
    while utcnow() <= moment:
        pass
    with unit_of_work(factory) as session:
        for i in range(3):
            audit.record(session, Actor("carol", "admin", "c"), "token.create", object_id=i)
        audit.record(session, Actor("bob", "viewer", "b"), "DELETE /api/v1/x", outcome="refused")
    return moment


def entries(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_audit_filters(client: TestClient, engine: Engine) -> None:
    moment = fill_log(engine)
    assert [e["object_id"] for e in entries(client, actor="alice")] == [
        "u4",
        "u3",
        "u2",
        "u1",
        "u0",
    ]
    # test-setup made the admin's token before the log was filled
    assert {e["actor"] for e in entries(client, action="token.create")} == {"carol", "test-setup"}
    assert [e["object_id"] for e in entries(client, action="token.create", actor="carol")] == [
        "2",
        "1",
        "0",
    ]
    refused = entries(client, outcome="refused")
    assert [(e["actor"], e["action"]) for e in refused] == [
        ("bob", "DELETE /api/v1/x"),
        ("bob", "POST /api/v1/users"),
    ]
    since = entries(client, since=moment.isoformat())
    assert {e["actor"] for e in since} == {"carol", "bob"} and len(since) == 4
    until = entries(client, until=moment.isoformat(), actor="bob")
    assert [e["action"] for e in until] == ["POST /api/v1/users"]
    both = entries(client, since=moment.isoformat(), outcome="refused")
    assert [e["action"] for e in both] == ["DELETE /api/v1/x"]
    z_form = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(entries(client, since=z_form)) == 4
    other_zone = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert len(entries(client, since=other_zone.isoformat())) == 4
    assert entries(client, actor="nobody") == []
    response = client.get("/api/v1/audit", params={"outcome": "maybe"})
    assert response.status_code == 422


def test_audit_time_filters_without_a_time_zone_are_not_a_server_error(
    client: TestClient, engine: Engine
) -> None:
    fill_log(engine)
    lenient = TestClient(client.app, raise_server_exceptions=False, headers=client.headers)
    for param in ("since", "until"):
        response = lenient.get("/api/v1/audit", params={param: "2020-01-01T00:00:00"})
        assert response.status_code in (200, 422), response.text


def test_audit_pages_through_a_cursor(client: TestClient, engine: Engine) -> None:
    fill_log(engine)
    every = [r["id"] for r in reversed(audit_rows(engine))]
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/api/v1/audit", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == every
    assert pages == -(-len(every) // 3)
    response = client.get("/api/v1/audit", params={"actor": "alice", "limit": 2})
    first = response.json()
    assert [e["object_id"] for e in first["items"]] == ["u4", "u3"]
    response = client.get(
        "/api/v1/audit", params={"actor": "alice", "limit": 2, "cursor": first["next_cursor"]}
    )
    assert [e["object_id"] for e in response.json()["items"]] == ["u2", "u1"]
    response = client.get("/api/v1/audit", params={"cursor": "not-a-cursor"})
    assert response.status_code == 422 and response.json()["field"] == "cursor"


def test_audit_as_csv(client: TestClient, engine: Engine) -> None:
    moment = fill_log(engine)
    response = client.get("/api/v1/audit", params={"format": "csv", "actor": "bob"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["action"] for r in rows] == ["POST /api/v1/users", "DELETE /api/v1/x"]  # oldest first
    assert {r["outcome"] for r in rows} == {"refused"}
    stored = {r["id"]: r for r in audit_rows(engine)}
    for row in rows:
        assert row["entry_hash"] == stored[int(row["id"])]["entry_hash"]
    response = client.get("/api/v1/audit", params={"format": "csv", "since": moment.isoformat()})
    assert len(list(csv.DictReader(io.StringIO(response.text)))) == 4
    response = client.get("/api/v1/audit", params={"format": "csv"})
    everything = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in everything] == sorted(stored)


# --- secrets ----------------------------------------------------------------------------------


def test_no_secret_reaches_the_audit_log_the_logs_or_an_answer(
    client: TestClient,
    make_operator: Callable[..., str],
    settings: Settings,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[tuple[str, str]] = []

    def send(c: TestClient, method: str, path: str, **kwargs: Any) -> Any:
        response = c.request(method, path, **kwargs)
        answers.append((f"{method} {path}", response.text + str(response.headers)))
        return response

    first_password, second_password = "first secret passphrase", "second secret passphrase"
    wrong_password = "a wrong but long guess"
    assert (
        send(
            client,
            "POST",
            "/api/v1/users",
            json={"name": "alice", "role": "admin", "password": first_password},
        ).status_code
        == 201
    )
    assert (
        send(
            client, "POST", "/api/v1/users/alice/password", json={"password": second_password}
        ).status_code
        == 204
    )
    created = send(client, "POST", "/api/v1/tokens", json={"user": "alice", "name": "laptop"})
    assert created.status_code == 201
    api_secret = created.json()["token"]
    fixture_secret = make_operator("viewer", "vera")
    admin_secret = client.headers["Authorization"].removeprefix("Bearer ")
    code, stdout, _ = otacm(settings, "tokens", "create", "--user", "vera")
    assert code == 0
    cli_secret = stdout.strip().splitlines()[-1]
    cli_password = "cli chosen passphrase"
    assert otacm(settings, "users", "set-password", "vera", "--password", cli_password)[0] == 0

    console = TestClient(client.app)
    assert post_login(console, "alice", wrong_password, login_form(console)).status_code == 401
    console_csrf = console_login(console, "alice", second_password)
    session_secret = console.cookies["otacm_session"]
    for secret in (api_secret, fixture_secret, cli_secret):
        response = send(TestClient(client.app), "GET", "/api/v1/whoami", headers=bearer(secret))
        assert response.status_code == 200, response.text
    send(console, "GET", "/api/v1/whoami")
    send(console, "POST", "/api/v1/tokens", json={}, headers={"X-CSRF-Token": console_csrf})
    send(client, "GET", "/api/v1/tokens", params={"user": "*"})
    send(client, "GET", "/api/v1/users")
    send(client, "GET", "/api/v1/users/alice")
    send(client, "GET", "/api/v1/audit", params={"limit": 1000})
    send(client, "GET", "/api/v1/audit", params={"format": "csv"})
    send(client, "DELETE", f"/api/v1/tokens/{created.json()['id']}")
    send(TestClient(client.app), "GET", "/api/v1/whoami", headers=bearer(api_secret))
    send(client, "POST", "/api/v1/users", json={"name": "x", "role": "viewer", "password": "tiny"})
    send(
        client, "POST", "/api/v1/users", json={"name": "x", "role": "nope", "password": "p" * 1001}
    )

    secrets = {
        "first password": first_password,
        "second password": second_password,
        "wrong password": wrong_password,
        "CLI password": cli_password,
        "API-created token": api_secret,
        "service-created token": fixture_secret,
        "admin token": admin_secret,
        "CLI-created token": cli_secret,
        "console session": session_secret,
        "fixture password": TEST_PASSWORD,
    }
    audit_text = str(audit_rows(engine))
    everything = database_text(engine)
    assert "user.set_password" in audit_text and "login" in audit_text
    for label, secret in secrets.items():
        assert secret not in audit_text, f"{label} in the audit log"
        assert secret not in everything, f"{label} stored in the database"
        assert secret not in caplog.text, f"{label} logged"
        for request, answer in answers:
            if request == "POST /api/v1/tokens" and secret == api_secret:
                continue  # the one answer that hands the new secret out
            assert secret not in answer, f"{label} in the answer to {request}"
    assert sum(api_secret in answer for _, answer in answers) == 1
