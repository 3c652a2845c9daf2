"""A real HTTP server on a free local port, for clients that need a socket rather than a
TestClient: python-tuf's `ngclient.Updater`, download managers, simulated vehicles.

One uvicorn server runs in a background thread and serves whichever ASGI app is mounted on it,
so a test module starts it once and each test mounts its own app (with that test's database):

    from tests.live_server import live_server, live_url  # noqa: F401  (pytest fixtures)

    def test_download(live_url: str) -> None:          # create_app(settings, engine), mounted
        httpx.get(f"{live_url}/healthz")

or without the fixtures:

    with run_live_server() as server, server.mount(app):
        urllib3.request("GET", server.url + "/healthz")

Mounting runs the app's lifespan (startup on mount, shutdown on unmount) in the server's
event loop, as uvicorn would for an app of its own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings

# Seconds to wait for the server, or a mounted app's startup, before failing the test.
STARTUP_TIMEOUT = 10.0
# Any ASGI 3 application (FastAPI, Starlette, a bare coroutine function).
ASGIApp = Any


class _Mounted:
    """The app the server forwards to, after uvicorn's own wrapping and lifespan."""

    def __init__(self, app: ASGIApp) -> None:
        self.config = uvicorn.Config(app, lifespan="auto", log_level="warning")
        self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)


class LiveServer:
    """A uvicorn server in a thread; `url` is its base URL, without a trailing slash."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((host, 0))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        self._mounted: _Mounted | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        config = uvicorn.Config(
            self._dispatch, interface="asgi3", lifespan="on", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        for _ in range(int(STARTUP_TIMEOUT / 0.01)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError(f"the live server at {self.url} did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STARTUP_TIMEOUT)
        self._socket.close()

    @contextmanager
    def mount(self, app: ASGIApp) -> Iterator[str]:
        """Serve `app` (running its lifespan) until the block ends; yields the base URL."""
        if self._mounted is not None:
            raise RuntimeError("an app is already mounted on this live server")
        mounted = _Mounted(app)
        self._run(mounted.lifespan.startup())
        if mounted.lifespan.should_exit:
            raise RuntimeError("the mounted app's startup failed")
        self._mounted = mounted
        try:
            yield self.url
        finally:
            self._mounted = None
            self._run(mounted.lifespan.shutdown())

    def _run(self, coroutine: Any) -> None:
        assert self._loop is not None, "the live server is not running"
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STARTUP_TIMEOUT)

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # The server's own lifespan: note the loop that mounted apps' lifespans run in.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._loop = asyncio.get_running_loop()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        mounted = self._mounted
        if mounted is None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        # What the mounted app's lifespan stored, as uvicorn hands it to each request.
        scope = {**scope, "state": dict(mounted.lifespan.state)}
        await mounted.config.loaded_app(scope, receive, send)


@contextmanager
def run_live_server(host: str = "127.0.0.1") -> Iterator[LiveServer]:
    server = LiveServer(host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """One server for the test module; mount an app per test (or use `live_url`)."""
    with run_live_server() as server:
        yield server


def quiet_settings(settings: Settings) -> Settings:
    """`settings` without the periodic maintenance job, which would re-sign metadata (or sweep
    staging) behind a test's back."""
    return settings.model_copy(
        update={"maintenance_interval": timedelta(0), "engine_interval": timedelta(0)}
    )


@pytest.fixture
def live_url(live_server: LiveServer, settings: Settings, engine: Engine) -> Iterator[str]:
    """The base URL of `create_app(settings, engine)` served over a real socket."""
    with live_server.mount(create_app(quiet_settings(settings), engine)) as url:
        yield url
