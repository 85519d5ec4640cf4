"""The warm engine worker's wire, shared by its two ends: newline-delimited JSON messages over a
unix socket, the peer's uid, and the names of the socket and status file in the worker's folder.

Standard library only: the engine's protocol (:mod:`mlc.engine.protocol`, in the container)
and the host's fast path (:mod:`mlc.warmpath`, which must not import the engine package) both
build on it, so the two ends cannot drift apart.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator, Mapping
from typing import Any

SOCKET = "engine.sock"  # the worker's socket in its folder
STATUS = "status.json"  # what the worker says it does, beside it


def send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    """One JSON line."""
    sock.sendall(json.dumps(message).encode() + b"\n")


class Lines:
    """JSON-object lines read from a socket; None at the end of the stream (or a broken one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> dict[str, Any] | None:
        """The next message, or None when the peer closed (or the connection broke)."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (message := self.next()) is not None:
            yield message


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where unknown)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, 12))
    return uid
