"""Commands in a container: streamed (output back, exit code returned) or an interactive
shell, through the docker CLI or mlc's own terminal bridge (:mod:`.pty`).

Docker passes no signal on to an exec, and keeps it running when its client goes away. So
every exec carries a tag (``MLC_EXEC``) in its environment, and when the mlc command is
interrupted (Ctrl-C, SIGTERM, a closed terminal: a ``KeyboardInterrupt`` here) the same signal
goes to every process of that exec's session inside the container (``session.sh``), and what
is left after a grace period is killed; likewise SIGPIPE when mlc's own output is a closed pipe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, BinaryIO

import docker

from mlc.containers import pty
from mlc.containers.container import Container
from mlc.errors import Interrupted, MlcError, UsageError

PASSED_VARS = ("TERM", "LANG", "DISPLAY", "NCCL_P2P_LEVEL", "CUDA_VISIBLE_DEVICES")
EXEC_TAG = "MLC_EXEC"
GRACE_S = 5  # seconds an interrupted exec has to end before it is killed


def exec_env(c: Container) -> dict[str, str]:
    """The environment of a command in C: its name, and the caller's terminal and GPU vars."""
    env = {"MLC_CONTAINER": c.name}
    for var in PASSED_VARS:
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def new_tag() -> str:
    """A fresh exec tag."""
    return uuid.uuid4().hex


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal an interruption stands for: SIGTERM or SIGHUP, else Ctrl-C's SIGINT."""
    return interrupt.signum if isinstance(interrupt, Interrupted) else int(signal.SIGINT)


def end_session(
    c: Container, tag: str, signum: int, grace: float = GRACE_S, *, shell: bool = False
) -> None:
    """Send SIGNUM to what the exec tagged TAG runs in C; kill what is left after GRACE
    seconds (of an interactive SHELL, only the shell itself, as a terminal's hangup would
    leave `nohup` jobs). Best effort: the caller is already being interrupted."""
    script = resources.files("mlc.containers").joinpath("session.sh").read_text(encoding="utf-8")
    argv = ["sh", "-c", script, "mlc-session", f"{EXEC_TAG}={tag}", str(signum), str(int(grace))]
    argv.append("leader" if shell else "all")
    with contextlib.suppress(Exception):
        c.exec_run(argv, user="root")


def exec_stream(
    dc: docker.DockerClient,
    c: Container,
    cmd: list[str],
    *,
    user: str | None = None,
    workdir: str = "/workspace",
    env: dict[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    tag: str | None = None,
) -> int:
    """Run CMD in C non-interactively, streaming its output; returns its exit code. When
    interrupted, CMD gets the same signal (see the module's doc) before this re-raises."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    tag = tag or new_tag()
    eid = dc.api.exec_create(
        c.id,
        cmd,
        user=user or c.exec_user,
        workdir=workdir,
        environment={**exec_env(c), **(env or {}), EXEC_TAG: tag},
    )["Id"]
    output = _Output(dc.api.exec_start(eid, stream=True, demux=True))
    try:
        for out, err in output:
            if out:
                stdout.write(out)
                stdout.flush()
            if err:
                stderr.write(err)
                stderr.flush()
    except KeyboardInterrupt as interrupt:
        output.drain_while(end_session, c, tag, signal_of(interrupt))
        raise
    except OSError as exc:  # our output is gone: a closed pipe (`| head`) or terminal
        if exc.errno in (errno.EPIPE, errno.EIO):
            sig = signal.SIGPIPE if exc.errno == errno.EPIPE else signal.SIGHUP
            output.drain_while(end_session, c, tag, sig)
        raise
    finally:
        output.close()
    code = dc.api.exec_inspect(eid)["ExitCode"]
    return 127 if code is None else int(code)


class _Output:
    """An exec's (stdout, stderr) chunks, read by a thread of their own. An interruption thus
    never cuts a read short, and what the exec still prints can be read to the end while it
    is being stopped: Docker holds back the exit of every other exec of a container (the one
    that stops it, too) while one exec's output is unread."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.chunks: queue.Queue[Any] = queue.Queue(maxsize=64)
        self.dropping = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        item: Any = None
        try:
            for item in self.stream:
                self._put(item)
            item = None
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            item = exc
        self._put(item)

    def _put(self, item: Any) -> None:
        while not self.dropping.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        while (item := self.chunks.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    def drain_while(self, stop: Callable[..., None], *args: Any) -> None:
        """Drop the output from now on, run STOP(*ARGS), and wait a little for the end."""
        self.dropping.set()
        stop(*args)
        self.reader.join(timeout=GRACE_S + 5)

    def close(self) -> None:
        self.dropping.set()
        with contextlib.suppress(Exception):
            self.stream.close()


PTY_MODES = ("auto", "cli", "sdk")


def pty_mode() -> str:
    """How `mlc open` bridges a terminal: ``cli`` (the docker CLI) or ``sdk`` (mlc's own
    bridge, :mod:`.pty`). ``MLC_PTY`` chooses; by default the CLI when it is on PATH."""
    mode = (os.environ.get("MLC_PTY") or "auto").strip().lower()
    if mode not in PTY_MODES:
        raise UsageError(
            f"invalid MLC_PTY={os.environ.get('MLC_PTY')}", hint="use cli, sdk or auto"
        )
    if mode == "auto":
        return "cli" if shutil.which("docker") else "sdk"
    return mode


def shell(c: Container, command: list[str] | None = None) -> int:
    """An interactive login shell (or COMMAND) as the owner in /workspace, through the docker
    CLI or, without it (or with ``MLC_PTY=sdk``), mlc's own terminal bridge; returns its exit
    code. Interrupted (SIGTERM, or SIGHUP from a closed terminal), the shell's session in C
    ends too, and the terminal's settings are restored."""
    argv = command or ["bash", "-l"]
    tag = new_tag()
    env = {**exec_env(c), EXEC_TAG: tag}
    if pty_mode() == "sdk":
        with _terminal_kept():
            try:
                return pty.bridge(
                    c.raw.client.api, c.id, argv, user=c.exec_user, workdir="/workspace", env=env
                )
            except KeyboardInterrupt as interrupt:
                _end_shell(c, tag, interrupt)
                raise
    cli = shutil.which("docker")
    if not cli:
        raise MlcError(
            "the docker command-line client is not installed (MLC_PTY=cli)",
            hint="install docker-ce-cli or docker.io, or unset MLC_PTY to use mlc's own bridge",
        )
    cmd = [cli, "exec", "-i", "--detach-keys", pty.DETACH_KEYS, "-u", c.exec_user]
    cmd += ["-w", "/workspace"]
    if sys.stdin.isatty():
        cmd.append("-t")
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    cmd += [c.docker_name, *argv]
    with _terminal_kept():
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait()
        except KeyboardInterrupt as interrupt:
            _end_shell(c, tag, interrupt)
            try:
                proc.wait(timeout=5)  # the exec has ended: the CLI follows
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise


def _end_shell(c: Container, tag: str, interrupt: KeyboardInterrupt) -> None:
    """End the interactive exec TAG in C: SIGTERM or SIGHUP mean its terminal is gone, as far
    as the shell can tell (a hangup); Ctrl-C (without a raw terminal) is passed on."""
    sig = signal.SIGHUP if isinstance(interrupt, Interrupted) else signal.SIGINT
    end_session(c, tag, sig, grace=3, shell=True)


@contextlib.contextmanager
def _terminal_kept():
    """Restore the terminal's settings afterwards (a killed docker CLI leaves it raw)."""
    saved = None
    with contextlib.suppress(Exception):
        import termios

        saved = termios.tcgetattr(sys.stdin.fileno())
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(Exception):
                import termios

                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
