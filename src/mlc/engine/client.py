"""The light client of the warm engine worker: ``python -m mlc.engine.client [txt2img flags]``.

It imports no torch or diffusers (it starts in a fraction of a second), connects to the
user's worker (``mlc.engine.worker``) on a Unix socket in a private folder, starting the
worker on first use, sends the command line, streams the worker's stdout and stderr back,
and exits with the engine's exit code (0, 1, 2 or 130, as ``mlc-txt2img``). Ctrl-C, SIGTERM
and SIGHUP all end it the same way: its request is cancelled (the worker sees it leave and
stops after the current denoising step); exit 130 for Ctrl-C, 128 + N for signal N.

Client flags (everything else goes to the engine unchanged):
  --no-worker      run the one-shot engine in this process instead (``mlc-txt2img``)
  --idle SECONDS   the worker exits after this long without requests (default: $MLC_WORKER_IDLE,
                   else 600); also updates a running worker
  --stop-worker    stop the worker now: its running and queued requests are cancelled
  --cancel TAG     cancel the request tagged TAG ($MLC_REQUEST_TAG of its client)
  --warm           start the worker (when absent) and have it load the model of the given
                   flags now, then return at once (the pre-warm of `mlc start`)

Protocol: ``mlc.engine.protocol`` (newline-delimited JSON over ``$MLC_WORKER_DIR/engine.sock``).
A connection that ends without an exit code means the worker died: it is restarted and the
request retried once, resuming after the last image the worker said it saved (``image``
messages), so no seed is made twice and no file written twice. A worker killed by the
kernel's OOM killer (its cgroup's counter rose: ``mlc.engine.oomkill``) is reported as such,
without a retry. Errors are one line through the one error table (``WorkerError``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from mlc.engine import PROG, UsageError, guarded, stopped_like_ctrl_c
from mlc.engine.env import request_env, request_tag, worker_dir, worker_environ, worker_idle
from mlc.engine.oomkill import OomCounter, killed_for_memory, oom_counter
from mlc.engine.protocol import (
    LOCK,
    LOG,
    SOCKET,
    Lines,
    code_fingerprint,
    idle_seconds,
    peer_uid,
    private_dir,
    send,
)
from mlc.errors import WorkerError

START_TIMEOUT = 120.0


class WorkerGone(Exception):
    """The connection ended without an exit code. ACCEPTED: the worker had taken the request;
    OOM: its memory cgroup's OOM-kill counter when the request was sent."""

    def __init__(self, accepted: bool, oom: OomCounter | None = None) -> None:
        super().__init__("the engine worker went away")
        self.accepted, self.oom = accepted, oom


# -- connecting -------------------------------------------------------------------------------


def connect(d: Path) -> tuple[socket.socket, Lines, dict[str, Any]] | None:
    """Connect to the worker in D and read its greeting; None when no worker listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(d / SOCKET))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except PermissionError:
        sock.close()
        raise WorkerError(f"permission denied on the engine worker socket {d / SOCKET}") from None
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        sock.close()
        raise WorkerError(
            f"the engine worker at {d / SOCKET} runs as uid {uid}, not as you; refusing it"
        )
    lines = Lines(sock)
    first = lines.next()
    if first is None:  # it was shutting down: as if absent
        sock.close()
        return None
    if "error" in first:
        sock.close()
        raise WorkerError(str(first["error"]))
    return sock, lines, first.get("hello", {})


def _log_tail(d: Path, n: int = 5) -> str:
    try:
        lines = (d / LOG).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:])


def start_worker(d: Path, idle: float) -> None:
    """Start a detached worker in D (the caller holds the start lock), in its own session and
    without the exec's tags (``env.EXEC_ENV``): it outlives the exec that started it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(d / SOCKET)  # a dead worker's socket
    log_path = d / LOG
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > 1_000_000:
            log_path.unlink()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlc.engine.worker", "--dir", str(d), "--idle", str(idle)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=str(d),
            env=worker_environ(),  # not the exec's tags: the host's cleanup must not match it
            start_new_session=True,  # not killed by the client's Ctrl-C, outlives it
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if (d / SOCKET).exists():
            return
        code = proc.poll()
        if code is not None:
            raise WorkerError(
                f"the engine worker did not start (exit {code}): {_log_tail(d)} "
                "(run with --no-worker to use the one-shot engine)"
            )
        time.sleep(0.02)
    raise WorkerError(
        f"the engine worker did not start within {START_TIMEOUT:.0f} s; see {log_path}"
    )


def run_request(
    argv: list[str],
    idle: float | None,
    tag: str | None,
    saved: list[dict[str, Any]],
    progress: bool = False,
) -> dict[str, Any]:
    """The ``run`` message for ARGV as this process would run it (its folder, environment and
    umask), resuming after the images in SAVED; IDLE, when given, resets the worker's."""
    umask = os.umask(0o022)
    os.umask(umask)
    request = {
        "op": "run",
        "argv": argv,
        "cwd": os.getcwd(),
        "env": request_env(),
        "umask": umask,
        "idle": idle,
        "tag": tag,
        "resume": list(saved),
    }
    if progress:
        request["progress"] = True
    return request


def open_worker(d: Path, idle: float) -> tuple[socket.socket, Lines, dict[str, Any]]:
    """Connect to the worker, starting it when absent or when it runs other engine code."""
    got = connect(d)
    if got and got[2].get("code") == code_fingerprint():
        return got
    if got:  # an engine update (`mlc setup`): retire the old worker, it finishes its queue
        sock, lines, _ = got
        with contextlib.suppress(OSError):
            send(sock, {"op": "stop"})
            lines.next()
        sock.close()
    with open(d / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one client starts the worker; the others wait
        try:
            got = connect(d)
            if got and got[2].get("code") == code_fingerprint():
                return got
            if got:
                got[0].close()
            start_worker(d, idle)
            for _ in range(100):
                got = connect(d)
                if got:
                    return got
                time.sleep(0.05)
            raise WorkerError(f"cannot connect to the engine worker; see {d / LOG}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- requests ----------------------------------------------------------------------------------


MID_LINE: set[int] = set()
"""The streams (``id``) whose last write did not end a line (the client's own lines start a
new one: they never land in the middle of the worker's)."""


def _write(stream: TextIO, text: str) -> None:
    """TEXT to STREAM in one write (the worker sends whole lines)."""
    if not text:
        return
    try:
        stream.buffer.write(text.encode("utf-8", "replace"))
        stream.flush()
    except BrokenPipeError:  # `| head`: keep the request going, drop the rest
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    if text.endswith("\n"):
        MID_LINE.discard(id(stream))
    else:
        MID_LINE.add(id(stream))


def _say(text: str) -> None:
    """One line of the client's own on stderr, never glued to a line the worker left open."""
    for stream in (sys.stdout, sys.stderr):
        if id(stream) in MID_LINE:
            _write(stream, "\n")
    _write(sys.stderr, f"{PROG}: {text}\n")


def attempt(
    d: Path, argv: list[str], idle: float, idle_given: bool, saved: list[dict[str, Any]]
) -> int:
    """One try of a request (resuming after the images in SAVED, to which the images this try
    saves are added); WorkerGone when the connection ends without an exit code."""
    sock, lines, hello = open_worker(d, idle)
    oom = oom_counter(hello["pid"]) if isinstance(hello.get("pid"), int) else None
    with sock:
        request = run_request(argv, idle if idle_given else None, request_tag(), saved)
        try:
            send(sock, request)
        except OSError:
            raise WorkerGone(False, oom) from None
        accepted = False
        while True:
            msg = lines.next()
            if msg is None:
                raise WorkerGone(accepted, oom)
            accepted = True
            if "out" in msg:
                _write(sys.stdout, msg["out"])
            elif "err" in msg:
                _write(sys.stderr, msg["err"])
            elif "image" in msg:
                saved.append(msg["image"])
            elif "queued" in msg:
                ahead = int(msg["queued"])
                _say(
                    f"waiting for the engine worker "
                    f"({ahead} request{'s' if ahead != 1 else ''} ahead)"
                )
            elif "exit" in msg:
                return int(msg["exit"])
            elif "error" in msg:
                raise WorkerError(str(msg["error"]))


def _kept(saved: list[dict[str, Any]]) -> str:
    """How many images this request saved, and where."""
    if not saved:
        return "no image of this run was saved"
    n, where = len(saved), Path(str(saved[-1].get("file", ""))).parent
    return f"{n} image{'s' if n != 1 else ''} of this run kept in {where}"


def run(argv: list[str], idle: float, idle_given: bool) -> int:
    """A request with the crash rule: the worker restarted and the request retried once,
    resuming after the images already saved; an out-of-memory kill is said, not retried."""
    d = private_dir(worker_dir())
    failures = tries = 0
    saved: list[dict[str, Any]] = []
    while True:
        tries += 1
        try:
            return attempt(d, argv, idle, idle_given, saved)
        except WorkerGone as gone:
            oom = killed_for_memory(gone.oom)
            if oom is not None:
                limit = f" (its memory limit: {oom.limit / 2**20:.0f} MiB)" if oom.limit else ""
                raise WorkerError(
                    f"the engine worker ran out of memory and was killed by the kernel{limit}; "
                    f"{_kept(saved)}",
                    hint="try a smaller --H/--W, a smaller --n_samples with --batched, or "
                    "--low_vram; or give the container more memory",
                ) from None
            if gone.accepted:
                failures += 1
            if failures >= 2 or tries >= 5:
                raise WorkerError(
                    f"the engine worker stopped twice during this request; {_kept(saved)}; "
                    f"see {d / LOG} (or run with --no-worker)"
                ) from None
            if gone.accepted:
                n = len(saved)
                resume = f", resuming after its {n} saved image{'s' if n != 1 else ''}"
                _say(
                    "note: the engine worker stopped unexpectedly; restarting it and retrying "
                    f"the request{resume if n else ''}"
                )


def control(op: str, **fields: Any) -> int:
    """--stop-worker / --cancel: one control message to a running worker."""
    d = private_dir(worker_dir())
    got = connect(d)
    if not got:
        _say("no engine worker is running")
        return 0
    sock, lines, _ = got
    with sock:
        send(sock, {"op": op, **fields})
        reply = lines.next() or {}
    if "error" in reply:
        raise WorkerError(str(reply["error"]))
    _say(str(reply.get("ok", "done")))
    return 0


def warm(argv: list[str], idle: float) -> int:
    """--warm: the worker started (when absent) and told to load ARGV's model now."""
    d = private_dir(worker_dir())
    sock, lines, _ = open_worker(d, idle)
    with sock:
        send(sock, {"op": "warm", "argv": argv, "cwd": os.getcwd(), "env": request_env()})
        reply = lines.next() or {}
    if "error" in reply:
        raise WorkerError(str(reply["error"]))
    return 0


def split_flags(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Take the client's own flags out of ARGV; the rest is the engine's command line."""
    own: dict[str, Any] = {}
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if arg in ("--no-worker", "--stop-worker", "--warm"):
            own[arg] = True
        elif name in ("--idle", "--cancel"):
            if not eq:
                value = next(it, None)
                if value is None:
                    raise UsageError(f"{name} needs a value")
            own[name] = value
        else:
            rest.append(arg)
    return own, rest


def one_shot(argv: list[str]) -> int:
    """The classic one-process engine (``mlc-txt2img``), replacing this process."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "mlc.engine.txt2img", *argv])
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit code (failures: one line, ``mlc.errors``' table).
    SIGTERM and SIGHUP end it as Ctrl-C does: the request is cancelled (exit 143, 129)."""
    with stopped_like_ctrl_c():
        return guarded(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> int:
    own, rest = split_flags(argv)
    try:
        if own.get("--stop-worker"):
            return control("stop", cancel=True)
        if "--cancel" in own:
            return control("cancel", tag=own["--cancel"])
        idle_given = "--idle" in own or worker_idle() is not None
        idle = idle_seconds(own.get("--idle", worker_idle()))
        if own.get("--warm"):
            return warm(rest, idle)
        # --help and the benchmark (which measures loading) run one-shot.
        if own.get("--no-worker") or any(a in ("-h", "--help", "--bench") for a in rest):
            return one_shot(rest)
        return run(rest, idle, idle_given)
    except OSError as err:  # the socket or the folder (Ctrl-C: the worker sees us leave)
        raise WorkerError(f"engine worker: {err}") from err


if __name__ == "__main__":
    sys.exit(main())
