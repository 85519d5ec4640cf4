"""A real threaded HTTP file server on 127.0.0.1 for tests (no mocks of HTTP).

    with FileServer({"/m/model.zip": data}) as srv:
        srv.drop_after = 100_000        # first GET: close the socket after 100 kB
        download(srv.url("/m/model.zip"), dest)
        assert srv.requests[1].range == "bytes=100000-"

Knobs (attributes, change them any time): ``drop_after`` / ``drop_times`` (cut the
body after N bytes on the next ``drop_times`` GETs), ``ignore_range`` (always 200),
``errors`` (path -> status code), ``send_length`` (Content-Length header on/off),
``etag`` (send an ETag and honour If-Range and If-None-Match). ``requests`` records every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int


class FileServer:
    """Serve ``files`` (URL path -> bytes) and/or files under ``root`` by relative path."""

    def __init__(self, files: dict[str, bytes] | None = None, root: Path | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.root = root
        self.drop_after: int | None = None
        self.drop_times = 1
        self.ignore_range = False
        self.errors: dict[str, int] = {}
        self.send_length = True
        self.etag = True
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FileServer:
        """Listen on a random port in a background thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers
    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        """The full URL of ``path``."""
        return self.base + (path if path.startswith("/") else "/" + path)

    def gets(self, path: str | None = None) -> list[Request]:
        """The GET requests seen so far (for ``path`` only, if given)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and path in (None, r.path)]

    def content(self, path: str) -> bytes | None:
        """The bytes served at ``path``, or None."""
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            candidate = (self.root / path.lstrip("/")).resolve()
            if candidate.is_file() and candidate.is_relative_to(self.root.resolve()):
                return candidate.read_bytes()
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_drop(self) -> int | None:
        with self._lock:
            if self.drop_after is None or self.drop_times <= 0:
                return None
            self.drop_times -= 1
            return self.drop_after


def _make_handler(srv: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Quiet."""

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")

            def record(status: int) -> None:
                srv._record(Request(self.command, path, rng, if_range, status))

            if path in srv.errors:
                status = srv.errors[path]
                record(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = srv.content(path)
            if data is None:
                record(404)
                self.send_error(404)
                return
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if srv.etag and self.headers.get("If-None-Match") == etag:
                record(304)  # a conditional GET of an unchanged file
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            start, status = 0, 200
            use_range = rng is not None and not srv.ignore_range
            if use_range and srv.etag and if_range is not None and if_range != etag:
                use_range = False  # the file changed: send it whole
            if use_range:
                m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
                if m is None or int(m.group(1)) >= len(data):
                    record(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = int(m.group(2)) + 1 if m.group(2) else len(data)
                data_out = data[start:end]
                status = 206
            else:
                data_out = data
            record(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if srv.etag:
                self.send_header("ETag", etag)
            if status == 206:
                self.send_header(
                    "Content-Range", f"bytes {start}-{start + len(data_out) - 1}/{len(data)}"
                )
            if srv.send_length:
                self.send_header("Content-Length", str(len(data_out)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not body:
                return
            drop = srv._take_drop() if self.command == "GET" else None
            if drop is not None:
                self.wfile.write(data_out[:drop])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data_out)
            self.wfile.flush()

    return Handler


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
