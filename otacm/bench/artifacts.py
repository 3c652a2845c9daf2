"""`otacm bench artifacts`: a large artifact through a real `otacm serve`, against nginx.

The baseline is nginx serving the same file over loopback, measured in the same run with the
same client (curl, writing to /dev/null). Measured: upload (POST of the raw file, hashed and
stored on the way in), release (signing; compared with one SHA-256 pass over the file, the
most a release may cost), download of the released target, and the server's resident memory
while it streams.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from otacm.bench.common import Report, Result, console
from otacm.config import Settings
from otacm.db import engine_from_settings, make_session_factory, unit_of_work, upgrade
from otacm.security import service as operators
from otacm.security.audit import SYSTEM
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.updates.samples import sample_update

BLOCK = 16 << 20
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_file(path: Path, size: int) -> None:
    block = os.urandom(BLOCK)
    with path.open("wb") as out:
        left = size
        while left > 0:
            out.write(block[: min(left, BLOCK)])
            left -= BLOCK


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _curl(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", *args], check=True, stdin=subprocess.DEVNULL
    )
    return time.perf_counter() - started


class RssSampler:
    """Peak resident memory of a process while a block runs (from /proc, every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def current(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    @contextmanager
    def peak(self) -> Iterator[list[int]]:
        found = [self.current()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                found[0] = max(found[0], self.current())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield found
        finally:
            done.set()
            thread.join()


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[int]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is the baseline of this benchmark: apt-get install nginx-light")
    port = _free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, root=root))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)])
    try:
        _wait_for(f"http://127.0.0.1:{port}/")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def otacm_server(data_dir: Path) -> Iterator[tuple[str, str, int]]:
    """A real `otacm serve` on an embedded database: (base URL, admin token, server pid)."""
    settings = Settings(data_dir=data_dir)
    engine = engine_from_settings(settings)
    upgrade(engine)
    with unit_of_work(make_session_factory(engine)) as session:
        operators.create_user(session, SYSTEM, "bench-admin", "admin", os.urandom(16).hex())
        token = operators.create_token(session, SYSTEM, "bench-admin", "bench", None).secret
    engine.dispose()
    initialise_keys_and_repository(settings, root_passphrase=None)
    port = _free_port()
    env = {**os.environ, "OTACM_DATA_DIR": str(data_dir), "OTACM_LOG_LEVEL": "warning"}
    env.pop("OTACM_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "otacm", "serve", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/healthz")
        yield base, token, process.pid
    finally:
        process.terminate()
        process.wait(30)


def _draft(base: str, token: str, *, confidential: bool, version: str) -> int:
    response = httpx.post(
        f"{base}/api/v1/updates",
        json=sample_update(version=version, confidential=confidential),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["id"])


def run(report: Report, size: int, work: Path, *, confidential: bool) -> None:
    work.mkdir(parents=True, exist_ok=True)
    served = work / "www"
    served.mkdir(exist_ok=True)
    artifact = served / "artifact.bin"
    console.print(f"writing a {size / 1e9:.2f} GB file")
    write_file(artifact, size)
    report.facts["file"] = f"{size:,} bytes"

    started = time.perf_counter()
    digest = hashlib.sha256()
    with artifact.open("rb") as source:
        while block := source.read(BLOCK):
            digest.update(block)
    one_pass = time.perf_counter() - started
    report.add(Result("one SHA-256 pass (cap for a release)", one_pass, size, unit="bytes"))

    with nginx(served, work) as port:
        _curl(f"http://127.0.0.1:{port}/artifact.bin")  # warm the page cache
        baseline = _curl(f"http://127.0.0.1:{port}/artifact.bin")
    report.add(Result("nginx download (baseline)", baseline, size, unit="bytes"))

    with otacm_server(work / "otacm") as (base, token, pid):
        auth = f"Authorization: Bearer {token}"
        rss = RssSampler(pid)
        update_id = _draft(base, token, confidential=False, version="9.0.0")
        idle = rss.current()
        with rss.peak() as peak:
            upload = _curl(
                "-X", "POST", "-T", str(artifact), "-H", auth,
                "-H", "Content-Type: application/octet-stream",
                f"{base}/api/v1/updates/{update_id}/artifacts?filename=artifact.bin"
                f"&sha256={digest.hexdigest()}",
            )  # fmt: skip
        report.add(
            Result("otacm upload", upload, size, unit="bytes", baseline="nginx download",
                   ratio=baseline / upload, note=f"server RSS +{(peak[0] - idle) / 1e6:.0f} MB")
        )  # fmt: skip
        started = time.perf_counter()
        released = httpx.post(
            f"{base}/api/v1/updates/{update_id}/release",
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )
        released.raise_for_status()
        release = time.perf_counter() - started
        report.add(
            Result("otacm release (sign into TUF)", release, baseline="one SHA-256 pass",
                   ratio=one_pass / release if release else None)
        )  # fmt: skip
        url = released.json()["artifacts"][0]["download_url"]
        _curl(url)
        idle = rss.current()
        with rss.peak() as peak:
            download = _curl(url)
        report.add(
            Result("otacm download (released target)", download, size, unit="bytes",
                   baseline="nginx download", ratio=baseline / download,
                   note=f"server RSS +{(peak[0] - idle) / 1e6:.0f} MB")
        )  # fmt: skip
        if confidential:
            secret_id = _draft(base, token, confidential=True, version="9.0.1")
            with rss.peak() as peak:
                upload = _curl(
                    "-X", "POST", "-T", str(artifact), "-H", auth,
                    f"{base}/api/v1/updates/{secret_id}/artifacts?filename=artifact.bin",
                )  # fmt: skip
            report.add(
                Result("otacm upload, confidential (AES-256-GCM on the way in)", upload, size,
                       unit="bytes", baseline="nginx download", ratio=baseline / upload,
                       note=f"server RSS +{(peak[0] - idle) / 1e6:.0f} MB")
            )  # fmt: skip
