"""Update catalog test fixtures: cheap Argon2, and an S3 endpoint (moto's standalone server).

Every test here creates at least one operator (the `client` fixture's admin); password hashing
is tested in tests/security, so here it only needs to be quick. The S3 backend is exercised over
real HTTP against moto's server, started once per session on a free port.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from moto.server import ThreadedMotoServer

from otacm.security import service
from otacm.updates.storage.s3 import make_client
from tests.live_server import live_server, live_url  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def fake_aws_environment(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Fake credentials, and no profile or config file of the machine running the tests."""
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    mp.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_aws_environment(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One client for the session (the client reads its credentials when it is made)."""
    with pytest.MonkeyPatch.context() as mp:
        fake_aws_environment(mp, tmp_path_factory.mktemp("aws"))
        return make_client(endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"otacm-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name
