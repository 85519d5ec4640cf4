"""Every user-facing error of mlc, in one tree, and the one table that turns any exception into
one line and an exit code.

The host CLI (``mlc``), the engine CLI (``mlc-txt2img``), the benchmark and the worker client all
report through :func:`report`, so the same failure reads the same everywhere. Light on purpose:
no third-party imports (the engine and the host both import it first); third-party exceptions
(docker, requests, torch, click) are matched by their qualified class names.

Exit codes: 0 success, 1 an error the user can act on, 2 bad command-line input, 70 an internal
error (a bug: ``MLC_DEBUG=1`` shows the traceback), 130 interrupted (Ctrl-C), 128 + N ended by
signal N (:class:`Interrupted`: 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class MlcError(Exception):
    """An error the user can act on. ``str(err)`` is the one line that is shown."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(MlcError):
    """Bad command-line input (a flag, a value, a name); exit code 2."""

    exit_code = EXIT_USAGE


class NotFoundError(MlcError):
    """A container, image, recipe or file that does not exist."""


class DockerUnavailable(MlcError):
    """The Docker engine cannot be reached."""


class NoSpaceError(MlcError):
    """Not enough free space (what was finished is kept)."""


class ChecksumError(MlcError):
    """The sha256 of a download or archive is not the expected one."""


class EngineError(MlcError):
    """The engine cannot do what was asked (bad checkpoint, bad config, a failed run)."""


class WorkerError(MlcError):
    """The warm engine worker (or its client) failed: socket, start-up, a lost request."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) taken like Ctrl-C, so the same clean-up runs
    (``except KeyboardInterrupt`` catches it); the exit code is 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signame(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


# -- the one table ------------------------------------------------------------------------------


def _qualnames(exc: BaseException) -> set[str]:
    """``module.Class`` of EXC's type and every base (matching without importing the module)."""
    return {f"{t.__module__}.{t.__qualname__}" for t in type(exc).__mro__}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _is_click_usage(exc: BaseException) -> bool:
    """Click's ClickException family (typer vendors click; not importable here), by shape."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def _click_message(exc: BaseException) -> str:
    text = exc.format_message()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    return f"{text} (see `{ctx.command_path} -h`)" if text and ctx else text


def _no_space(exc: BaseException) -> str:
    where = getattr(exc, "filename", None)
    return f"no space left on device{f' writing {where}' if where else ''}; free some space"


@dataclass(frozen=True)
class Rule:
    """One row of the table: which exceptions, their one line, their exit code."""

    matches: Callable[[BaseException], bool]
    message: Callable[[BaseException], str]
    exit_code: Callable[[BaseException], int]


def _named(*names: str) -> Callable[[BaseException], bool]:
    return lambda exc: bool(_qualnames(exc) & set(names))


def _code(n: int) -> Callable[[BaseException], int]:
    return lambda exc: n


TABLE: list[Rule] = [
    Rule(lambda e: isinstance(e, MlcError), str, lambda e: e.exit_code),  # type: ignore[attr-defined]
    Rule(
        lambda e: isinstance(e, Interrupted),
        lambda e: f"interrupted ({e.signame})",  # type: ignore[attr-defined]
        lambda e: 128 + e.signum,  # type: ignore[attr-defined]
    ),
    Rule(lambda e: isinstance(e, KeyboardInterrupt), lambda e: "interrupted", _code(130)),
    Rule(_is_click_usage, _click_message, lambda e: e.exit_code),  # type: ignore[attr-defined]
    Rule(
        _named("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"),
        lambda e: (
            "out of GPU memory; try --low_vram, smaller --H/--W, drop --batched, or "
            "--precision autocast"
        ),
        _code(EXIT_ERROR),
    ),
    Rule(
        lambda e: isinstance(e, MemoryError),
        lambda e: "out of memory; try smaller --H/--W or --n_samples",
        _code(EXIT_ERROR),
    ),
    Rule(
        lambda e: isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT),
        _no_space,
        _code(EXIT_ERROR),
    ),
    Rule(
        _named("docker.errors.DockerException"),
        lambda e: f"Docker: {_first_line(e)}",
        _code(EXIT_ERROR),
    ),
    Rule(
        _named("requests.exceptions.RequestException"),
        lambda e: f"network: {_first_line(e)}",
        _code(EXIT_ERROR),
    ),
]
"""From exception to one line and exit code, first match wins."""


def describe(exc: BaseException, *, unforeseen_is_bug: bool = True) -> tuple[str, int]:
    """EXC as (one line, exit code). An exception no rule names is an internal error (exit 70)
    when UNFORESEEN_IS_BUG, else an ordinary error (exit 1: the engine's torch/diffusers
    failures, which are about the model or the input rather than about mlc)."""
    for rule in TABLE:
        if rule.matches(exc):
            return rule.message(exc), rule.exit_code(exc)
    text = f"{type(exc).__name__}: {_first_line(exc)}"
    if unforeseen_is_bug:
        return f"internal error: {text} (set MLC_DEBUG=1 for details)", EXIT_INTERNAL
    return text, EXIT_ERROR


def report(
    exc: BaseException,
    prog: str,
    *,
    unforeseen_is_bug: bool = True,
    stream: TextIO | None = None,
) -> int:
    """Print EXC as ``PROG: error: ...`` (one line, no traceback) and return its exit code.
    ``MLC_DEBUG=1`` adds the traceback."""
    message, code = describe(exc, unforeseen_is_bug=unforeseen_is_bug)
    out = stream or sys.stderr
    if os.environ.get("MLC_DEBUG"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=out)
    if message:  # click's bare `mlc` has shown the help already: nothing to add
        interrupted = code == EXIT_INTERRUPTED or isinstance(exc, KeyboardInterrupt)
        if interrupted or message.startswith("internal error:"):
            line = f"{prog}: {message}"
        else:
            line = f"{prog}: error: {message}"
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):  # stderr gone (closed terminal): the exit code remains
            pass
    return code
