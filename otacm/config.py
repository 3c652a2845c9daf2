"""Runtime configuration: one settings class, read from `OTACM_*` environment variables.

The defaults make an embedded installation that needs nothing else: an SQLite file under
`./otacm-data/` and the server on localhost.
"""

from __future__ import annotations

import email.policy
import json
from datetime import timedelta
from email.headerregistry import AddressHeader
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class VinCheckDigitPolicy(StrEnum):
    """Where the ISO 3779 check digit (position 9) is enforced.

    North American VINs (first character 1-5) always carry it; other markets may not.
    """

    NORTH_AMERICA = "north_america"
    ALWAYS = "always"
    NEVER = "never"


class StorageBackend(StrEnum):
    LOCAL = "local"
    S3 = "s3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTACM_", extra="ignore")

    data_dir: Path = Path("otacm-data")
    # Empty means "an SQLite file in data_dir".
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"

    vin_check_digit: VinCheckDigitPolicy = VinCheckDigitPolicy.NORTH_AMERICA
    # Vehicles per import transaction: bounds memory and the work lost to an interruption.
    import_batch_size: int = Field(default=2000, ge=1, le=100_000)
    # Longest accepted line of a manufacturing export, in bytes.
    import_max_line_bytes: int = Field(default=1_048_576, ge=1024)
    # Rejected records kept in one import's answer; all of them stay queryable.
    import_report_rejections: int = Field(default=1000, ge=0)
    # Worker processes that parse a first load (an import into an empty registry) of JSON
    # Lines; 0 means one per CPU. Files smaller than `import_parallel_min_bytes` are parsed
    # by the importing process alone: starting workers costs more than they would save.
    import_workers: int = Field(default=0, ge=0, le=64)
    import_parallel_min_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    # Artifact storage: a directory on local disk, or an S3-compatible bucket (credentials come
    # from boto3's usual chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, roles).
    storage_backend: StorageBackend = StorageBackend.LOCAL
    # Empty means "data_dir/artifacts".
    storage_path: Path | None = None
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    # Answer S3 downloads with a redirect to a presigned URL instead of streaming them through.
    s3_presign_downloads: bool = True
    s3_presign_expiry: timedelta = timedelta(minutes=15)

    # Largest accepted artifact, in bytes.
    artifact_max_bytes: int = Field(default=16 * 1024**3, ge=1)
    # Staged uploads of drafts untouched for longer than this are removed.
    staging_max_age: timedelta = timedelta(days=7)

    # Signing keys (TUF roles and the server key that wraps data keys). Empty: data_dir/keys.
    keys_dir: Path | None = None
    # How long freshly signed TUF metadata stays valid, and when it is signed anew.
    tuf_timestamp_expiry: timedelta = timedelta(days=1)
    tuf_snapshot_expiry: timedelta = timedelta(days=7)
    tuf_targets_expiry: timedelta = timedelta(days=90)
    tuf_root_expiry: timedelta = timedelta(days=365)
    # Metadata is re-signed once less than this share of its lifetime is left.
    tuf_refresh_fraction: float = Field(default=0.5, gt=0, lt=1)
    # Period of the maintenance job inside `otacm serve` (metadata refresh, staging cleanup);
    # zero turns it off (tests run it by hand).
    maintenance_interval: timedelta = timedelta(minutes=5)

    # Campaigns need a second campaign manager's approval; off only for a single-operator demo.
    campaign_four_eyes: bool = True
    # A launch is refused when the eligible vehicles differ from the expected count by more
    # than this share (the "12,000 trucks instead of 1,200" guard).
    campaign_launch_margin: float = Field(default=0.05, ge=0, le=1)
    # Period of the rollout engine's tick in `otacm serve` and `otacm worker`; zero turns it
    # off inside `otacm serve` (tests drive it by hand).
    engine_interval: timedelta = timedelta(seconds=10)

    # Period of the notification outbox's delivery round (webhooks, alert email) in
    # `otacm serve` and `otacm worker`; zero turns it off inside `otacm serve`.
    notification_interval: timedelta = timedelta(seconds=10)
    # How long a vehicle waits before polling again (docs/vehicle-api.md): short while one of
    # its deployments is in flight, long when idle; each answer varies it by ±jitter.
    vehicle_poll_active: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))
    vehicle_poll_idle: timedelta = Field(default=timedelta(minutes=15), gt=timedelta(0))
    vehicle_poll_jitter: float = Field(default=0.2, ge=0, lt=1)
    # How often each server process brings its idle-poll index (credentials and which vehicles
    # may have work, in memory) up to date: new work and revocations take effect within about
    # this long (docs/vehicle-api.md). Zero turns the index off: every poll asks the database.
    vehicle_index_refresh: timedelta = Field(default=timedelta(seconds=1), ge=timedelta(0))
    # The header in which a TLS terminator passes a verified client certificate's subject
    # (`CN=<VIN>`); empty: vehicles authenticate with their bearer credential only.
    vehicle_cert_header: str = ""
    # Alert email: sent only when a host, a sender and at least one recipient are set.
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    # STARTTLS before logging in (port 587); off only for a relay on localhost.
    smtp_starttls: bool = True
    alert_email_from: str = ""
    # Recipients: a JSON list or comma-separated addresses.
    alert_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("alert_email_to", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("alert_email_from")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        value = value.strip()
        return _email_address(value, "OTACM_ALERT_EMAIL_FROM") if value else value

    @field_validator("alert_email_to")
    @classmethod
    def _check_recipients(cls, value: list[str]) -> list[str]:
        return [_email_address(address, "OTACM_ALERT_EMAIL_TO") for address in value]

    def resolved_storage_path(self) -> Path:
        return self.storage_path or self.data_dir / "artifacts"

    def resolved_keys_dir(self) -> Path:
        return self.keys_dir or self.data_dir / "keys"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'otacm.db').as_posix()}"


def _email_address(value: str, setting: str) -> str:
    """`value` if it is one email address as a header can carry it (`ops@example.com` or
    `Ops <ops@example.com>`), parsed as the alert email will parse it.

    Raises:
        ValueError: naming `setting` and the value.
    """
    problem = f"{setting}: {value[:200]!r} is not an email address such as ops@example.com"
    if any(c in value for c in "\r\n\0"):
        raise ValueError(problem)
    try:
        header = email.policy.default.header_factory("To", value)
    except Exception:  # the parser fails on some malformed input: "otacm <"
        raise ValueError(problem) from None
    addresses = header.addresses if isinstance(header, AddressHeader) else ()
    if header.defects or len(addresses) != 1:
        raise ValueError(problem)
    if not (addresses[0].username and addresses[0].domain):
        raise ValueError(problem)
    return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
