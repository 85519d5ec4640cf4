"""How `mlc` ends when it is told to: Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`, a CI limit)
and SIGHUP (a closed terminal, a dropped SSH session) all raise a ``KeyboardInterrupt`` in the
command, so the same clean-up runs for each (a cancelled engine request, the processes a
command started in the container, the auto-stop); then one line and exit 130, 143 or 129.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from mlc.errors import Interrupted

TERMINATING = (signal.SIGTERM, signal.SIGHUP)

F = TypeVar("F", bound=Callable[..., Any])


class Escaped(BaseException):  # noqa: N818 - a carrier, not an error
    """A ``KeyboardInterrupt`` carried past Typer, which would turn it into a silent exit 130."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__(interrupt)
        self.interrupt = interrupt


def interruptible(func: F) -> F:
    """FUNC (a command) with its interruptions carried to :func:`mlc.cli.entry.run`."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Escaped(exc) from None

    return command  # type: ignore[return-value]


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # The first SIGTERM or SIGHUP starts the clean-up; repeats must not cut it short.
    for sig in TERMINATING:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install() -> None:
    """Take SIGTERM and SIGHUP like Ctrl-C (as :class:`mlc.errors.Interrupted`). Only for the
    `mlc` process itself (``main``), never in a library caller; a signal ignored when mlc
    started (``nohup``) stays ignored."""
    for sig in TERMINATING:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _terminate)
