"""One engine process per device on this machine (``--devices cpu,cpu`` / ``cuda:0,cuda:1``).

Each device process is spawned (a fresh interpreter: CUDA cannot be forked), sees only its
own GPU (``CUDA_VISIBLE_DEVICES``, so its model runs on ``cuda``, as a one-device run's
does, and the metadata says the same), loads the model once (``scale.shard``) and then makes
one image per job, each job and its result over the process's own pipe. A process that dies
(killed, out of memory) is noticed by its pipe closing, and named by its exit code.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from multiprocessing import connection
from typing import Any

from mlc.engine.scale.dispatch import Event
from mlc.engine.scale.plan import Job
from mlc.engine.spec import RunSpec

JOIN_S = 5.0  # how long a device process may take to leave after its last job


def visible_device(device: str, environ: dict[str, str] | None = None) -> tuple[str, str | None]:
    """DEVICE (``cuda:N``) as the process will see it: (``cuda``, its CUDA_VISIBLE_DEVICES);
    N counts the GPUs this process sees (an inherited CUDA_VISIBLE_DEVICES is kept in mind)."""
    environ = dict(os.environ) if environ is None else environ
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return device, None
    n = int(index or 0)
    inherited = [v for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ and n < len(inherited):
        return "cuda", inherited[n].strip()
    return "cuda", str(n)


def _serve(wid: int, spec: RunSpec, device: str, conn: Any) -> None:
    """A device process: load, say ready, then one image per job until told to stop.

    A CPU process keeps torch's default thread count, as a one-device run does: CPU kernels
    round differently with another count, and the pixels must be the same."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the run
    from mlc.errors import describe

    try:
        from mlc.engine.scale.shard import Shard

        shard = Shard(spec, device)
        conn.send(Event("ready", wid, info=shard.load(), pid=os.getpid()))
    except BaseException as exc:  # noqa: BLE001 - told to the driver, one line
        conn.send(Event("failed", wid, error=describe(exc, unforeseen_is_bug=False)))
        return
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the driver is gone
            return
        if job is None:
            return
        try:
            conn.send(Event("done", wid, made=shard.make(job)))
        except BaseException as exc:  # noqa: BLE001 - out of memory and the like
            conn.send(Event("failed", wid, error=describe(exc, unforeseen_is_bug=False)))
            return


class Pool:
    """The device processes of one run (back end of ``dispatch.run``). Each has its own pipe
    (no lock shared between processes: a killed one cannot block the others)."""

    def __init__(self, spec: RunSpec, devices: list[str]):
        self.spec = spec
        self.devices = devices
        self.labels = labels(devices)
        self.ctx = mp.get_context("spawn")
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        self.gone: set[int] = set()

    def start(self) -> None:
        for wid, device in enumerate(self.devices):
            seen, visible = visible_device(device)
            ours, theirs = self.ctx.Pipe()
            env = {"CUDA_VISIBLE_DEVICES": visible} if visible is not None else {}
            with _environ(env):
                proc = self.ctx.Process(
                    target=_serve,
                    args=(wid, self.spec, seen, theirs),
                    name=f"mlc-device-{self.labels[wid]}",
                    daemon=True,
                )
                proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    def submit(self, wid: int, job: Job) -> None:
        with contextlib.suppress(OSError):  # a dead device: its exit is reported next
            self.conns[wid].send(job)

    def events(self, timeout: float) -> list[Event]:
        """What happened since the last call (waits up to TIMEOUT for the first event)."""
        live = {self.conns[w]: w for w in range(len(self.conns)) if w not in self.gone}
        out: list[Event] = []
        for conn in connection.wait(list(live), timeout) if live else []:
            wid = live[conn]
            try:
                while conn.poll():
                    out.append(conn.recv())
            except (EOFError, OSError):  # its end closed: the process is gone
                self.procs[wid].join(JOIN_S)
                code = self.procs[wid].exitcode
                out.append(Event("failed", wid, error=(exit_text(code), 1)))
        self.gone.update(e.wid for e in out if e.kind == "failed")
        return out

    def retire(self, wid: int) -> None:
        """Stop device WID (it failed)."""
        self.gone.add(wid)
        proc = self.procs[wid]
        if proc.exitcode is None:
            proc.kill()

    def close(self) -> None:
        for wid, conn in enumerate(self.conns):
            if self.procs[wid].exitcode is None:
                with contextlib.suppress(OSError):
                    conn.send(None)
        for proc in self.procs:
            proc.join(JOIN_S)
            if proc.exitcode is None:
                proc.kill()
                proc.join(JOIN_S)
        for conn in self.conns:
            conn.close()


def exit_text(code: int | None) -> str:
    """A device process's exit code in words."""
    if code is None:
        return "its process stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"its process was killed by {signal.Signals(-code).name}"
        return f"its process was killed by signal {-code}"
    return f"its process exited with code {code}"


def labels(devices: list[str]) -> list[str]:
    """Each device's name in progress lines: itself, or ``cpu#1`` when named twice."""
    return [d if devices.count(d) == 1 else f"{d}#{i}" for i, d in enumerate(devices)]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """os.environ with VALUES while a child process is started (spawn copies it)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
