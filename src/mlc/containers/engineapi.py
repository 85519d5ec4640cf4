"""The local Docker engine's HTTP API over its unix socket, with the standard library only.

For the commands that must start like ``docker`` does (`mlc list`, `mlc stop -f`, see
:mod:`mlc.quickcmd`): importing the Docker SDK (and with it requests and urllib3) costs more
than the whole command. Everything else uses the SDK (:mod:`.container`). Only the local
socket: a remote engine (ssh, tcp, a Docker context) always goes through the SDK.

:class:`Raw` gives an inspected container the attributes mlc's :class:`.container.Container`
reads from a docker-py container (``attrs``, ``id``, ``name``, ``labels``, ``status``), so
both paths share one container object and one label table.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/var/run/docker.sock"
API = ""  # unversioned: the engine's own version (new engines refuse old fixed versions)
TIMEOUT_S = 30.0


class EngineApiError(Exception):
    """The engine answered with an error status (``status``, Docker's ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def socket_path(environ: Mapping[str, str] = os.environ) -> str | None:
    """The local engine's socket (DOCKER_HOST=unix://PATH or the default); None for any other
    DOCKER_HOST."""
    host = environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """One connection to the local engine; ``OSError`` when it cannot be reached."""

    def __init__(self, path: str, timeout: float = TIMEOUT_S) -> None:
        self.conn = _UnixConnection(path, timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, query: Mapping[str, Any] | None = None) -> Any:
        """METHOD API PATH?QUERY; the decoded JSON answer (None when it has no body)."""
        url = API + path + (f"?{urlencode(query)}" if query else "")
        self.conn.request(method, url, headers={"Host": "docker"})
        answer = self.conn.getresponse()
        body = answer.read()
        if answer.status >= 400:
            try:
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace").strip()
            raise EngineApiError(answer.status, message)
        return json.loads(body) if body.strip() else None

    def inspect(self, ref: str) -> Raw | None:
        """Container REF (a name or an ID), or None when there is none."""
        try:
            return Raw(self.call("GET", f"/containers/{quote(ref, safe='')}/json"))
        except EngineApiError as exc:
            if exc.status == 404:
                return None
            raise

    def containers(self, label: str) -> list[Raw]:
        """Every container (running or not) with LABEL (``key`` or ``key=value``), inspected
        (as the SDK's ``containers.list`` does)."""
        filters = json.dumps({"label": [label]})
        found = self.call("GET", "/containers/json", {"all": "1", "filters": filters})
        inspected = (self.inspect(item["Id"]) for item in found or [])
        return [raw for raw in inspected if raw is not None]  # one removed meanwhile: gone

    def stop(self, raw: Raw, timeout_s: int) -> None:
        """Stop RAW (SIGTERM, then SIGKILL after TIMEOUT_S); already stopped is no error."""
        self.conn.timeout = TIMEOUT_S + timeout_s
        self.call("POST", f"/containers/{raw.id}/stop", {"t": str(timeout_s)})


class Raw:
    """An inspected container with the attributes of a docker-py container that mlc reads."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs

    @property
    def id(self) -> str:
        return self.attrs["Id"]

    @property
    def name(self) -> str:
        return str(self.attrs.get("Name", "")).lstrip("/")

    @property
    def labels(self) -> dict[str, str]:
        return (self.attrs.get("Config") or {}).get("Labels") or {}

    @property
    def status(self) -> str:
        state = self.attrs.get("State")
        return state.get("Status", "") if isinstance(state, dict) else str(state or "")
