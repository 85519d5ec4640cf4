"""The warm engine worker as the host sees it, without Docker: the per-user host folder that a
container made by this mlc mounts as the worker's folder (so the worker's socket is reachable
from the host), the route file the fast path plans from, and the worker's status.

Layout: ``$XDG_STATE_HOME/mlc/workers/NAME`` (default ``~/.local/state/mlc/workers/NAME``),
mode 0700, owned by the user, bind-mounted at :data:`CONTAINER_DIR`, where the container's
``MLC_WORKER_DIR`` points. The worker keeps its files there (``mlc.engine.protocol``: the socket,
``status.json``, its log); the host adds ``route.json`` (what `mlc txt2img` needs to plan a
request: the mounts, the setup state, the container's request environment).

Only stdlib, :mod:`mlc.errors` and :mod:`mlc.wire` here (the fast path imports this before
anything else); the wire is the engine protocol's own (:mod:`mlc.wire`), without importing the
engine package (which changes the process's environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mlc import wire

CONTAINER_DIR = PurePosixPath("/run/mlc-worker")
"""Where a container sees its host worker folder (its ``MLC_WORKER_DIR``)."""
SOCKET, STATUS = wire.SOCKET, wire.STATUS
ROUTE = "route.json"
REQUEST_ENV = ("MLC_CKPT", "MLC_TINY_VAE", "MLC_MAX_PIXELS", "MLC_MAX_STEPS", "MLC_MAX_IMAGES")
"""= mlc.engine.env.REQUEST_ENV: what a request carries from its client's environment."""
TIMEOUT = 5.0  # seconds for a status question (the worker answers from its accept thread)


def state_home() -> Path:
    """``$XDG_STATE_HOME``, else ``~/.local/state``."""
    value = os.environ.get("XDG_STATE_HOME", "")
    return Path(value) if value.startswith("/") else Path.home() / ".local" / "state"


def host_dir(name: str) -> Path:
    """The host folder of container NAME's worker (the caller's own: under their home)."""
    return state_home() / "mlc" / "workers" / name


def make_host_dir(path: Path) -> Path:
    """Create PATH (0700, and its ``mlc/workers`` parents 0700) or make it private again."""
    workers = path.parent
    for d in (workers.parent, workers, path):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700, parents=True)
    os.chmod(path, 0o700)
    return path


def private(path: Path) -> bool:
    """Whether PATH is a real folder of this user's that no one else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


# -- the socket ----------------------------------------------------------------------------------


class Connection(wire.Lines):
    """A connection to a worker: :mod:`mlc.wire`'s JSON lines each way."""

    def send(self, message: Mapping[str, Any]) -> None:
        wire.send(self.sock, message)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(d: Path, timeout: float | None = None) -> tuple[Connection, dict[str, Any]] | None:
    """The worker listening in the host folder D and its greeting, or None: D not private to
    this user, no worker there (a stale socket, a stopped container), a worker of another uid.
    Long paths are reached through the folder's descriptor (a socket path has 107 bytes)."""
    if not private(d):
        return None
    fd = None
    path = str(d / SOCKET)
    if len(path.encode()) > 100:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        path = f"/proc/self/fd/{fd}/{SOCKET}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout if timeout is not None else TIMEOUT)
        sock.connect(path)
        if wire.peer_uid(sock) not in (None, os.getuid()):
            raise PermissionError("the worker runs as another user")
        conn = Connection(sock)
        hello = conn.next()
        if not hello or "hello" not in hello:
            raise ConnectionError("no greeting")
        sock.settimeout(timeout)
        return conn, hello["hello"]
    except OSError:
        sock.close()
        return None
    finally:
        if fd is not None:
            os.close(fd)


def status(d: Path) -> dict[str, Any] | None:
    """The worker's own status (``state``: starting, loading, ready or idle; ``model``; ``pid``;
    ``busy``) asked on its socket, or None when no worker of this user's listens in D."""
    got = connect(d, TIMEOUT)
    if got is None:
        return None
    conn, _ = got
    try:
        conn.send({"op": "status"})
        reply = conn.next() or {}
    except OSError:
        return None
    finally:
        conn.close()
    found = reply.get("status")
    return found if isinstance(found, dict) else None


def container_status(worker: str | None, running: bool) -> dict[str, Any] | None:
    """The status of a local container's worker, from its ``mlc.worker`` label (the host
    folder) and whether it runs; None for a container without one or not running."""
    if not worker or not running:
        return None
    return status(Path(worker))


def describe(found: Mapping[str, Any] | None) -> str:
    """A status as one short cell: ``ready demo``, ``loading demo``, ``idle``, ``-`` (none)."""
    if not found:
        return "-"
    state = str(found.get("state") or "?")
    model = found.get("model")
    if not model:
        return state
    stem = PurePosixPath(str(model)).stem
    return f"{state} {stem}"


# -- the route file ------------------------------------------------------------------------------


def write_route(
    d: Path,
    *,
    container_id: str,
    state: Mapping[str, Any],
    mounts: Sequence[tuple[Path, PurePosixPath]],
    container_env: Sequence[str],
    workdir: str = "/workspace",
) -> None:
    """What the fast path needs to plan `mlc txt2img` for this container, written whole into
    D (private; skipped when D is not)."""
    if not private(d):
        return
    env = dict(e.split("=", 1) for e in container_env if "=" in e)
    route = {
        "container": container_id,
        "state": {k: state[k] for k in ("engine", "ckpt", "python", "cache_dir", "tiny_vae")
                  if k in state},
        "mounts": [[str(o), str(i)] for o, i in mounts],
        "env": {k: env[k] for k in REQUEST_ENV if k in env},
        "workdir": workdir,
    }  # fmt: skip
    tmp = d / f".{ROUTE}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(route) + "\n")
        os.replace(tmp, d / ROUTE)


def read_route(d: Path) -> dict[str, Any] | None:
    """The route file of D, or None (absent, unreadable, or not this user's private folder)."""
    if not private(d):
        return None
    try:
        route = json.loads((d / ROUTE).read_text())
    except (OSError, ValueError):
        return None
    return route if isinstance(route, dict) else None


def forget_route(d: Path) -> None:
    """Remove D's route file (the engine or the model changed: the slow path writes it anew)."""
    with contextlib.suppress(OSError):
        (d / ROUTE).unlink()
