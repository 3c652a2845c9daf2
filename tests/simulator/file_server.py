"""A tiny HTTP file server on a real socket, with the faults a vehicle meets on the road.

It serves a dict of path -> bytes with single-range `Range` support, and can be told to break:
cut the connection after N bytes of a body, answer with a status first, ignore `Range`, or
refuse requests without a header. Every request is recorded (path and headers) so tests can
check what the client asked for.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    cut_after: list[int] = field(default_factory=list)  # per body sent, in order: bytes, then cut
    statuses: list[int] = field(default_factory=list)  # answered (empty body) before serving
    ignore_range: bool = False
    required_header: tuple[str, str] | None = None  # (name, value), else 401


@dataclass
class Request:
    path: str
    headers: dict[str, str]


class FileServer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.faults = Faults()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # quiet: pytest shows failures, not access logs

            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                server._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def ranges_asked(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(Request(handler.path, headers))
            status = self.faults.statuses.pop(0) if self.faults.statuses else None
        required = self.faults.required_header
        if required is not None and headers.get(required[0].lower()) != required[1]:
            status = 401
        body = self.files.get(handler.path)
        if status is None and body is None:
            status = 404
        if status is not None:
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        assert body is not None
        start, end, code = 0, len(body), 200
        match = _RANGE.match(headers.get("range", ""))
        if match and not self.faults.ignore_range:
            start = int(match[1])
            end = min(int(match[2]) + 1, len(body)) if match[2] else len(body)
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            code = 206
        handler.send_response(code)
        handler.send_header("Content-Length", str(end - start))
        if code == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        handler.end_headers()
        with self._lock:
            cut = self.faults.cut_after.pop(0) if self.faults.cut_after else None
        if cut is None:
            handler.wfile.write(body[start:end])
            return
        handler.wfile.write(body[start : min(start + cut, end)])
        handler.wfile.flush()
        handler.close_connection = True
        # The connection dies mid-body, as when a vehicle drives into a tunnel.
        handler.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[FileServer]:
    server = FileServer(files)
    server._thread.start()
    try:
        yield server
    finally:
        server._httpd.shutdown()
        server._httpd.server_close()
