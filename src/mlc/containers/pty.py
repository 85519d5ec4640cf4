"""An interactive exec without the docker CLI: the caller's terminal bridged to an SDK exec.

The exec gets a pseudo-terminal of its own (``tty=True``) when mlc's stdin is a terminal;
the local terminal is then put in raw mode, so every key (Ctrl-C, Ctrl-Z, Ctrl-D, arrows)
reaches the program inside as bytes, exactly as through ``docker exec -it``. Its size is
sent once at the start and again on every SIGWINCH. Without a terminal (piped stdin), the
exec has no tty: its stdout and stderr arrive multiplexed and are split back, and the end
of stdin is passed on (the socket's write side is shut). The exit code is the exec's.
Termination signals are the caller's business (:func:`mlc.containers.execute.shell`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any

import docker

from mlc.errors import MlcError

DETACH_KEYS = "ctrl-^,ctrl-@"  # off Ctrl-P, which bash's history needs (as the CLI path)
CHUNK = 65536
EXIT_WAIT_S = 5.0  # how long the exit code may lag behind the end of the output


def bridge(
    api: docker.APIClient,
    container_id: str,
    argv: list[str],
    *,
    user: str,
    workdir: str,
    env: dict[str, str],
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> int:
    """Run ARGV in the container interactively, with the local terminal (or pipes) as its
    own; returns its exit code."""
    fd_in = sys.stdin.fileno() if stdin is None else stdin
    fd_out = sys.stdout.fileno() if stdout is None else stdout
    fd_err = sys.stderr.fileno() if stderr is None else stderr
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    is_tty = os.isatty(fd_in)
    eid = api.exec_create(
        container_id, argv, stdin=True, tty=is_tty, user=user, workdir=workdir,
        environment=env, detach_keys=DETACH_KEYS,
    )["Id"]  # fmt: skip
    conn = api.exec_start(eid, tty=is_tty, socket=True)
    sock = getattr(conn, "_sock", conn)
    if not hasattr(sock, "fileno") or not hasattr(sock, "recv"):
        with contextlib.suppress(Exception):
            conn.close()
        raise MlcError(
            "this Docker connection offers no socket for an interactive terminal",
            hint="install the docker command-line client (docker-ce-cli or docker.io)",
        )
    pump = _Pump(sock, fd_in, fd_out, fd_err, is_tty)
    try:
        with _raw(fd_in, is_tty), _winch(fd_in if is_tty else None) as wake:
            pump.run(wake, lambda: resize(api, eid, fd_in))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            sock.close()
    return exit_code(api, eid)


def exit_code(api: docker.APIClient, eid: str) -> int:
    """The exec's exit code, once Docker has it (it may lag behind the end of the output)."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while True:
        info = api.exec_inspect(eid)
        if not info.get("Running") or time.monotonic() > deadline:
            code = info.get("ExitCode")
            return 127 if code is None else int(code)
        time.sleep(0.05)


def resize(api: docker.APIClient, eid: str, fd: int) -> None:
    """Tell the exec the size of the terminal FD (best effort: it may have just ended)."""
    size = window_size(fd)
    if size:
        with contextlib.suppress(Exception):
            api.exec_resize(eid, height=size[0], width=size[1])


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal FD, or None when it has none."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols = struct.unpack("HHHH", packed)[:2]
    return (rows, cols) if rows and cols else None


class _Pump:
    """Bytes both ways until the exec's output ends."""

    def __init__(self, sock: Any, fd_in: int, fd_out: int, fd_err: int, is_tty: bool) -> None:
        self.sock = sock
        self.fd_in: int | None = fd_in
        self.fd_out = fd_out
        self.fd_err = fd_err
        self.frames = None if is_tty else _Frames()

    def run(self, wake: int | None, on_wake: Callable[[], None]) -> None:
        """Pump until the output ends; ON_WAKE (the resize) runs first and after each wake."""
        if wake is not None:
            on_wake()
        while True:
            watched = [self.sock] + [fd for fd in (self.fd_in, wake) if fd is not None]
            ready, _, _ = select.select(watched, [], [])
            if self.sock in ready and not self._from_container():
                return
            if self.fd_in is not None and self.fd_in in ready:
                self._to_container()
            if wake is not None and wake in ready:
                with contextlib.suppress(OSError):
                    os.read(wake, 512)
                on_wake()

    def _from_container(self) -> bool:
        """Copy what the exec printed; False once its output has ended."""
        try:
            data = self.sock.recv(CHUNK)
            while data and getattr(self.sock, "pending", lambda: 0)():  # TLS: bytes held back
                data += self.sock.recv(CHUNK)
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not data:
            return False
        if self.frames is None:
            _write_all(self.fd_out, data)
        else:
            for stream, payload in self.frames.feed(data):
                _write_all(self.fd_err if stream == 2 else self.fd_out, payload)
        return True

    def _to_container(self) -> None:
        """Pass on what was typed (or piped); at its end, shut the socket's write side."""
        assert self.fd_in is not None
        try:
            data = os.read(self.fd_in, CHUNK)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):  # EIO: the terminal is gone
                raise
            data = b""
        if data:
            self.sock.sendall(data)
            return
        self.fd_in = None
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


class _Frames:
    """Docker's multiplexed stream (no tty): 8-byte headers (stream, size) and payloads."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            size = int.from_bytes(self.buf[4:8], "big")
            if len(self.buf) < 8 + size:
                break
            out.append((self.buf[0], self.buf[8 : 8 + size]))
            self.buf = self.buf[8 + size :]
        return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _raw(fd: int, is_tty: bool):
    """FD's terminal in raw mode meanwhile (nothing to do without one)."""
    if not is_tty:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _winch(fd: int | None):
    """Meanwhile, each SIGWINCH (the terminal FD was resized) makes the read end of a pipe
    readable, which wakes the pump; yields that end (None without a terminal)."""
    if fd is None:
        yield None
        return
    r, w = os.pipe()
    os.set_blocking(w, False)

    def woken(*_: object) -> None:
        with contextlib.suppress(OSError):
            os.write(w, b"w")

    previous = signal.signal(signal.SIGWINCH, woken)
    try:
        yield r
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(r)
        os.close(w)
