"""Runtime configuration: one settings class, read from `OTACM_*` environment variables.

The defaults make an embedded installation that needs nothing else: an SQLite file under
`./otacm-data/` and the server on localhost.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class VinCheckDigitPolicy(StrEnum):
    """Where the ISO 3779 check digit (position 9) is enforced.

    North American VINs (first character 1-5) always carry it; other markets may not.
    """

    NORTH_AMERICA = "north_america"
    ALWAYS = "always"
    NEVER = "never"


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

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'otacm.db').as_posix()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
