"""Which Docker engine mlc talks to, found as the docker CLI finds it: ``--context NAME``, then
``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), then ``DOCKER_CONTEXT``,
then the ``currentContext`` of ``~/.docker/config.json`` (``$DOCKER_CONFIG``), else the local
socket. A context is read from ``~/.docker/contexts`` (its ``meta.json`` and TLS files).

An engine reached over ``ssh://`` or ``tcp://`` is *remote*: the folders it mounts are on its
host, not the caller's, so they are checked there and results are read back through the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
from docker.tls import TLSConfig

from mlc.errors import DockerUnavailable, UsageError

LOCAL_SCHEMES = ("unix", "npipe", "http+unix", "")


@dataclass(frozen=True)
class Endpoint:
    """A Docker engine's address, the context it came from, and its TLS settings."""

    host: str  # "" for the default local socket
    context: str | None = None
    tls: TLSConfig | bool = False

    @property
    def remote(self) -> bool:
        """Whether it is reached over the network (ssh://, tcp://): its files are not ours."""
        return urlsplit(self.host).scheme not in LOCAL_SCHEMES

    @property
    def hostname(self) -> str:
        """The engine's host, for messages (``gpu1`` of ``ssh://me@gpu1:22``)."""
        if not self.remote:
            return "this machine"
        return urlsplit(self.host).hostname or "localhost"

    def describe(self) -> str:
        """``ssh://me@gpu1 (context gpu1)``, for errors."""
        where = self.host or "the local socket"
        return f"{where} (context {self.context})" if self.context else where


def use_context(name: str | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """The global ``--context NAME``: it wins over DOCKER_HOST, as with ``docker --context``;
    kept in the environment, so the docker CLI that `mlc open` starts talks to the same one."""
    if name:
        environ["DOCKER_CONTEXT"] = name
        environ.pop("DOCKER_HOST", None)


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The docker CLI's folder: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker").expanduser()


def current_context(environ: Mapping[str, str] = os.environ) -> str | None:
    """DOCKER_CONTEXT, else config.json's currentContext (None: the default)."""
    if environ.get("DOCKER_CONTEXT"):
        return environ["DOCKER_CONTEXT"]
    try:
        data = json.loads((config_dir(environ) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("currentContext") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def read_context(name: str, environ: Mapping[str, str] = os.environ) -> Endpoint:
    """The docker endpoint of context NAME, as ``docker context create`` stored it."""
    ident = hashlib.sha256(name.encode()).hexdigest()
    root = config_dir(environ) / "contexts"
    meta_file = root / "meta" / ident / "meta.json"
    try:
        meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        endpoint = meta["Endpoints"]["docker"]
        host = str(endpoint.get("Host") or "")
    except FileNotFoundError:
        raise UsageError(
            f"Docker context '{name}' does not exist",
            hint="see `docker context ls`; create one with `docker context create NAME "
            "--docker host=ssh://USER@HOST`",
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DockerUnavailable(f"cannot read Docker context '{name}' ({meta_file})") from None
    tls_dir = root / "tls" / ident / "docker"
    ca, cert, key = (tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem"))
    tls: TLSConfig | bool = False
    if ca.is_file() or cert.is_file():
        verify = False if endpoint.get("SkipTLSVerify") else str(ca) if ca.is_file() else True
        tls = TLSConfig(
            client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
            ca_cert=str(ca) if ca.is_file() else None,
            verify=verify,
        )
    return Endpoint(host, name, tls)


def endpoint(environ: Mapping[str, str] = os.environ) -> Endpoint:
    """The engine the docker CLI would talk to with this environment."""
    if environ.get("DOCKER_HOST"):
        return Endpoint(environ["DOCKER_HOST"], None, bool(environ.get("DOCKER_TLS_VERIFY")))
    name = current_context(environ)
    if name and name != "default":
        return read_context(name, environ)
    return Endpoint("")


def remote_host(environ: Mapping[str, str] = os.environ) -> str | None:
    """The host of the engine in use when it is remote, else None (nothing is asked)."""
    ep = endpoint(environ)
    return ep.hostname if ep.remote else None


def connect(ep: Endpoint, environ: Mapping[str, str] = os.environ) -> docker.DockerClient:
    """A client for EP (it asks the engine its API version, nothing else)."""
    own_ca = (
        bool(environ.get("DOCKER_TLS_VERIFY"))
        if ep.context is None
        else (isinstance(ep.tls, TLSConfig) and isinstance(ep.tls.verify, str))
    )
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA file on every
    # request: with its own CA (DOCKER_CERT_PATH/ca.pem, the context's), the engine keeps it.
    with _hidden(CA_VARIABLES if own_ca else ()):
        if ep.context is None:  # DOCKER_HOST and its TLS variables, or the local socket
            dc = docker.DockerClient.from_env(environment=dict(environ))
        else:
            dc = docker.DockerClient(base_url=ep.host or None, tls=ep.tls)
    if own_ca:
        dc.api.trust_env = False
    return dc


CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@contextlib.contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """NAMES out of os.environ for a moment (the client's first request)."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
