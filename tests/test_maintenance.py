"""The periodic jobs: `periodic.every` keeps a job going through failures, `otacm serve`
starts the jobs whose interval is not zero, and `otacm worker` runs the engine and delivery."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import suppress
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from otacm import maintenance, periodic
from otacm.app import create_app
from otacm.campaigns import engine as rollout
from otacm.cli import app as cli
from otacm.config import Settings
from otacm.notifications import delivery


def test_a_failing_run_is_logged_with_the_jobs_name_and_the_next_one_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[tuple[str, int]] = []
    worker_threads: set[str] = set()

    def work(what: str, n: int) -> None:
        runs.append((what, n))
        worker_threads.add(threading.current_thread().name)
        if len(runs) == 1:
            raise RuntimeError("the first run breaks")

    async def main() -> None:
        job = asyncio.create_task(periodic.every(0.01, work, "sweep", 3, name="test job"))
        while len(runs) < 3:
            await asyncio.sleep(0.005)
        job.cancel()
        with suppress(asyncio.CancelledError):
            await job

    caplog.set_level(logging.ERROR, logger="otacm.periodic")
    asyncio.run(asyncio.wait_for(main(), timeout=10))

    assert runs[:3] == [("sweep", 3)] * 3
    [record] = caplog.records
    assert record.getMessage().startswith("test job failed")
    assert record.exc_info is not None and "the first run breaks" in caplog.text
    assert threading.main_thread().name not in worker_threads  # in the threadpool


def test_a_job_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="test job"):
        asyncio.run(periodic.every(0, print, name="test job"))


def test_maintenance_runs_every_interval(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[Settings] = []

    def run_once(_factory: Any, settings: Settings, _storage: Any) -> None:
        runs.append(settings)
        raise RuntimeError("a failing run does not stop the job")

    monkeypatch.setattr(maintenance, "run_once", run_once)
    serving = settings.model_copy(update={"maintenance_interval": timedelta(milliseconds=10)})

    async def main() -> None:
        job = asyncio.create_task(maintenance.run_periodically(None, serving, None))  # type: ignore[arg-type]
        while len(runs) < 2:
            await asyncio.sleep(0.005)
        job.cancel()
        with suppress(asyncio.CancelledError):
            await job

    asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert runs[:2] == [serving, serving]


class Started:
    """Stand-ins for the jobs' loops: each records its arguments and waits to be cancelled."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[Any, ...]] = {}
        self.cancelled: set[str] = set()

    def loop(self, name: str) -> Any:
        async def run(*args: Any) -> None:
            self.calls[name] = args
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.add(name)
                raise

        return run


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Started:
    jobs = Started()
    monkeypatch.setattr(maintenance, "run_periodically", jobs.loop("maintenance"))
    monkeypatch.setattr(rollout, "run_periodically", jobs.loop("engine"))
    monkeypatch.setattr(delivery, "run_periodically", jobs.loop("delivery"))
    return jobs


def test_the_server_starts_the_jobs_that_are_switched_on(
    settings: Settings, engine: Engine, started: Started
) -> None:
    serving = settings.model_copy(
        update={
            "maintenance_interval": timedelta(minutes=5),
            "engine_interval": timedelta(seconds=10),
            "notification_interval": timedelta(0),  # off
        }
    )
    application = create_app(serving, engine)
    with TestClient(application):
        factory = application.state.write_session_factory
        assert started.calls == {
            "maintenance": (factory, serving, application.state.storage),
            "engine": (factory, 10.0, serving),  # alerts go where the server's settings say
        }
    assert started.cancelled == {"maintenance", "engine"}  # stopped with the server

    with TestClient(create_app(settings, engine)):  # every interval zero: the tests' settings
        pass
    assert set(started.calls) == {"maintenance", "engine"}


def test_the_server_starts_notification_delivery(
    settings: Settings, engine: Engine, started: Started
) -> None:
    serving = settings.model_copy(update={"notification_interval": timedelta(seconds=3)})
    application = create_app(serving, engine)
    with TestClient(application):
        assert started.calls == {
            "delivery": (application.state.write_session_factory, serving, 3.0)
        }


def test_the_worker_runs_the_engine_and_delivery(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, tuple[Any, ...]] = {}

    async def engine_loop(*args: Any) -> None:
        calls["engine"] = args

    async def delivery_loop(*args: Any) -> None:
        calls["delivery"] = args

    monkeypatch.setattr(rollout, "run_periodically", engine_loop)
    monkeypatch.setattr(delivery, "run_periodically", delivery_loop)
    result = CliRunner().invoke(cli, ["worker", "--database-url", settings.resolved_database_url()])

    assert result.exit_code == 0, result.output
    factory, interval, engine_settings = calls["engine"]
    assert interval == 10.0  # OTACM_ENGINE_INTERVAL's default
    delivery_factory, worker_settings, every = calls["delivery"]
    assert delivery_factory is factory and every == 10.0
    assert worker_settings.database_url == settings.resolved_database_url()
    assert engine_settings is worker_settings
