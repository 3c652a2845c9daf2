"""Where update artifacts are kept: local disk or an S3-compatible bucket, behind one interface.

`storage_from_settings` builds the configured backend; everything else works with
`ArtifactStorage` and never needs to know which one it has.
"""

from __future__ import annotations

from otacm.config import Settings, StorageBackend
from otacm.updates.storage.base import (
    ArtifactMissing,
    ArtifactStorage,
    ByteStream,
    InvalidStorageKey,
    ObjectInfo,
    StorageError,
    StorageWriter,
    validate_key,
)
from otacm.updates.storage.local import LocalStorage

__all__ = [
    "ArtifactMissing",
    "ArtifactStorage",
    "ByteStream",
    "InvalidStorageKey",
    "LocalStorage",
    "ObjectInfo",
    "StorageError",
    "StorageWriter",
    "storage_from_settings",
    "validate_key",
]


def storage_from_settings(settings: Settings) -> ArtifactStorage:
    """The configured backend. Does no I/O: call `check()` to find out whether it is usable."""
    if settings.storage_backend == StorageBackend.S3:
        # boto3 takes a noticeable time to import; local installations never pay for it.
        from otacm.updates.storage.s3 import S3Storage, make_client

        client = make_client(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        return S3Storage(client, settings.s3_bucket, settings.s3_prefix)
    return LocalStorage(settings.resolved_storage_path())
