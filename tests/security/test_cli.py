"""`otacm users` and `otacm tokens` as an administrator runs them at the terminal."""

from __future__ import annotations

import getpass
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from otacm.config import Settings
from otacm.db import utcnow
from otacm.security.models import User
from tests.security.helpers import audit_rows, bearer, otacm, table, token_row, user_row

PASSWORD = "twelve chars at least"
NEW_PASSWORD = "and another long one"


def create_user(settings: Settings, name: str = "alice", role: str = "engineer") -> None:
    code, _, output = otacm(
        settings, "users", "create", name, "--role", role, "--password", PASSWORD
    )
    assert code == 0, output


def create_token(settings: Settings, user: str = "alice", *args: str) -> tuple[str, str]:
    """(the secret, what the command said besides it)."""
    code, stdout, output = otacm(settings, "tokens", "create", "--user", user, *args)
    assert code == 0, output
    [secret] = stdout.split()  # stdout carries the secret alone: easy to pipe
    return secret, output


def whoami(client: TestClient, secret: str) -> int:
    return client.get("/api/v1/whoami", headers=bearer(secret)).status_code


def test_users_create_and_list(settings: Settings, engine: Engine) -> None:
    code, stdout, output = otacm(
        settings, "users", "create", "alice", "--role", "engineer", "--password", PASSWORD
    )
    assert code == 0, output
    assert "created engineer 'alice'" in output
    assert "otacm tokens create --user alice" in output
    assert PASSWORD not in output
    assert user_row(engine, "alice").role == "engineer"
    assert PasswordHasher().verify(user_row(engine, "alice").password_hash or "", PASSWORD)
    create_user(settings, "bob", "viewer")

    code, stdout, output = otacm(settings, "users", "list")
    assert code == 0, output
    assert [(u["name"], u["role"], u["disabled"], u["locked"]) for u in table(stdout)] == [
        ("alice", "engineer", "", ""),
        ("bob", "viewer", "", ""),
    ]
    assert PASSWORD not in output and "argon2" not in output

    [entry, _] = [r for r in audit_rows(engine) if r["action"] == "user.create"]
    assert entry["actor"] == f"cli:{getpass.getuser()}"
    assert (entry["actor_role"], entry["address"]) == ("cli", "local")
    assert entry["object_id"] == "alice" and entry["after"]["role"] == "engineer"


def test_users_create_prompts_for_the_password(settings: Settings, engine: Engine) -> None:
    code, stdout, output = otacm(
        settings, "users", "create", "carol", "--role", "viewer", stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert code == 0, output
    assert PASSWORD not in output  # the prompt does not echo
    assert PasswordHasher().verify(user_row(engine, "carol").password_hash or "", PASSWORD)


def test_users_create_refuses_a_bad_role_a_short_password_and_a_taken_name(
    settings: Settings, engine: Engine
) -> None:
    code, _, output = otacm(
        settings, "users", "create", "alice", "--role", "superuser", "--password", PASSWORD
    )
    assert code == 1
    assert "'superuser' is not a role" in output and "admin" in output
    code, _, output = otacm(
        settings, "users", "create", "alice", "--role", "admin", "--password", "xyzzy-42"
    )
    assert code == 1
    assert "at least 12 characters" in output
    assert "xyzzy-42" not in output  # the password is not echoed back
    assert audit_rows(engine) == []
    create_user(settings)
    code, _, output = otacm(
        settings, "users", "create", "alice", "--role", "admin", "--password", PASSWORD
    )
    assert code == 1 and "exists already" in output
    assert user_row(engine, "alice").role == "engineer"


def test_tokens_create_prints_the_secret_once_and_it_works(
    settings: Settings, anonymous_client: TestClient, engine: Engine
) -> None:
    create_user(settings)
    started = utcnow()
    secret, output = create_token(settings, "alice", "--expires-in", "30d", "--name", "laptop")
    assert secret.startswith("otacm_") and len(secret) == 49
    token = token_row(engine, secret)
    assert f"token {token.id} for 'alice'" in output and "shown only now" in output
    assert token.name == "laptop"
    assert token.expires_at is not None
    assert started + timedelta(days=30) <= token.expires_at <= utcnow() + timedelta(days=30)
    assert secret in output.splitlines()

    response = anonymous_client.get("/api/v1/whoami", headers=bearer(secret))
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "alice" and response.json()["role"] == "engineer"

    never, output = create_token(settings)
    assert "expires never" in output and token_row(engine, never).expires_at is None

    code, _, output = otacm(settings, "tokens", "create", "--user", "nobody")
    assert code == 1 and "no user named 'nobody'" in output
    code, _, output = otacm(
        settings, "tokens", "create", "--user", "alice", "--expires-in", "a fortnight"
    )
    assert code == 1 and "not a duration" in output


def test_tokens_list_never_shows_a_secret(settings: Settings, engine: Engine) -> None:
    create_user(settings)
    create_user(settings, "bob", "viewer")
    first, _ = create_token(settings, "alice", "--name", "laptop")
    second, _ = create_token(settings, "bob", "--name", "ci-runner", "--expires-in", "12h")
    code, stdout, output = otacm(settings, "tokens", "list")
    assert code == 0, output
    rows = table(stdout)
    assert [(t["user"], t["name"]) for t in rows] == [("alice", "laptop"), ("bob", "ci-runner")]
    assert rows[0]["expires"] == "never" and rows[1]["expires"] != "never"
    for secret, row in zip((first, second), rows, strict=True):
        assert row["starts with"] == token_row(engine, secret).prefix + "…"
        assert secret not in output
        assert secret[10:20] not in output
    code, stdout, _ = otacm(settings, "tokens", "list", "--user", "bob")
    assert [t["name"] for t in table(stdout)] == ["ci-runner"]


def test_tokens_revoke(settings: Settings, anonymous_client: TestClient, engine: Engine) -> None:
    create_user(settings)
    secret, _ = create_token(settings)
    keep, _ = create_token(settings)
    token_id = token_row(engine, secret).id
    code, _, output = otacm(settings, "tokens", "revoke", str(token_id))
    assert code == 0 and f"revoked token {token_id}" in output
    assert whoami(anonymous_client, secret) == 401
    assert whoami(anonymous_client, keep) == 200
    code, stdout, _ = otacm(settings, "tokens", "list")
    revoked = {int(t["id"]): t["revoked"] for t in table(stdout)}
    assert revoked[token_id] and not revoked[token_row(engine, keep).id]
    [entry] = [r for r in audit_rows(engine) if r["action"] == "token.revoke"]
    assert entry["object_id"] == str(token_id) and entry["actor"].startswith("cli:")


def test_users_disable_and_enable(
    settings: Settings, anonymous_client: TestClient, engine: Engine
) -> None:
    create_user(settings)
    secret, _ = create_token(settings)
    assert whoami(anonymous_client, secret) == 200
    code, _, output = otacm(settings, "users", "disable", "alice")
    assert code == 0 and "disabled 'alice'" in output
    assert whoami(anonymous_client, secret) == 401
    code, stdout, _ = otacm(settings, "users", "list")
    assert table(stdout)[0]["disabled"] == "yes"
    code, _, output = otacm(settings, "users", "enable", "alice")
    assert code == 0
    assert whoami(anonymous_client, secret) == 200
    code, stdout, _ = otacm(settings, "users", "list")
    assert table(stdout)[0]["disabled"] == ""
    code, _, output = otacm(settings, "users", "disable", "nobody")
    assert code == 1 and "no user named 'nobody'" in output
    updates = [r for r in audit_rows(engine) if r["action"] == "user.update"]
    assert [(r["before"]["disabled"], r["after"]["disabled"]) for r in updates] == [
        (False, True),
        (True, False),
    ]


def test_users_set_password(settings: Settings, engine: Engine) -> None:
    create_user(settings)
    old_hash = user_row(engine, "alice").password_hash or ""
    code, _, output = otacm(settings, "users", "set-password", "alice", "--password", NEW_PASSWORD)
    assert code == 0 and "password of 'alice' set" in output
    assert NEW_PASSWORD not in output
    new_hash = user_row(engine, "alice").password_hash or ""
    assert new_hash.startswith("$argon2id$") and new_hash != old_hash
    hasher = PasswordHasher()
    assert hasher.verify(new_hash, NEW_PASSWORD)
    with pytest.raises(VerificationError):
        hasher.verify(new_hash, PASSWORD)
    code, _, output = otacm(settings, "users", "set-password", "alice", "--password", "tiny")
    assert code == 1 and "at least 12 characters" in output
    assert user_row(engine, "alice").password_hash == new_hash
    [entry] = [r for r in audit_rows(engine) if r["action"] == "user.set_password"]
    assert entry["object_id"] == "alice"
    assert entry["before"] is None and entry["after"] is None


def test_users_unlock(settings: Settings, engine: Engine) -> None:
    create_user(settings)
    with engine.begin() as conn:
        conn.execute(
            update(User).values(failed_logins=5, locked_until=utcnow() + timedelta(minutes=15))
        )
    code, stdout, _ = otacm(settings, "users", "list")
    assert table(stdout)[0]["locked"] == "yes"
    code, _, output = otacm(settings, "users", "unlock", "alice")
    assert code == 0 and "unlocked 'alice'" in output
    user = user_row(engine, "alice")
    assert (user.failed_logins, user.locked_until) == (0, None)
    [entry] = [r for r in audit_rows(engine) if r["action"] == "user.unlock"]
    assert entry["before"]["locked"] is True and entry["after"]["locked"] is False


def test_cli_actions_keep_the_chain_intact(settings: Settings) -> None:
    create_user(settings)
    secret, _ = create_token(settings)
    assert otacm(settings, "users", "disable", "alice")[0] == 0
    code, _, output = otacm(settings, "audit", "verify")
    assert code == 0 and "3 entries verified" in output
