"""Artifact storage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), through boto3.

Writers buffer one part in memory: objects smaller than a part go up with a single PUT, larger
ones as a multipart upload that is completed on commit and aborted otherwise, so a half-written
artifact never becomes visible and no parts are left to bill for. Copies are made on the server
side.
Keys are stored under the configured prefix (`<prefix>/<key>`).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from otacm.updates.storage.base import (
    DEFAULT_CHUNK_SIZE,
    ArtifactMissing,
    ArtifactStorage,
    ByteStream,
    Data,
    InvalidStorageKey,
    MiB,
    ObjectInfo,
    StorageError,
    StorageWriter,
    check_range,
    validate_key,
    validate_prefix,
)

GiB = 1024 * MiB
# S3's limits: every part but the last is 5 MiB to 5 GiB, at most 10,000 parts, and a single
# CopyObject copies at most 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_PRESIGN_EXPIRY = timedelta(days=7)  # the longest a SigV4 signature can be valid
CONTENT_TYPE = "application/octet-stream"
_MISSING_CODES = ("NoSuchKey", "404", "NotFound")
_CHECKSUMS = (
    "ChecksumCRC32",
    "ChecksumCRC32C",
    "ChecksumCRC64NVME",
    "ChecksumSHA1",
    "ChecksumSHA256",
)

S3Client = Any  # boto3 ships no type hints


def make_client(*, endpoint_url: str = "", region: str = "us-east-1") -> S3Client:
    """A thread-safe S3 client; credentials come from boto3's usual chain."""
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        # "standard" retries throttling and transient errors with backoff, unlike "legacy".
        "retries": {"mode": "standard", "max_attempts": 5},
        "connect_timeout": 10,
        "read_timeout": 60,
        # Each download streamed through the server holds a connection while a worker thread
        # sends it; the default pool of 10 would make concurrent downloads queue.
        "max_pool_connections": 32,
    }
    if endpoint_url:
        # S3-compatible servers are usually addressed by path (no wildcard DNS for buckets),
        # and several reject the checksum trailers newer botocore sends by default.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=endpoint_url or None, region_name=region, config=Config(**options)
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _content_disposition(filename: str) -> str:
    # RFC 6266: a plain ASCII fallback for old clients, the exact name as RFC 5987 `filename*`.
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\/' else "_" for c in filename
    )
    quoted = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quoted}"


class S3Writer(StorageWriter):
    def __init__(self, storage: S3Storage, key: str) -> None:
        super().__init__(key)
        self._storage = storage
        self._name = storage.object_name(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _next_part_size(self) -> int:
        # Parts grow by one base size every 1,000 parts, so the 10,000-part limit only bites past
        # 55,000 base parts (880 GiB with 16 MiB parts) while small objects keep small parts.
        return min(self._storage.part_size * (1 + len(self._parts) // 1000), MAX_PART_SIZE)

    def _write(self, data: Data) -> None:
        self._buffer += data
        while len(self._buffer) >= (size := self._next_part_size()):
            body = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._upload_part(body)

    def _upload_part(self, body: bytes) -> None:
        s = self._storage
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"artifact {self.key!r} needs more than {MAX_PARTS} parts")
        try:
            if self._upload_id is None:
                self._upload_id = s.client.create_multipart_upload(
                    Bucket=s.bucket, Key=self._name, ContentType=CONTENT_TYPE
                )["UploadId"]
            answer = s.client.upload_part(
                Bucket=s.bucket,
                Key=self._name,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        except (BotoCoreError, ClientError) as exc:
            raise s.failure(exc, f"upload artifact {self.key!r}") from exc
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        part.update({name: answer[name] for name in _CHECKSUMS if name in answer})
        self._parts.append(part)

    def _commit(self) -> None:
        s = self._storage
        if self._upload_id is None:
            body, self._buffer = bytes(self._buffer), bytearray()
            try:
                s.client.put_object(
                    Bucket=s.bucket, Key=self._name, Body=body, ContentType=CONTENT_TYPE
                )
            except (BotoCoreError, ClientError) as exc:
                raise s.failure(exc, f"store artifact {self.key!r}") from exc
            return
        if self._buffer:
            body, self._buffer = bytes(self._buffer), bytearray()
            self._upload_part(body)
        try:
            s.client.complete_multipart_upload(
                Bucket=s.bucket,
                Key=self._name,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (BotoCoreError, ClientError) as exc:
            raise s.failure(exc, f"complete artifact {self.key!r}") from exc

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            s = self._storage
            s.client.abort_multipart_upload(
                Bucket=s.bucket, Key=self._name, UploadId=self._upload_id
            )


class S3Storage(ArtifactStorage):
    """Objects in `bucket` under `prefix`.

    `part_size` is the multipart part size in bytes (also the most a writer buffers);
    objects above `copy_threshold` bytes are copied by a multipart copy in `copy_part_size`
    pieces instead of one CopyObject. Tests lower all three.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 16 * MiB,
        copy_threshold: int = 5 * GiB,
        copy_part_size: int = 512 * MiB,
    ) -> None:
        if not bucket:
            raise StorageError("no S3 bucket is configured (OTACM_S3_BUCKET)")
        for name, value in (("part_size", part_size), ("copy_part_size", copy_part_size)):
            if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
                raise ValueError(f"{name} must be between 5 MiB and 5 GiB, got {value}")
        if not 0 <= copy_threshold <= MAX_PART_SIZE:
            raise ValueError(f"copy_threshold must be at most 5 GiB, got {copy_threshold}")
        prefix = prefix.strip("/")
        self.prefix = validate_prefix(prefix + "/") if prefix else ""
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.copy_threshold = copy_threshold
        self.copy_part_size = copy_part_size

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def object_name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def failure(self, exc: BotoCoreError | ClientError, action: str) -> StorageError:
        """The `StorageError` to raise for a boto error, naming the bucket when it is missing."""
        if isinstance(exc, ClientError) and _code(exc) == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.bucket!r} does not exist")
        return StorageError(f"S3 bucket {self.bucket!r}: cannot {action}: {exc}")

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ByteStream:
        check_range(start, end, chunk_size)
        params = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if end == start:
            # HTTP ranges cannot be empty; only the object's existence is left to check.
            if self.stat(key) is None:
                raise ArtifactMissing(f"artifact {key!r} does not exist")
            return ByteStream.empty()
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            body = self.client.get_object(**params)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise ArtifactMissing(f"artifact {key!r} does not exist") from exc
            if _code(exc) == "InvalidRange":  # the range starts at or past the end
                return ByteStream.empty()
            raise self.failure(exc, f"read artifact {key!r}") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, f"read artifact {key!r}") from exc
        return ByteStream(self._chunks(body, key, chunk_size), body.close)

    def _chunks(self, body: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_size)
        except BotoCoreError as exc:  # a dropped or timed-out connection mid-body
            raise self.failure(exc, f"read artifact {key!r}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as exc:
            # HEAD answers carry no body, so a missing bucket also reads as "404" here.
            if _code(exc) in _MISSING_CODES:
                return None
            raise self.failure(exc, f"stat artifact {key!r}") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, f"stat artifact {key!r}") from exc
        return ObjectInfo(key, head["ContentLength"], head["LastModified"].astimezone(UTC))

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except (BotoCoreError, ClientError) as exc:
            raise self.failure(exc, f"delete artifact {key!r}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self.prefix + validate_prefix(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full_prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix) :]
                    try:
                        validate_key(key)
                    except InvalidStorageKey:
                        continue  # not ours, e.g. a "folder/" marker made in a web console
                    yield ObjectInfo(key, item["Size"], item["LastModified"].astimezone(UTC))
        except (BotoCoreError, ClientError) as exc:
            raise self.failure(exc, f"list artifacts under {prefix!r}") from exc

    def sweep_incomplete(self, prefix: str, older_than: datetime) -> int:
        full_prefix = self.prefix + validate_prefix(prefix)
        removed = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            )
            for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"].astimezone(UTC) < older_than:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        except (BotoCoreError, ClientError) as exc:
            raise self.failure(exc, f"sweep unfinished uploads under {prefix!r}") from exc
        return removed

    def copy(self, src: str, dst: str) -> None:
        source, target = self.object_name(src), self.object_name(dst)
        if self.stat(dst) is not None:
            return
        info = self.stat(src)
        if info is None:
            raise ArtifactMissing(f"artifact {src!r} does not exist")
        # A copy made meanwhile by someone else is overwritten with the same bytes: keys given
        # here are content-addressed.
        try:
            if info.size <= self.copy_threshold:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    MetadataDirective="COPY",
                )
            else:
                self._multipart_copy(source, target, info.size)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise ArtifactMissing(f"artifact {src!r} does not exist") from exc
            raise self.failure(exc, f"copy artifact {src!r} to {dst!r}") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, f"copy artifact {src!r} to {dst!r}") from exc

    def _multipart_copy(self, source: str, target: str, size: int) -> None:
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=target, ContentType=CONTENT_TYPE
        )["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, self.copy_part_size), start=1):
                last = min(offset + self.copy_part_size, size) - 1
                answer = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={offset}-{last}",
                )["CopyPartResult"]
                part = {"PartNumber": number, "ETag": answer["ETag"]}
                part.update({name: answer[name] for name in _CHECKSUMS if name in answer})
                parts.append(part)
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # The copy's own error is the one to report; a bucket lifecycle rule for incomplete
            # multipart uploads collects whatever is left.
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=target, UploadId=upload_id
                )
            raise

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None

    def presigned_url(
        self, key: str, *, expires: timedelta, filename: str | None = None
    ) -> str | None:
        if not timedelta(seconds=1) <= expires <= MAX_PRESIGN_EXPIRY:
            raise ValueError(f"presigned URLs last from 1 second to 7 days, not {expires}")
        params = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        try:
            url: str = self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=int(expires.total_seconds())
            )
        except BotoCoreError as exc:  # e.g. no credentials to sign with
            raise self.failure(exc, f"sign a URL for artifact {key!r}") from exc
        return url

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket"):
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist") from exc
            if _code(exc) in ("403", "AccessDenied"):
                raise StorageError(f"access to S3 bucket {self.bucket!r} is denied") from exc
            raise self.failure(exc, "check it") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, "reach it") from exc
