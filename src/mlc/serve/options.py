"""The server's settings, its credentials, and the rule that keeps it on this machine unless it
is protected. No web library here: ``mlc serve`` checks them before FastAPI is imported.

Credentials: ``--api-auth USER:PASS[,USER2:PASS2]`` (AUTOMATIC1111's flag: HTTP Basic) and
``--api-token TOKEN`` (``Authorization: Bearer TOKEN``), or ``$MLC_SERVE_AUTH`` /
``$MLC_SERVE_TOKEN`` (other users can read a command line in ``ps``, not the environment).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from mlc.errors import UsageError
from mlc.serve import DEFAULT_PORT
from mlc.serve.a1111 import Limits

AUTH_ENV, TOKEN_ENV = "MLC_SERVE_AUTH", "MLC_SERVE_TOKEN"
LOCAL_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")
MAX_BODY = 1 << 20  # bytes: a txt2img request is a few hundred


@dataclass
class ServeOptions:
    """How the server listens, whom it serves, and what a request may ask for."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    users: list[tuple[str, str]] = field(default_factory=list)  # HTTP Basic
    token: str | None = None  # Bearer
    save: bool = True  # images are written to the workspace unless a request opts out
    outdir: str | None = None  # the engine's --outdir (None: its default, as `mlc txt2img`)
    limits: Limits = field(default_factory=Limits)
    max_body: int = MAX_BODY

    @property
    def protected(self) -> bool:
        return bool(self.users or self.token)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_auth(text: str | None) -> list[tuple[str, str]]:
    """``USER:PASS[,USER:PASS...]`` (A1111's ``--api-auth``); UsageError when malformed."""
    users = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UsageError("--api-auth takes USER:PASSWORD (several separated by commas)")
        users.append((user, password))
    return users


def is_loopback(host: str) -> bool:
    """Whether HOST is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def credentials(
    auth: str | None, token: str | None, environ: dict[str, str] | None = None
) -> tuple[list[tuple[str, str]], str | None]:
    """The users and token from the flags, else from ``$MLC_SERVE_AUTH`` / ``$MLC_SERVE_TOKEN``."""
    env = os.environ if environ is None else environ
    users = parse_auth(auth if auth is not None else env.get(AUTH_ENV))
    token = token if token is not None else env.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or len(token) < 8):
        raise UsageError("--api-token must be at least 8 characters")
    return users, token


def check(options: ServeOptions) -> None:
    """The safety rule: beyond localhost only with credentials; a port that can be used."""
    if not 0 <= options.port <= 65535:
        raise UsageError(f"--port {options.port} is not a port number (1-65535, or 0: any free)")
    if not is_loopback(options.host) and not options.protected:
        raise UsageError(
            f"--host {options.host} would serve the engine beyond this machine without a "
            "password; add --api-auth USER:PASSWORD or --api-token TOKEN (or keep the default "
            "--host 127.0.0.1)"
        )
