"""Artifact storage: one contract, checked against local disk and against S3 over HTTP.

The S3 backend talks to moto's standalone server (started once per session on a free port),
so requests, signing, multipart uploads and presigned URLs go through real HTTP.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from otacm.config import Settings
from otacm.updates.storage import (
    ArtifactMissing,
    ArtifactStorage,
    InvalidStorageKey,
    LocalStorage,
    StorageError,
    storage_from_settings,
    validate_key,
)
from otacm.updates.storage.s3 import MIN_PART_SIZE, S3Storage

PART = MIN_PART_SIZE  # the smallest part S3 (and moto) accept
MULTIPART_SIZE = 2 * PART + 123_457  # three parts, the last one short


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def store(storage: ArtifactStorage, key: str, data: bytes) -> None:
    with storage.writer(key) as writer:
        writer.write(data)
        writer.commit()


def read_all(storage: ArtifactStorage, key: str, **kwargs: Any) -> bytes:
    with storage.read(key, **kwargs) as stream:
        return b"".join(stream)


@pytest.fixture
def s3_storage(s3_client: Any, bucket: str) -> S3Storage:
    return S3Storage(
        s3_client,
        bucket,
        prefix="otacm/",
        part_size=PART,
        copy_threshold=PART,
        copy_part_size=PART,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "artifacts")
    s3: S3Storage = request.getfixturevalue("s3_storage")
    return s3


def assert_nothing_left_but(storage: ArtifactStorage, keys: list[str]) -> None:
    """Only `keys` are stored, and no multipart upload is pending."""
    assert [info.key for info in storage.list()] == keys
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []


def assert_nothing_left(storage: ArtifactStorage) -> None:
    """No object, no temporary file and no pending multipart upload remains."""
    assert list(storage.list()) == []
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []
        assert storage.client.list_objects_v2(Bucket=storage.bucket).get("Contents", []) == []
    elif isinstance(storage, LocalStorage) and storage.root.exists():
        assert [p for p in storage.root.rglob("*") if p.is_file()] == []


# --- writing and reading ---------------------------------------------------------------------


def test_write_commit_then_read_whole_and_ranges(storage: ArtifactStorage) -> None:
    data = payload(1000)
    with storage.writer("artifacts/abc") as writer:
        writer.write(data[:400])
        writer.write(memoryview(data)[400:])
        assert writer.bytes_written == 1000
        writer.commit()

    assert read_all(storage, "artifacts/abc") == data
    for start, end in [
        (0, 1),  # first byte
        (500, 600),  # middle
        (990, None),  # last bytes, to the end
        (995, 1000),  # last bytes, explicit end
        (900, 5000),  # end beyond the size
        (0, None),
        (999, 1000),
    ]:
        assert read_all(storage, "artifacts/abc", start=start, end=end) == data[start:end]
    for start, end in [(1000, None), (2000, None), (1500, 1600), (10, 10)]:
        assert read_all(storage, "artifacts/abc", start=start, end=end) == b""


def test_read_yields_chunks_of_at_most_chunk_size(storage: ArtifactStorage) -> None:
    data = payload(10_000)
    store(storage, "a", data)
    chunks = list(storage.read("a", start=5, end=9_000, chunk_size=1024))
    assert b"".join(chunks) == data[5:9_000]
    assert len(chunks) >= 9 and all(0 < len(c) <= 1024 for c in chunks)


def test_read_rejects_bad_ranges(storage: ArtifactStorage) -> None:
    store(storage, "a", b"abc")
    for kwargs in [{"start": -1}, {"start": 2, "end": 1}, {"chunk_size": 0}]:
        with pytest.raises(ValueError):
            storage.read("a", **kwargs)


def test_empty_object(storage: ArtifactStorage) -> None:
    with storage.writer("empty") as writer:
        writer.commit()
    assert read_all(storage, "empty") == b""
    info = storage.stat("empty")
    assert info is not None and info.size == 0


def test_not_visible_before_commit(storage: ArtifactStorage) -> None:
    with storage.writer("staging/upload") as writer:
        writer.write(payload(100))
        assert storage.stat("staging/upload") is None
        assert list(storage.list()) == []
        with pytest.raises(ArtifactMissing):
            storage.read("staging/upload")
        writer.commit()
        assert storage.stat("staging/upload") is not None


def test_exception_inside_writer_leaves_nothing(storage: ArtifactStorage) -> None:
    with pytest.raises(RuntimeError, match="interrupted"), storage.writer("staging/x") as writer:
        # More than one part, so that S3 has a multipart upload in progress to abort.
        writer.write(payload(PART + 10))
        writer.write(payload(1000, seed=1))
        raise RuntimeError("upload interrupted")
    assert storage.stat("staging/x") is None
    assert_nothing_left(storage)


def test_leaving_without_commit_leaves_nothing(storage: ArtifactStorage) -> None:
    with storage.writer("staging/x") as writer:
        writer.write(payload(2 * PART))
    assert storage.stat("staging/x") is None
    assert_nothing_left(storage)
    with pytest.raises(RuntimeError):
        writer.write(b"more")


def test_commit_is_final(storage: ArtifactStorage) -> None:
    with storage.writer("a") as writer:
        writer.write(b"one")
        writer.commit()
        with pytest.raises(RuntimeError):
            writer.write(b"two")
        with pytest.raises(RuntimeError):
            writer.commit()
    assert read_all(storage, "a") == b"one"


def test_commit_replaces_an_existing_object(storage: ArtifactStorage) -> None:
    store(storage, "a", b"old contents")
    store(storage, "a", b"new")
    assert read_all(storage, "a") == b"new"


def test_multi_part_object(storage: ArtifactStorage) -> None:
    data = payload(MULTIPART_SIZE)
    with storage.writer("artifacts/big") as writer:
        step = 1024 * 1024 + 7  # writes that straddle part boundaries
        for offset in range(0, len(data), step):
            writer.write(data[offset : offset + step])
        writer.commit()
    assert writer.bytes_written == MULTIPART_SIZE

    assert read_all(storage, "artifacts/big") == data
    assert (
        read_all(storage, "artifacts/big", start=PART - 3, end=PART + 3)
        == data[PART - 3 : PART + 3]
    )
    info = storage.stat("artifacts/big")
    assert info is not None and info.size == MULTIPART_SIZE
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key="otacm/artifacts/big")
        assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    assert_nothing_left_but(storage, ["artifacts/big"])


# --- stat, list, delete, copy ------------------------------------------------------------------


def test_stat(storage: ArtifactStorage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    store(storage, "artifacts/abc", b"12345")
    info = storage.stat("artifacts/abc")
    assert info is not None
    assert (info.key, info.size) == ("artifacts/abc", 5)
    assert info.modified_at.utcoffset() == timedelta(0)
    assert before <= info.modified_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert storage.stat("artifacts/missing") is None
    assert storage.stat("artifacts") is None  # a "directory" is not an object


def test_read_of_missing_key_raises_at_once(storage: ArtifactStorage) -> None:
    for kwargs in [{}, {"start": 5}, {"start": 0, "end": 10}, {"start": 3, "end": 3}]:
        with pytest.raises(ArtifactMissing) as caught:
            storage.read("artifacts/missing", **kwargs)  # not only on first iteration
        assert caught.value.status_code == 404
        assert caught.value.code == "artifact_missing"


def test_delete_is_idempotent(storage: ArtifactStorage) -> None:
    store(storage, "staging/a", b"x")
    storage.delete("staging/a")
    assert storage.stat("staging/a") is None
    storage.delete("staging/a")
    storage.delete("never/existed")


def test_list_by_prefix_with_sizes(storage: ArtifactStorage) -> None:
    objects = {
        "artifacts/ab12": 3,
        "artifacts/ab34": 4,
        "artifacts/cd56": 5,
        "artifacts-old": 6,
        "staging/one": 7,
        "staging/nested/two": 8,
    }
    for key, size in objects.items():
        store(storage, key, payload(size))

    def listed(prefix: str) -> list[tuple[str, int]]:
        return [(info.key, info.size) for info in storage.list(prefix)]

    assert listed("artifacts/ab") == [("artifacts/ab12", 3), ("artifacts/ab34", 4)]
    assert listed("staging/") == [("staging/nested/two", 8), ("staging/one", 7)]
    assert listed("") == sorted(objects.items())  # key order, as S3 lists
    assert listed("artifacts") == sorted(objects.items())[:4]
    assert listed("nothing/") == []
    assert all(info.modified_at.tzinfo is not None for info in storage.list())


def test_copy(storage: ArtifactStorage) -> None:
    data = payload(2048)
    store(storage, "staging/upload", data)
    storage.copy("staging/upload", "artifacts/sha")
    assert read_all(storage, "staging/upload") == data  # the source stays
    assert read_all(storage, "artifacts/sha") == data
    # Deleting one key leaves the other.
    storage.delete("staging/upload")
    assert read_all(storage, "artifacts/sha") == data

    storage.copy("artifacts/sha", "deeper/new/place")  # parent "directories" are created
    assert read_all(storage, "deeper/new/place") == data
    storage.copy("deeper/new/place", "deeper/new/place")  # onto itself: nothing happens
    assert read_all(storage, "deeper/new/place") == data

    with pytest.raises(ArtifactMissing):
        storage.copy("staging/upload", "artifacts/other")
    assert storage.stat("artifacts/other") is None
    with pytest.raises(ArtifactMissing):
        storage.copy("deeper", "artifacts/other")  # a "directory" is not an object
    assert storage.stat("artifacts/other") is None
    assert_nothing_left_but(storage, ["artifacts/sha", "deeper/new/place"])


def test_copy_keeps_an_object_already_at_the_destination(storage: ArtifactStorage) -> None:
    """Destinations are content-addressed: what is there is the same file, and other rows may
    point at it. It is never replaced, and the source is then not even needed."""
    store(storage, "artifacts/sha", b"published first")
    store(storage, "staging/upload", b"published second")
    storage.copy("staging/upload", "artifacts/sha")
    assert read_all(storage, "artifacts/sha") == b"published first"
    assert read_all(storage, "staging/upload") == b"published second"
    storage.copy("staging/gone", "artifacts/sha")  # no ArtifactMissing: nothing to copy
    assert read_all(storage, "artifacts/sha") == b"published first"


def test_a_local_copy_is_a_hard_link(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "artifacts")
    store(storage, "staging/upload", payload(4096))
    storage.copy("staging/upload", "artifacts/sha")
    staged, published = storage.local_path("staging/upload"), storage.local_path("artifacts/sha")
    assert staged.stat().st_ino == published.stat().st_ino  # no byte was copied
    assert published.stat().st_nlink == 2


def test_copy_of_a_large_object_copies_in_parts(s3_storage: S3Storage) -> None:
    data = payload(MULTIPART_SIZE)  # above the lowered copy_threshold
    store(s3_storage, "staging/big", data)
    s3_storage.copy("staging/big", "artifacts/big")
    assert read_all(s3_storage, "staging/big") == data
    assert read_all(s3_storage, "artifacts/big") == data
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="otacm/artifacts/big")
    assert head["ETag"].strip('"').endswith("-3")  # copied as three parts, not downloaded
    assert_nothing_left_but(s3_storage, ["artifacts/big", "staging/big"])


# --- keys ------------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../b",
    "a/./b",
    "a//b",
    "a/",
    ".hidden",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "x" * 256,
    "/".join(["abcdefgh"] * 120),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected_everywhere(storage: ArtifactStorage, key: str) -> None:
    attempts = [
        lambda: storage.writer(key),
        lambda: storage.read(key),
        lambda: storage.stat(key),
        lambda: storage.delete(key),
        lambda: storage.copy(key, "fine"),
        lambda: storage.copy("fine", key),
        lambda: storage.local_path(key),
        lambda: storage.presigned_url(key, expires=timedelta(minutes=1)),
    ]
    store(storage, "fine", b"x")
    for attempt in attempts:
        with pytest.raises(InvalidStorageKey):
            attempt()
    assert read_all(storage, "fine") == b"x"


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "a/../", "a\\"])
def test_invalid_list_prefixes_are_rejected(storage: ArtifactStorage, prefix: str) -> None:
    with pytest.raises(InvalidStorageKey):
        list(storage.list(prefix))


@pytest.mark.parametrize(
    "key",
    ["a", "staging/3f2a9c1e-8d4b-4f6a-9e2d-1c0b7a6f5e4d", "artifacts/" + "ab" * 32, "a.b/c-d"],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


# --- serving files ---------------------------------------------------------------------------


def test_local_path(storage: ArtifactStorage) -> None:
    store(storage, "artifacts/abc", b"contents")
    path = storage.local_path("artifacts/abc")
    if isinstance(storage, LocalStorage):
        assert path is not None and path.is_absolute()
        assert path.read_bytes() == b"contents"
        with pytest.raises(ArtifactMissing):
            storage.local_path("artifacts/missing")
    else:
        assert path is None


def test_presigned_url_downloads_the_object(storage: ArtifactStorage) -> None:
    data = payload(3000)
    store(storage, "artifacts/abc", data)
    url = storage.presigned_url(
        "artifacts/abc", expires=timedelta(minutes=5), filename='ecu "brake" fw ü.bin'
    )
    if isinstance(storage, LocalStorage):
        assert url is None
        return
    assert url is not None
    response = httpx.get(url)  # no credentials: the signature in the URL is the authority
    assert response.status_code == 200
    assert response.content == data
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="ecu _brake_ fw _.bin"')
    assert "filename*=UTF-8''ecu%20%22brake%22%20fw%20%C3%BC.bin" in disposition
    with pytest.raises(ValueError):
        storage.presigned_url("artifacts/abc", expires=timedelta(days=8))


def test_closing_an_unread_stream_releases_it(storage: ArtifactStorage) -> None:
    store(storage, "a", b"abc")
    stream = storage.read("a")
    stream.close()
    assert list(stream) == []


# --- configuration ---------------------------------------------------------------------------


def test_local_storage_from_settings(tmp_path: Path) -> None:
    storage = storage_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path / "artifacts"
    storage.check()
    assert storage.root.is_dir()
    store(storage, "artifacts/abc", b"x")
    assert (tmp_path / "artifacts" / "artifacts" / "abc").read_bytes() == b"x"


def test_s3_storage_from_settings(s3_endpoint: str, bucket: str, aws_env: None) -> None:
    settings = Settings(
        storage_backend="s3", s3_bucket=bucket, s3_prefix="fleet", s3_endpoint_url=s3_endpoint
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    storage.check()
    store(storage, "artifacts/abc", b"x")
    keys = storage.client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in keys] == ["fleet/artifacts/abc"]


def test_missing_bucket_is_named(s3_endpoint: str, aws_env: None) -> None:
    settings = Settings(
        storage_backend="s3", s3_bucket="no-such-bucket-here", s3_endpoint_url=s3_endpoint
    )
    storage = storage_from_settings(settings)  # no I/O yet
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as caught:
        storage.check()
    assert (caught.value.status_code, caught.value.code) == (503, "storage_unavailable")
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist"):
        store(storage, "a", b"x")
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist"):
        storage.read("a")


def test_s3_requires_a_bucket() -> None:
    with pytest.raises(StorageError, match="OTACM_S3_BUCKET"):
        storage_from_settings(Settings(storage_backend="s3", s3_bucket=""))


def test_unreachable_s3_is_a_storage_error(aws_env: None) -> None:
    # A port nobody listens on: connection refused, quickly.
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    storage = S3Storage(client, "bucket")
    with pytest.raises(StorageError, match="S3 bucket 'bucket': cannot reach it"):
        storage.check()
    with pytest.raises(StorageError):
        storage.read("a")


def test_sweep_incomplete_removes_what_a_dead_writer_left(storage: ArtifactStorage) -> None:
    """A process that died mid-upload never aborts its writer: the sweep cleans up after it."""
    writer = storage.writer("staging/cut-off")
    writer.write(payload(MULTIPART_SIZE))  # a temporary file, or a pending multipart upload
    future = datetime.now(UTC) + timedelta(hours=1)
    if not isinstance(storage, S3Storage):  # moto reports every multipart upload as from 2010
        assert storage.sweep_incomplete("staging/", datetime.now(UTC) - timedelta(hours=1)) == 0
    assert storage.sweep_incomplete("other/", future) == 0
    assert storage.sweep_incomplete("staging/", future) == 1
    assert_nothing_left(storage)
    assert storage.sweep_incomplete("staging/", future) == 0
