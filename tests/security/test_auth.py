"""Authentication: the first operator, API tokens, console logins, CSRF and guessing limits."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, func, select, update

from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work, utcnow
from otacm.security import service
from otacm.security.auth import LAST_USED_GRANULARITY
from otacm.security.models import ApiToken, ConsoleSession, LoginFailure, User
from tests.conftest import TEST_PASSWORD
from tests.security.helpers import (
    audit_rows,
    bearer,
    console_login,
    database_text,
    login_form,
    otacm,
    post_login,
    set_cookie_headers,
    token_row,
    user_row,
)

WHOAMI = "/api/v1/whoami"
WRONG_PASSWORD = "not the right passphrase"


def whoami(app_client: TestClient, secret: str) -> int:
    """The status of `GET /api/v1/whoami` with `secret`, from a client with no cookies."""
    with TestClient(app_client.app) as fresh:
        response = fresh.get(WHOAMI, headers=bearer(secret))
        assert secret not in response.text
        return response.status_code


def from_address(app_client: TestClient, address: str) -> TestClient:
    return TestClient(app_client.app, client=(address, 40000))


def has_session_cookie(response: Response) -> bool:
    return any(h.startswith("otacm_session=") for h in set_cookie_headers(response))


# --- the first operator -------------------------------------------------------------------


def test_a_fresh_installation_refuses_everyone_until_the_first_operator_exists(
    anonymous_client: TestClient, settings: Settings, engine: Engine
) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0  # no default account
    for headers in ({}, bearer("otacm_guess"), {"Cookie": "otacm_session=guess"}):
        for method, path in (("GET", "/api/v1/vehicles"), ("POST", "/api/v1/users")):
            response = anonymous_client.request(method, path, headers=headers, json={})
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "no_operators"
            assert "otacm users create" in response.json()["detail"]
    assert anonymous_client.get("/").status_code == 503
    assert audit_rows(engine) == []

    code, _, output = otacm(
        settings, "users", "create", "root", "--role", "admin", "--password", TEST_PASSWORD
    )
    assert code == 0, output
    code, stdout, output = otacm(settings, "tokens", "create", "--user", "root")
    assert code == 0, output
    secret = stdout.strip().splitlines()[-1]
    # The same running application notices the first operator at once.
    response = anonymous_client.get(WHOAMI)
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"
    response = anonymous_client.get(WHOAMI, headers=bearer(secret))
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "root" and response.json()["role"] == "admin"


# --- API tokens ---------------------------------------------------------------------------


def test_tokens_are_random_256_bit_secrets_stored_only_as_sha256(
    client: TestClient, engine: Engine
) -> None:
    answers = [client.post("/api/v1/tokens", json={"name": f"t{i}"}) for i in range(3)]
    secrets = [a.json()["token"] for a in answers]
    assert len(set(secrets)) == 3
    dump = database_text(engine)
    for answer, secret in zip(answers, secrets, strict=True):
        assert answer.status_code == 201
        assert re.fullmatch(r"otacm_[A-Za-z0-9_-]{43}", secret), secret
        assert len(base64.urlsafe_b64decode(secret.removeprefix("otacm_") + "=")) == 32
        row = token_row(engine, secret)
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert row.prefix == secret[:10] == answer.json()["prefix"]
        assert secret not in dump
        assert secret[len(row.prefix) :] not in dump
        assert whoami(client, secret) == 200
    listed = client.get("/api/v1/tokens").json()
    assert {t["name"] for t in listed} >= {"t0", "t1", "t2"}
    assert all("token" not in t for t in listed)
    assert not any(s in client.get("/api/v1/tokens").text for s in secrets)


@pytest.mark.real_argon2
def test_passwords_are_stored_as_argon2id(client: TestClient, engine: Engine) -> None:
    password = "a long and private passphrase"
    response = client.post(
        "/api/v1/users", json={"name": "alice", "role": "viewer", "password": password}
    )
    assert response.status_code == 201, response.text
    stored = user_row(engine, "alice").password_hash
    assert stored is not None and stored.startswith("$argon2id$")
    memory = int(re.search(r"\$m=(\d+),", stored).group(1))  # type: ignore[union-attr]
    assert memory >= 19_456  # OWASP's minimum for Argon2id, in KiB
    hasher = PasswordHasher()
    assert hasher.verify(stored, password)
    with pytest.raises(VerificationError):
        hasher.verify(stored, WRONG_PASSWORD)
    other = client.post(
        "/api/v1/users", json={"name": "bob", "role": "viewer", "password": password}
    )
    assert other.status_code == 201
    assert user_row(engine, "bob").password_hash != stored  # salted
    assert password not in database_text(engine)


def test_an_expired_token_is_refused(
    client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    expired = make_operator("viewer", "vera", expires_in=timedelta(seconds=-1))
    response = TestClient(client.app).get(WHOAMI, headers=bearer(expired))
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert "expired" in response.json()["detail"]

    before = utcnow()
    response = client.post("/api/v1/tokens", json={"user": "vera", "expires_in": "1h"})
    assert response.status_code == 201, response.text
    secret = response.json()["token"]
    expires_at = token_row(engine, secret).expires_at
    assert expires_at is not None
    assert before + timedelta(hours=1) <= expires_at <= utcnow() + timedelta(hours=1)
    assert whoami(client, secret) == 200
    with engine.begin() as conn:
        conn.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == service.digest(secret))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert whoami(client, secret) == 401


def test_a_tokens_last_use_is_recorded_at_most_every_granularity(
    client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    secret = make_operator("viewer", "vic")
    assert token_row(engine, secret).last_used_at is None
    before = utcnow()
    assert whoami(client, secret) == 200
    first = token_row(engine, secret).last_used_at
    assert first is not None and before <= first <= utcnow()
    # Within LAST_USED_GRANULARITY a use writes nothing.
    assert whoami(client, secret) == 200
    assert token_row(engine, secret).last_used_at == first
    # Once the recorded use is older than that, the next use is recorded.
    stale = utcnow() - LAST_USED_GRANULARITY - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == service.digest(secret))
            .values(last_used_at=stale)
        )
    before = utcnow()
    assert whoami(client, secret) == 200
    recorded = token_row(engine, secret).last_used_at
    assert recorded is not None and before <= recorded <= utcnow()
    # The API shows it.
    [listed] = client.get("/api/v1/tokens", params={"user": "vic"}).json()
    assert listed["last_used_at"] is not None


def test_a_zero_lifetime_is_not_a_token_that_never_expires(client: TestClient) -> None:
    response = client.post("/api/v1/tokens", json={"expires_in": "0s"})
    if response.status_code == 201:
        assert response.json()["expires_at"] is not None
        assert whoami(client, response.json()["token"]) == 401
    else:
        assert response.status_code == 422


def test_an_absurd_lifetime_is_a_validation_error(client: TestClient) -> None:
    lenient = TestClient(client.app, raise_server_exceptions=False, headers=client.headers)
    for duration in ("1000000000d", "999999999d", "99999999999999999999s"):
        response = lenient.post("/api/v1/tokens", json={"expires_in": duration})
        assert response.status_code == 422, (duration, response.status_code)


def test_revocation_through_the_api(
    client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    first = make_operator("viewer", "vic")
    second = make_operator("viewer", "vic")
    viewer = TestClient(client.app, headers=bearer(first))
    listed = viewer.get("/api/v1/tokens").json()
    assert [t["user"] for t in listed] == ["vic", "vic"]
    second_id = token_row(engine, second).id
    response = viewer.delete(f"/api/v1/tokens/{second_id}")
    assert response.status_code == 200 and response.json()["revoked_at"] is not None
    assert whoami(client, second) == 401
    response = TestClient(client.app).get(WHOAMI, headers=bearer(second))
    assert "revoked" in response.json()["detail"]
    assert whoami(client, first) == 200

    # Another operator's token does not exist as far as a viewer knows, and stays valid.
    admin_secret = client.headers["Authorization"].removeprefix("Bearer ")
    admin_token_id = token_row(engine, admin_secret).id
    assert viewer.delete(f"/api/v1/tokens/{admin_token_id}").status_code == 404
    assert viewer.get("/api/v1/tokens", params={"user": "test-admin"}).status_code == 403
    assert viewer.post("/api/v1/tokens", json={"user": "test-admin"}).status_code == 403
    assert whoami(client, admin_secret) == 200

    # An admin may revoke anyone's.
    response = client.delete(f"/api/v1/tokens/{token_row(engine, first).id}")
    assert response.status_code == 200
    assert whoami(client, first) == 401


def test_revocation_through_the_cli(
    client: TestClient, make_operator: Callable[..., str], settings: Settings, engine: Engine
) -> None:
    secret = make_operator("engineer", "erin")
    assert whoami(client, secret) == 200
    token_id = token_row(engine, secret).id
    code, _, output = otacm(settings, "tokens", "revoke", str(token_id))
    assert code == 0, output
    assert whoami(client, secret) == 401
    code, _, output = otacm(settings, "tokens", "revoke", "424242")
    assert code == 1 and "no token with id 424242" in output


def test_a_disabled_user_is_locked_out_until_enabled_again(
    client: TestClient, make_operator: Callable[..., str]
) -> None:
    secret = make_operator("engineer", "eve")
    console = TestClient(client.app)
    console_login(console, "eve", TEST_PASSWORD)
    assert console.get(WHOAMI).status_code == 200

    response = client.patch("/api/v1/users/eve", json={"disabled": True})
    assert response.status_code == 200 and response.json()["disabled"] is True
    assert whoami(client, secret) == 401
    response = TestClient(client.app).get(WHOAMI, headers=bearer(secret))
    assert "disabled" in response.json()["detail"]
    assert console.get(WHOAMI).status_code == 401  # the console session too
    assert console.get("/", follow_redirects=False).headers["location"] == "/login"
    other_console = TestClient(client.app)
    response = post_login(other_console, "eve", TEST_PASSWORD, login_form(other_console))
    assert response.status_code == 401 and not has_session_cookie(response)

    response = client.patch("/api/v1/users/eve", json={"disabled": False})
    assert response.status_code == 200 and response.json()["disabled"] is False
    assert whoami(client, secret) == 200


# --- the console ------------------------------------------------------------------------------


def test_console_login_needs_the_login_forms_csrf_token(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("admin", "ada")
    page = anonymous_client.get("/login")
    assert page.status_code == 200
    [csrf_cookie] = [h for h in set_cookie_headers(page) if h.startswith("otacm_login_csrf=")]
    assert "httponly" in csrf_cookie.lower() and "samesite=strict" in csrf_cookie.lower()
    assert "path=/login" in csrf_cookie.lower()
    form_csrf = login_form(anonymous_client)

    for csrf in (None, "", "forged-" + form_csrf[7:]):
        response = post_login(anonymous_client, "ada", TEST_PASSWORD, csrf)
        assert response.status_code == 403, response.text
        assert not has_session_cookie(response)
        assert TEST_PASSWORD not in response.text
    # The form's token without its cookie (another site posting a stolen token) is no better.
    form_csrf = login_form(anonymous_client)
    jarless = TestClient(anonymous_client.app)
    response = post_login(jarless, "ada", TEST_PASSWORD, form_csrf)
    assert response.status_code == 403 and not has_session_cookie(response)
    assert not any(r["action"] == "login" for r in audit_rows(engine))

    response = post_login(anonymous_client, "ada", TEST_PASSWORD, form_csrf)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    [session_cookie] = [h for h in set_cookie_headers(response) if h.startswith("otacm_session=")]
    attributes = session_cookie.lower()
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert f"max-age={int(service.SESSION_LIFETIME.total_seconds())}" in attributes
    assert "secure" not in attributes.split(";", 1)[1]  # plain http in this test
    secret = anonymous_client.cookies["otacm_session"]
    with unit_of_work(make_session_factory(engine)) as session:
        stored = session.scalar(select(ConsoleSession))
        assert stored is not None and stored.session_hash == service.digest(secret)
    assert secret not in database_text(engine)

    home = anonymous_client.get("/", follow_redirects=False)
    assert home.status_code == 200
    assert "ada" in home.text and "(admin)" in home.text
    login = [r for r in audit_rows(engine) if r["action"] == "login"]
    assert [(r["actor"], r["outcome"]) for r in login] == [("ada", "success")]


def test_the_session_cookie_is_secure_over_https(
    anonymous_client: TestClient, make_operator: Callable[..., str]
) -> None:
    make_operator("viewer", "vera")
    https = TestClient(anonymous_client.app, base_url="https://testserver")
    response = post_login(https, "vera", TEST_PASSWORD, login_form(https))
    assert response.status_code == 303
    [cookie] = [h for h in set_cookie_headers(response) if h.startswith("otacm_session=")]
    assert "; secure" in cookie.lower()


def test_logout_needs_the_sessions_csrf_token(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("admin", "ada")
    csrf = console_login(anonymous_client, "ada", TEST_PASSWORD)
    secret = anonymous_client.cookies["otacm_session"]

    for forged in ({}, {"csrf": "not-the-token"}):
        response = anonymous_client.post("/logout", data=forged, follow_redirects=False)
        assert response.status_code == 403
        assert anonymous_client.get("/", follow_redirects=False).status_code == 200

    response = anonymous_client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    home = anonymous_client.get("/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/login"
    # The old cookie is dead on the server, not just forgotten by the browser.
    replay = TestClient(anonymous_client.app, cookies={"otacm_session": secret})
    assert replay.get(WHOAMI).status_code == 401
    assert [r["action"] for r in audit_rows(engine)][-2:] == ["login", "logout"]


def test_an_expired_console_session_is_refused(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("viewer", "vera")
    console_login(anonymous_client, "vera", TEST_PASSWORD)
    assert anonymous_client.get(WHOAMI).status_code == 200
    with engine.begin() as conn:
        conn.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert anonymous_client.get(WHOAMI).status_code == 401
    assert anonymous_client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_api_writes_with_the_session_cookie_need_the_csrf_header(
    anonymous_client: TestClient, make_operator: Callable[..., str]
) -> None:
    make_operator("admin", "ada")
    csrf = console_login(anonymous_client, "ada", TEST_PASSWORD)
    assert anonymous_client.get(WHOAMI).json()["name"] == "ada"  # reads need no token
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        response = anonymous_client.post("/api/v1/tokens", json={"name": "x"}, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
        assert response.json()["field"] == "X-CSRF-Token"
    response = anonymous_client.post(
        "/api/v1/tokens", json={"name": "from-console"}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 201, response.text
    assert response.json()["user"] == "ada"


def test_a_viewers_forged_posts_are_refused(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    secret = make_operator("viewer", "vera")
    csrf = console_login(anonymous_client, "vera", TEST_PASSWORD)
    user = {"name": "mallory", "role": "admin", "password": "a long enough passphrase"}
    # A cross-site form: the browser sends the cookie, but no CSRF header.
    forged: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/users", {"json": user}),
        ("POST", "/api/v1/users", {"data": user}),
        ("POST", "/api/v1/tokens", {"data": {"user": "vera"}}),
        ("PATCH", "/api/v1/users/vera", {"json": {"role": "admin"}}),
        ("DELETE", "/api/v1/tokens/1", {}),
    ]
    for method, path, kwargs in forged:
        response = anonymous_client.request(method, path, **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["field"] == "X-CSRF-Token"
    response = anonymous_client.post("/logout", data={}, follow_redirects=False)
    assert response.status_code == 403
    # With the right token the role still decides, and the refusal is recorded.
    response = anonymous_client.post("/api/v1/users", json=user, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    response = anonymous_client.post("/api/v1/users", json=user, headers=bearer(secret))
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    refused = [r for r in audit_rows(engine) if r["outcome"] == "refused"]
    assert [(r["actor"], r["action"]) for r in refused][-2:] == [
        ("vera", "POST /api/v1/users"),
        ("vera", "POST /api/v1/users"),
    ]
    with unit_of_work(make_session_factory(engine)) as session:
        assert session.scalar(select(User).where(User.name == "mallory")) is None
        assert session.scalar(select(User.role).where(User.name == "vera")) == "viewer"


# --- guessing ---------------------------------------------------------------------------------


def test_repeated_wrong_passwords_lock_the_account_until_an_admin_unlocks_it(
    client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("viewer", "victim")
    # Five guesses from five addresses: the account counts, wherever they come from.
    for attempt in range(service.ACCOUNT_LOCK_AFTER):
        guesser = from_address(client, f"203.0.113.{attempt}")
        response = post_login(guesser, "victim", WRONG_PASSWORD, login_form(guesser))
        assert response.status_code == 401, response.text
        assert not has_session_cookie(response)
        assert WRONG_PASSWORD not in response.text
    assert "locked" in response.text
    assert client.get("/api/v1/users/victim").json()["locked"] is True

    owner = from_address(client, "198.51.100.7")
    response = post_login(owner, "victim", TEST_PASSWORD, login_form(owner))
    assert response.status_code == 401 and not has_session_cookie(response)
    assert "locked" in response.text

    response = client.post("/api/v1/users/victim/unlock")
    assert response.status_code == 200 and response.json()["locked"] is False
    response = post_login(owner, "victim", TEST_PASSWORD, login_form(owner))
    assert response.status_code == 303 and has_session_cookie(response)
    assert user_row(engine, "victim").failed_logins == 0

    entries = [r for r in audit_rows(engine) if r["object_id"] == "victim"]
    logins = [(r["outcome"], r["detail"]) for r in entries if r["action"] == "login"]
    assert logins == [
        *[("refused", "wrong password")] * (service.ACCOUNT_LOCK_AFTER - 1),
        ("refused", "wrong password; account now locked"),
        ("refused", "account locked after repeated failures"),
        ("success", None),
    ]
    [unlock] = [r for r in entries if r["action"] == "user.unlock"]
    assert unlock["actor"] == "test-admin"
    assert unlock["before"]["locked"] is True and unlock["after"]["locked"] is False


def test_too_many_failures_from_one_address_refuse_every_account_from_it(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("viewer", "vera")
    guesser = from_address(anonymous_client, "192.0.2.66")
    for attempt in range(service.ADDRESS_LIMIT - 1):
        response = post_login(guesser, f"user{attempt}", WRONG_PASSWORD, login_form(guesser))
        assert response.status_code == 401
    # One short of the limit a right password still works (and does not wipe the count).
    assert post_login(guesser, "vera", TEST_PASSWORD, login_form(guesser)).status_code == 303
    guesser.cookies.clear()
    assert post_login(guesser, "nobody", WRONG_PASSWORD, login_form(guesser)).status_code == 401

    response = post_login(guesser, "vera", TEST_PASSWORD, login_form(guesser))
    assert response.status_code == 429, response.text
    assert not has_session_cookie(response)
    assert "too many" in response.text
    last = audit_rows(engine)[-1]
    assert (last["action"], last["outcome"], last["address"]) == ("login", "refused", "192.0.2.66")

    # Another address is not affected...
    elsewhere = from_address(anonymous_client, "192.0.2.67")
    assert post_login(elsewhere, "vera", TEST_PASSWORD, login_form(elsewhere)).status_code == 303
    # ...and the address may try again once its failures leave the window.
    with engine.begin() as conn:
        conn.execute(
            update(LoginFailure).values(at=utcnow() - service.ADDRESS_WINDOW - timedelta(seconds=1))
        )
    assert post_login(guesser, "vera", TEST_PASSWORD, login_form(guesser)).status_code == 303


def test_after_a_lockout_runs_out_one_typo_does_not_lock_again(
    anonymous_client: TestClient, make_operator: Callable[..., str], engine: Engine
) -> None:
    make_operator("viewer", "victim")
    for _ in range(service.ACCOUNT_LOCK_AFTER):
        post_login(anonymous_client, "victim", WRONG_PASSWORD, login_form(anonymous_client))
    assert user_row(engine, "victim").locked_until is not None
    with engine.begin() as conn:  # the 15 minutes pass
        conn.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
    post_login(anonymous_client, "victim", WRONG_PASSWORD, login_form(anonymous_client))
    response = post_login(anonymous_client, "victim", TEST_PASSWORD, login_form(anonymous_client))
    assert response.status_code == 303, "one typo after the lock ran out locked it again"


def test_the_login_form_escapes_what_it_echoes(anonymous_client: TestClient) -> None:
    name = '"><script>alert(1)</script>'
    response = post_login(anonymous_client, name, WRONG_PASSWORD, login_form(anonymous_client))
    assert response.status_code == 401
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;" in response.text


# --- user names the API must be able to address ----------------------------------------------


def test_a_user_named_star_sees_only_their_own_tokens(
    client: TestClient, make_operator: Callable[..., str]
) -> None:
    response = client.post(
        "/api/v1/users", json={"name": "*", "role": "viewer", "password": TEST_PASSWORD}
    )
    if response.status_code == 422:
        return  # refusing the name is a fix too
    star = TestClient(client.app, headers=bearer(make_operator("viewer", "*")))
    for params in ({}, {"user": "*"}):
        listed = star.get("/api/v1/tokens", params=params)
        assert listed.status_code in (200, 403)
        if listed.status_code == 200:
            assert {t["user"] for t in listed.json()} == {"*"}, params


def test_every_user_the_api_creates_the_api_can_disable(client: TestClient) -> None:
    response = client.post(
        "/api/v1/users", json={"name": "ops/night", "role": "admin", "password": TEST_PASSWORD}
    )
    if response.status_code == 422:
        return  # refusing the name is a fix too
    assert response.status_code == 201
    response = client.patch("/api/v1/users/ops%2Fnight", json={"disabled": True})
    assert response.status_code == 200, response.text
