"""The periodic job of `otacm serve`: re-sign TUF metadata before it expires, sweep staging.

Every server process runs it; that is safe because each task takes the repository's lock (TUF)
or only deletes what is provably abandoned (staging). One failing task is logged and does not
stop the others or the next round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import unit_of_work
from otacm.periodic import every
from otacm.security.keys import KeyStore
from otacm.security.tuf.repository import ImageRepository
from otacm.updates.artifacts import cleanup_staging
from otacm.updates.storage import ArtifactStorage

log = logging.getLogger("otacm.maintenance")


@dataclass
class MaintenanceReport:
    resigned: list[str] = field(default_factory=list)
    expired_staged_files: int = 0
    orphaned_staged_objects: int = 0
    errors: list[str] = field(default_factory=list)


def run_once(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: ArtifactStorage,
    now: datetime | None = None,
) -> MaintenanceReport:
    report = MaintenanceReport()
    keys = KeyStore.from_settings(settings)
    repository = ImageRepository(settings)
    try:
        with unit_of_work(factory) as session:
            if keys.initialised() and repository.exists(session):
                report.resigned = repository.refresh(session, keys, now)
    except Exception as exc:
        log.exception("re-signing the image repository's metadata failed")
        report.errors.append(f"tuf refresh: {exc}")
    try:
        swept = cleanup_staging(factory, storage, max_age=settings.staging_max_age, now=now)
        report.expired_staged_files = swept.abandoned_artifacts
        report.orphaned_staged_objects = swept.orphaned_objects
    except Exception as exc:
        log.exception("sweeping staged uploads failed")
        report.errors.append(f"staging cleanup: {exc}")
    if report.resigned:
        log.info("re-signed TUF metadata: %s", ", ".join(report.resigned))
    return report


async def run_periodically(
    factory: sessionmaker[Session], settings: Settings, storage: ArtifactStorage
) -> None:
    """`run_once` every `OTACM_MAINTENANCE_INTERVAL`, inside `otacm serve`."""
    interval = settings.maintenance_interval.total_seconds()
    await every(interval, run_once, factory, settings, storage, name="maintenance")
