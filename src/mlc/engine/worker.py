"""The warm engine worker: one long-lived process per user that keeps the model loaded.

Started detached by ``mlc.engine.client`` on first use (``python -m mlc.engine.worker --dir D
--idle S``). It listens on ``D/engine.sock`` (D is 0700, the socket 0600, and every peer's
uid is checked with SO_PEERCRED: it never serves another user), runs requests one at a
time in accept order in its main thread, each exactly as ``mlc-txt2img`` would (same
output, one-line errors and exit codes; outputs relative to the client's folder), reuses
its loaded model while checkpoint, config, device and precision stay the same, and exits
after S seconds without requests. A client that disconnects (Ctrl-C, SIGTERM, a closed
terminal) or a ``--cancel TAG`` cancels its request, which stops between two denoising steps
(every image saved so far is kept); the worker stays usable. ``--stop-worker`` (the ``stop``
message with ``cancel``), SIGTERM and SIGINT cancel the running request and every queued one
and make the worker exit at once. Each saved image is streamed to its client (``{"image":
entry}``) as soon as it is written, so a client whose worker died can resume after it. The
request's output reaches the client in whole lines. It logs to ``D/worker.log``. The protocol
is ``mlc.engine.protocol``.

Why one module of ~500 lines: the accept thread, the queue, cancellation and the loaded
session share one lock and one set of flags; the request and its streams are in
``mlc.engine.request``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from mlc.engine import report_error
from mlc.engine.command import execute
from mlc.engine.command import main as run_command
from mlc.engine.env import apply_request_env, worker_dir, worker_idle
from mlc.engine.options import parse_args, validate
from mlc.engine.protocol import (
    DEFAULT_IDLE,
    PIDFILE,
    SOCKET,
    STATUS,
    code_fingerprint,
    idle_seconds,
    peer_uid,
    private_dir,
    read_request,
    send,
)
from mlc.engine.request import Request, Stream
from mlc.engine.run import Cancelled, Control, Summary
from mlc.engine.session import Session, open_session
from mlc.engine.spec import RunSpec
from mlc.errors import MlcError, WorkerError

log = logging.getLogger("mlc.engine.worker")
POLL = 0.5  # seconds: how often the main loop looks at its flags


def _stamp(path: str) -> tuple[int, int, int] | None:
    """Identity of a checkpoint file (a replaced file is loaded again)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Worker:
    """The socket, the queue and the loaded Session."""

    def __init__(self, d: Path, idle: float) -> None:
        self.dir, self.idle = d, idle
        self.path = d / SOCKET
        self.uid = os.getuid()
        self.code = code_fingerprint()
        self.queue: queue.Queue[Request] = queue.Queue()
        self.lock = threading.Lock()
        self.active: Request | None = None  # the request the engine runs (may be interrupted)
        self.current: Request | None = None  # the request serve_one handles, until answered
        self.pending: list[Request] = []
        self.stopping = False
        self.halt: str | None = None  # why every request is cancelled (the worker exits now)
        self.closed = False
        self.session: Session | None = None
        self.stamp: tuple[int, int, int] | None = None
        self.served = 0
        self.last = time.monotonic()
        self.state, self.model = "starting", None
        self.listener = self._bind()
        self.publish("starting")
        self.inode = os.stat(self.path).st_ino
        self.acceptor = threading.Thread(target=self._accept_loop, name="accept", daemon=True)

    # -- socket --------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            pass
        else:
            raise WorkerError(f"another engine worker is listening on {self.path}")
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        return sock

    def publish(self, state: str, model: str | None = None) -> None:
        """Say what the worker does (``starting``, ``loading`` MODEL, ``ready`` MODEL, ``idle``)
        in ``STATUS`` (written whole, then renamed) and to the ``status`` request."""
        self.state, self.model = state, model
        path = self.dir / STATUS
        tmp = path.with_name(f".{STATUS}.{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(self.status()) + "\n")
            os.replace(tmp, path)

    def status(self) -> dict[str, Any]:
        """The ``status`` reply: state, model, pid, requests served, whether one runs now."""
        return {
            "state": self.state,
            "model": self.model,
            "pid": os.getpid(),
            "served": self.served,
            "busy": self.active is not None,
        }

    def _close_listener(self) -> None:
        """Stop taking requests: the socket name is freed at once for a new worker."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                self._admit(conn)
            except Exception as err:  # noqa: BLE001 - one bad client must not stop the worker
                log.warning("connection dropped: %s", err)
                with contextlib.suppress(OSError):
                    conn.close()

    def _admit(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid is not None and uid != self.uid:
            log.warning("refused a connection from uid %s", uid)
            with contextlib.suppress(OSError):
                send(
                    conn,
                    {"error": f"this engine worker serves uid {self.uid} only; refusing uid {uid}"},
                )
            conn.close()
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 60, 0))
        send(
            conn,
            {"hello": {"pid": os.getpid(), "uid": self.uid, "code": self.code, "idle": self.idle}},
        )
        conn.settimeout(10)
        message = read_request(conn)
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 60, 0))
        op = message.get("op")
        if op == "run":
            req = Request(
                conn,
                [str(a) for a in message.get("argv", [])],
                str(message.get("cwd") or "/"),
                {str(k): str(v) for k, v in (message.get("env") or {}).items()},
                int(message.get("umask", 0o022)),
                message.get("tag"),
                resume=[
                    e
                    for e in message.get("resume") or []
                    if isinstance(e, dict) and isinstance(e.get("index"), int)
                ],
                progress=bool(message.get("progress")),
            )
            if message.get("idle") is not None:
                self.idle = idle_seconds(str(message["idle"]))
            with self.lock:
                ahead = sum(not r.warm for r in self.pending) + (1 if self.active else 0)
                self.pending.append(req)
            if ahead:
                req.send({"queued": ahead})
            threading.Thread(target=self._watch, args=(req,), daemon=True).start()
            self.queue.put(req)
            log.info("request queued (%d ahead): %s", ahead, " ".join(req.argv))
        elif op == "warm":  # pre-warm: load the model now; the client does not wait for it
            req = Request(
                conn,
                [str(a) for a in message.get("argv", [])],
                str(message.get("cwd") or self.dir),
                {str(k): str(v) for k, v in (message.get("env") or {}).items()},
                0o022,
                None,
                warm=True,
            )
            with self.lock:
                self.pending.append(req)
            self.queue.put(req)
            send(conn, {"ok": "loading the model"})
            conn.close()
            log.info("pre-warm queued: %s", " ".join(req.argv))
        elif op == "status":
            send(conn, {"ok": self.state, "status": self.status()})
            conn.close()
        elif op == "stop":  # --stop-worker (cancel); without cancel: retired after its queue
            if message.get("cancel"):
                reason = "the engine worker is stopping (--stop-worker)"
                n = self._cancel(lambda r: True, reason)
                self.halt = reason
                what = (
                    f"stops now ({n} request{'s' if n != 1 else ''} cancelled)"
                    if n
                    else "stops after its queue, which is empty"
                )
            else:
                what = "stops after its queue"
            self.stopping = True
            self._close_listener()
            send(conn, {"ok": f"the engine worker (pid {os.getpid()}) {what}"})
            conn.close()
        elif op == "cancel":
            tag = message.get("tag")
            found = self._cancel(lambda r: r.tag is not None and r.tag == tag, "cancelled")
            send(conn, {"ok": "cancelled" if found else "no such request"})
            conn.close()
        elif op == "ping":
            send(conn, {"ok": f"pid {os.getpid()}, {self.served} request(s) served"})
            conn.close()
        else:
            send(conn, {"error": f"unknown request {op!r}"})
            conn.close()

    def _watch(self, req: Request) -> None:
        """Wait for the client to go away (Ctrl-C, SIGTERM, ...) and cancel its request."""
        while True:
            try:
                data = req.conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
        self._cancel(lambda r: r is req, "the client left")

    def _cancel(self, match: Callable[[Request], bool], reason: str) -> int:
        """Cancel the requests that MATCH, queued or running (the engine stops the running
        one after its current denoising step); how many."""
        with self.lock:
            found = 0
            for r in self.pending:
                if match(r) and r.reason is None:
                    r.reason, found = reason, found + 1
            r = self.active
            if r is not None and not r.done and match(r) and r.reason is None:
                r.reason, found = reason, found + 1
                log.info("%s: cancelling the running request", reason)
            return found

    def stop_reason(self, req: Request) -> str | None:
        """Why REQ must stop now (None: go on): the engine asks after every step."""
        return self.halt or req.reason

    # -- requests ------------------------------------------------------------------------------

    def execute(self, spec: RunSpec) -> Summary:
        """SPEC's run (or grid) on the kept Session (loaded again for another model), for the
        current request: its saved images streamed to its client, stopped between steps when
        cancelled, resumed after the images an earlier try saved."""
        req = self.current
        assert req is not None
        control = Control(
            on_image=lambda entry: req.send({"image": entry}),
            stop=lambda: self.stop_reason(req),
            resume=req.resume,
            on_step=(lambda i, n: req.send({"step": [i, n]})) if req.progress else None,
        )
        control.check()  # cancelled while it waited
        session = self._session_for(spec)
        summary = execute(spec, session, control)
        summary["worker"] = {"pid": os.getpid(), "requests": self.served + 1}
        return summary

    def _session_for(self, spec: RunSpec) -> Session:
        """The kept Session when it serves SPEC, else SPEC's model loaded (the status says
        ``loading`` meanwhile, ``ready`` after; ``idle`` when loading failed)."""
        stamp = _stamp(spec.ckpt)
        if self.session is None or stamp != self.stamp or not self.session.serves(spec):
            self._drop_session()
            self.publish("loading", spec.ckpt)
            try:
                self.session = open_session(spec)
            except BaseException:
                self.publish("idle")
                raise
            self.stamp = stamp
            log.info("loaded %s", spec.ckpt)
            self.publish("ready", spec.ckpt)
        return self.session

    def warm(self, req: Request) -> None:
        """Pre-warm: load the model of REQ's command line (its environment applied), so the
        first request finds it loaded; a failure is only logged (that request will say it)."""
        try:
            apply_request_env(req.env)
            os.chdir(req.cwd)
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                session = self._session_for(validate(parse_args(req.argv)))
            session.fresh = False  # loaded before any run: no run's load time
        except (Exception, SystemExit) as err:  # noqa: BLE001 - logged; the next run reports it
            log.warning("pre-warm failed: %s", err)
        finally:
            with contextlib.suppress(OSError):
                os.chdir(self.dir)

    def _drop_session(self) -> None:
        if self.session is None:
            return
        device = self.session.device
        self.session = self.stamp = None
        gc.collect()
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def serve_one(self, req: Request) -> None:
        """Run REQ as ``mlc-txt2img`` would, with its folder, umask and request environment."""
        with self.lock:
            if req in self.pending:
                self.pending.remove(req)
            reason = self.stop_reason(req)
            if req.warm:
                req.done = True
            elif reason:  # cancelled while queued
                err = Stream(req, "err")
                err.write(f"note: {reason}: the request was cancelled before it started\n")
                req.send({"exit": report_error(Cancelled(reason), err)})
                err.close()
                req.close()
                return
            else:
                self.active = self.current = req
        if req.warm:
            if not reason:
                self.warm(req)
            return
        code = 1
        started = time.monotonic()
        try:
            try:
                os.chdir(req.cwd)
            except OSError as err:
                failure = WorkerError(f"cannot enter {req.cwd}: {err}")
                code = report_error(failure, Stream(req, "err"))
            else:
                os.umask(req.umask)
                apply_request_env(req.env)
                out, err = Stream(req, "out"), Stream(req, "err")
                with redirect_stdout(out), redirect_stderr(err):  # type: ignore[type-var]
                    code = run_command(req.argv, run=self.execute)
                out.close()
                err.close()
        finally:
            with self.lock:
                req.done = True
                self.active = None
            with contextlib.suppress(OSError):
                os.chdir(self.dir)
        self.served += 1
        log.info("request done: exit %d in %.2f s", code, time.monotonic() - started)
        req.send({"exit": code})
        req.close()
        self.current = None

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until idle or stopped; returns the exit code."""
        (self.dir / PIDFILE).write_text(f"{os.getpid()}\n")
        self.acceptor.start()
        log.info(
            "worker %d listening on %s (idle exit after %g s)", os.getpid(), self.path, self.idle
        )
        with contextlib.suppress(Exception):  # warm the imports while the first client waits
            from mlc.engine import generate, loading  # noqa: F401
        if self.state == "starting":
            self.publish("idle")
        try:
            while True:
                try:
                    self._step()
                except StopIteration:
                    break
        finally:
            self._close_listener()
            self.acceptor.join(timeout=15)
            while True:  # requests that arrived while closing: served, or cancelled (halt)
                try:
                    self.serve_one(self.queue.get_nowait())
                except queue.Empty:
                    break
            with contextlib.suppress(OSError):
                if (self.dir / PIDFILE).read_text().strip() == str(os.getpid()):
                    (self.dir / PIDFILE).unlink()
                    (self.dir / STATUS).unlink()
            log.info("worker %d exits after %d request(s)", os.getpid(), self.served)
        return 0

    def _step(self) -> None:
        if self.stopping:
            raise StopIteration
        # A new worker waits at least 10 s for the request of the client that started it.
        idle = self.idle if self.served else max(self.idle, 10.0)
        left = self.last + idle - time.monotonic()
        if left <= 0 and self.queue.empty():
            log.info("idle for %g s: exiting", self.idle)
            self.stopping = True
            raise StopIteration
        try:
            req = self.queue.get(timeout=max(0.0, min(POLL, left)))
        except queue.Empty:
            return
        self.serve_one(req)
        self.last = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """``python -m mlc.engine.worker [--dir D] [--idle S]``; normally started by the client."""
    p = argparse.ArgumentParser(prog="python -m mlc.engine.worker", description=__doc__)
    p.add_argument("--dir", type=Path, default=None, help="private folder (default /tmp/mlc-UID)")
    p.add_argument(
        "--idle",
        type=str,
        default=None,
        help=f"exit after this many idle seconds (default $MLC_WORKER_IDLE, {DEFAULT_IDLE:g})",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s worker[%(process)d] %(message)s",
        stream=sys.__stderr__,
    )
    try:
        d = private_dir(args.dir or worker_dir())
        idle = idle_seconds(args.idle if args.idle is not None else worker_idle())
        worker = Worker(d, idle)
    except (MlcError, OSError) as err:
        log.error("cannot start: %s", err)
        return 1

    def terminate(signum: int, _frame: Any) -> None:
        # Only flags (no lock: the main thread may hold it): the running request stops after
        # its current step, the queued ones are answered as cancelled, then the worker exits.
        worker.halt = f"the engine worker is stopping ({signal.Signals(signum).name})"
        worker.stopping = True

    # SIGINT too: the worker has its own session, so a terminal's Ctrl-C never reaches it; a
    # SIGINT is someone's `kill -INT` (or Ctrl-C of a worker run by hand in the foreground).
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
