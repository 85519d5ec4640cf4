"""The warm worker's contract, shared by both ends: the private folder, its file names, the
peer check and the newline-delimited JSON messages.

The folder is ``env.worker_dir()`` (``$MLC_WORKER_DIR``, default ``/tmp/mlc-<uid>/``),
mode 0700, owned by the user; it holds ``engine.sock`` (0600), ``start.lock``, ``worker.log``,
``worker.pid`` and ``status.json`` (``{state, model, pid, served, busy}``; state ``starting``,
``loading``, ``ready`` or ``idle``: whether the worker holds a model, and which). Both ends
check the peer's uid (SO_PEERCRED). The worker greets with
``{"hello": {pid, uid, code, idle}}``; the client sends one request ``{"op": "run", "argv",
"cwd", "env", "umask", "idle", "tag", "resume", "progress"}`` (or ``stop`` (``"cancel":
true``: cancel everything and exit now; without: exit after the queue), ``cancel``
(``"tag"``), ``ping``, ``status`` (the reply's ``status`` is what ``status.json`` holds),
``warm`` (``"argv"``, ``"cwd"``, ``"env"``: load that command line's model now, before any
request; answered at once)) and reads ``{"queued": n}``, ``{"out": text}`` and ``{"err": text}``
(whole lines),
``{"step": [i, n]}`` after each denoising step when the request has ``"progress": true``,
``{"image": entry}`` for each image as soon as its PNG is saved (the ``--json`` summary's
entry: ``index``, ``file``, ``seed``, ``prompt``, ...; a grid cell's ``index`` is its number),
and finally ``{"exit": code}``; ``{"error": text}`` is a refusal. ``resume`` is the list of
``image`` entries an earlier try of the same request got: the worker makes only the others.
No torch here: the client imports this.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import mlc
from mlc.engine import UsageError
from mlc.errors import WorkerError
from mlc.wire import SOCKET, STATUS, Lines, peer_uid, send

__all__ = ["SOCKET", "STATUS", "Lines", "peer_uid", "send"]  # the wire, from mlc.wire

LOCK = "start.lock"
LOG = "worker.log"
PIDFILE = "worker.pid"
DEFAULT_IDLE = 600.0


def private_dir(d: Path) -> Path:
    """Create D (0700) or check it: a real folder owned by this user that no one else can use."""
    with contextlib.suppress(FileExistsError, PermissionError):
        os.mkdir(d, 0o700)
    try:
        st = os.lstat(d)
    except OSError as err:
        raise WorkerError(f"cannot create the engine worker folder {d}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WorkerError(f"{d} is not a folder; remove it or set MLC_WORKER_DIR")
    if st.st_uid != os.getuid():
        raise WorkerError(
            f"the engine worker folder {d} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}); it cannot be used (set MLC_WORKER_DIR or use --no-worker)"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)
    return d


def code_fingerprint() -> str:
    """Which engine code a process runs: the package folder's identity, version, python."""
    st = os.stat(Path(mlc.__file__).resolve().parent)
    return f"{mlc.__version__}:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}:{sys.executable}"


def idle_seconds(text: str | None) -> float:
    """Parse an idle time in seconds (``--idle``, ``MLC_WORKER_IDLE``); UsageError if bad."""
    if text is None or text == "":
        return DEFAULT_IDLE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"--idle must be a number of seconds >= 0, not {text!r}")
    return value


# -- messages ----------------------------------------------------------------------------------


def read_request(conn: socket.socket, limit: int = 4 << 20) -> dict[str, Any]:
    """The one request a client sends (the worker's side); ConnectionError or ValueError."""
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the client closed before sending a request")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("request too large")
    message = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(message, dict):
        raise ValueError("a request is a JSON object")
    return message
