"""`mlc txt2img NAME ...` straight to a warm worker's socket, without the Docker SDK, Typer,
rich or a ``docker exec``.

A container made by this mlc mounts a private host folder as its worker's folder
(:mod:`mlc.warmpath`), so when its worker listens, the host reaches the socket directly. The
request is planned as the slow path plans it (:func:`mlc.invocation.plan`, from the route file
the slow path and the pre-warm leave), sent as the in-container client sends it, and streamed
back the same way: the same output, exit codes, one-line errors, cancel on Ctrl-C, SIGTERM and
SIGHUP (the worker cancels a request whose client left) and ``mlc: interrupted (...)``.

:func:`txt2img` returns None whenever it cannot be sure to act exactly as the slow path does,
before anything was sent or printed (no route, no worker listening, a remote Docker engine, a
flag the slow path handles itself, ``MLC_FASTPATH=0``); `mlc` then runs the full CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from mlc import warmpath
from mlc.scaleout import GPUS_FLAG, SCALED_FLAGS

PROG = "mlc-txt2img"
SLOW_FLAGS = frozenset(
    ("-h", "--help", "--no-worker", "--bench", "--stop-worker", "--cancel", "--idle", "--warm",
     "--fetch-outputs", GPUS_FLAG, *SCALED_FLAGS, "--ray_workers")
)  # fmt: skip
"""Flags the slow path (or the in-container client) reads itself: never the fast path's. A
sharded run (``--gpus``, ``--devices``, ``--ray``, ``--resume``) runs one-shot there."""
GRACE_S = 10.0
"""How long an interrupted call waits for the worker to stop its request (it stops after the
current denoising step; a second Ctrl-C leaves at once), so the next call is not queued
behind it, as after the slow path's cancel."""
WORKDIR = "/workspace"  # the exec's folder, which the in-container client sends as its cwd
UMASK = 0o022  # docker exec's


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether the fast path may be tried: not turned off, the local Docker engine (a remote
    engine's workers are on its host)."""
    if environ.get("MLC_FASTPATH", "1").lower() in ("0", "off", "no", "false"):
        return False
    return local_engine(environ)


def local_engine(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether mlc surely talks to the local Docker socket (no DOCKER_HOST other than a unix
    socket, no DOCKER_CONTEXT, the docker CLI's default context); when unsure, False."""
    host = environ.get("DOCKER_HOST", "")
    if (host and not host.startswith("unix://")) or environ.get("DOCKER_CONTEXT"):
        return False
    return _default_context(environ)


def _default_context(environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether the docker CLI's current context is the default one (~/.docker/config.json)."""
    config = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        current = json.loads(config.read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return True
    return current in (None, "", "default")


def _flag_name(arg: str) -> str:
    return arg.partition("=")[0]


def _plain_name(name: str) -> bool:
    """Whether NAME is a valid container name (never a path out of the workers folder)."""
    from mlc.containers.labels import NAME_MAX, NAME_RE, SEP

    return len(name) <= NAME_MAX and SEP not in name and bool(NAME_RE.match(name))


def txt2img(args: list[str]) -> int | None:
    """`mlc txt2img` ARGS (NAME first) through a warm worker's socket: its exit code, or None
    when the full CLI must run it (nothing was sent or printed then)."""
    if not args or args[0].startswith("-") or not enabled():
        return None
    name, flags = args[0], args[1:]
    if not _plain_name(name):  # a name `mlc create` refuses: the full CLI says why
        return None
    if any(_flag_name(f) in SLOW_FLAGS for f in flags) or os.environ.get("MLC_WORKER_IDLE"):
        return None
    d = warmpath.host_dir(name)
    route = warmpath.read_route(d)
    if route is None:
        return None
    try:
        request = _request(name, route, flags)
    except Exception:  # noqa: BLE001 - anything the slow path would say (a bad path): it says it
        return None
    if request is None:
        return None
    got = warmpath.connect(d, None)
    if got is None:
        return None
    return _run(*got, request)


def _request(name: str, route: dict[str, Any], flags: list[str]) -> dict[str, Any] | None:
    """The worker request for FLAGS, planned as the slow path plans it; None: the slow path."""
    from mlc.invocation import plan

    mounts = [(Path(o), PurePosixPath(i)) for o, i in route.get("mounts") or []]
    inv = plan(name, route.get("state") or {}, mounts, flags, environ={})
    if inv.one_shot:
        return None
    env = {**(route.get("env") or {}), **inv.env}
    return {
        "op": "run",
        "argv": inv.flags,
        "cwd": str(route.get("workdir") or WORKDIR),
        "env": {k: env[k] for k in warmpath.REQUEST_ENV if k in env},
        "umask": UMASK,
        "idle": None,
        "tag": inv.tag or uuid.uuid4().hex,
        "resume": [],
    }


def _write(stream: Any, text: str) -> None:
    stream.buffer.write(text.encode("utf-8", "replace"))
    stream.flush()


def _leave(conn: warmpath.Connection, grace: float = GRACE_S) -> None:
    """Cancel the request (the worker sees its client leave) and wait, at most GRACE seconds,
    until the worker has stopped it; what it still says is dropped."""
    import socket
    import time

    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + grace
    with contextlib.suppress(Exception, KeyboardInterrupt):
        while (left := deadline - time.monotonic()) > 0:
            conn.sock.settimeout(left)
            if conn.next() is None:
                break
    conn.close()


def _run(conn: warmpath.Connection, hello: dict[str, Any], request: dict[str, Any]) -> int | None:
    """Send REQUEST, stream the answer; None when the worker went away before it answered."""
    from mlc import errors

    answered = False
    saved: list[dict[str, Any]] = []
    try:
        try:
            conn.send(request)
        except OSError:
            return None
        for message in conn:
            if "out" in message:
                _write(sys.stdout, message["out"])
            elif "err" in message:
                _write(sys.stderr, message["err"])
            elif "image" in message:
                saved.append(message["image"])
            elif "queued" in message:
                ahead = int(message["queued"])
                s = "s" if ahead != 1 else ""
                line = f"{PROG}: waiting for the engine worker ({ahead} request{s} ahead)\n"
                _write(sys.stderr, line)
                continue
            elif "exit" in message:
                return int(message["exit"])
            elif "error" in message:
                return errors.report(errors.WorkerError(str(message["error"])), PROG)
            answered = True
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM, SIGHUP: leaving cancels it
        _leave(conn)
        return errors.report(interrupt, "mlc")
    except BrokenPipeError as exc:  # our output is gone (`| head`): leaving cancels it
        _leave(conn)
        return errors.report(exc, "mlc")
    finally:
        conn.close()
    if not answered:
        return None  # it died before it said anything: the slow path restarts it
    if saved:
        where = PurePosixPath(str(saved[-1].get("file", ""))).parent
        n = len(saved)
        kept = f"{n} image{'s' if n != 1 else ''} of this run kept in {where}"
        return errors.report(
            errors.WorkerError(f"the engine worker stopped during this request; {kept}"), PROG
        )
    _write(
        sys.stderr,
        f"{PROG}: note: the engine worker stopped unexpectedly; restarting it and retrying "
        "the request\n",
    )
    return None
