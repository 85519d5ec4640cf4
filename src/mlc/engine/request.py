"""A warm worker's request: one client's run (its socket, command line and state) and the
streams that carry its stdout and stderr to the client in whole lines (``mlc.engine.worker``
runs them; the wire format is ``mlc.engine.protocol``)."""

from __future__ import annotations

import contextlib
import io
import socket
from dataclasses import dataclass, field
from typing import Any

from mlc.engine.protocol import send


@dataclass
class Request:
    """One client's run, from accept to exit code."""

    conn: socket.socket
    argv: list[str]
    cwd: str
    env: dict[str, str]
    umask: int
    tag: str | None
    resume: list[dict[str, Any]] = field(default_factory=list)  # images an earlier try saved
    progress: bool = False  # the client asked for a {"step": [i, n]} after each step
    warm: bool = False  # only load the model (pre-warm): no output, nobody waits for it
    reason: str | None = None  # why it was cancelled (the client left, --cancel, ...)
    done: bool = False
    closed: bool = False
    dead_output: bool = field(default=False, repr=False)

    def send(self, message: dict[str, Any]) -> None:
        """Send to the client; a client that left is ignored (its request is cancelled)."""
        if self.dead_output:
            return
        try:
            send(self.conn, message)
        except OSError:
            self.dead_output = True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)  # also wakes the watcher thread
        self.conn.close()


class Stream(io.TextIOBase):
    """stdout or stderr of a request, sent to the client in whole lines as soon as each line
    is complete (``print`` writes a line in two pieces: the client, and what else writes to
    its terminal, never see half a line); ``close`` sends what is left."""

    def __init__(self, request: Request, key: str) -> None:
        self.request, self.key, self.partial = request, key, ""

    def write(self, text: str) -> int:
        self.partial += text
        end = self.partial.rfind("\n") + 1
        if end:
            lines, self.partial = self.partial[:end], self.partial[end:]
            self.request.send({self.key: lines})
        return len(text)

    def close(self) -> None:
        if self.partial:
            self.request.send({self.key: self.partial})
            self.partial = ""
        super().close()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False
