"""TUF test fixtures: a key store, the image repository, the live server for real clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from otacm.config import Settings
from otacm.security.keys import KeyStore
from otacm.security.tuf.repository import ImageRepository
from tests.live_server import live_server, live_url  # noqa: F401  (fixtures)
from tests.security.tuf.helpers import PASSPHRASE


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    """Every role's key, the root key encrypted with PASSPHRASE."""
    store = KeyStore(tmp_path / "keys")
    store.init(PASSPHRASE)
    return store


@pytest.fixture
def image(settings: Settings) -> ImageRepository:
    return ImageRepository(settings)
