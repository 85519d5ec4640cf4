"""mlc.engine: the bundled Stable Diffusion v1 txt2img engine (container side).

Importing the package keeps huggingface_hub and transformers off the network (``offline()``
runs here, once, before any submodule can import them). Imports nothing heavy: torch and
diffusers are loaded by the submodules that need them. Never imports docker, typer or rich.

Also the engine's few shared basics: its errors (``mlc.errors``' EngineError and UsageError),
``say()`` for progress lines on stderr, ``guarded()`` / ``report_error()``, the one way
the engine's entry points (the CLI, the benchmark, the worker client) turn an exception into
one line and an exit code, and ``stopped_like_ctrl_c()``, which makes SIGTERM and SIGHUP
(``kill``, ``timeout``, a closed terminal) stop an entry point the way Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd-v1"
"""The bundled SD v1 diffusers config folder (configs and tokenizer, no weights)."""

V1_INFERENCE_YAML = Path(__file__).resolve().parent / "configs" / "v1-inference.yaml"
"""The original CompVis inference YAML, as shipped with SD v1."""

PROG = "mlc-txt2img"
"""The name every engine message starts with."""


def offline() -> None:
    """Keep huggingface_hub and transformers off the network (call before importing them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")


offline()


from mlc.errors import (  # noqa: E402  (light: no third party)
    EngineError,
    Interrupted,
    UsageError,
    report,
)

__all__ = [
    "CONFIG_DIR",
    "PROG",
    "V1_INFERENCE_YAML",
    "EngineError",
    "UsageError",
    "guarded",
    "offline",
    "report_error",
    "say",
    "stopped_like_ctrl_c",
]


def say(message: str) -> None:
    """One line for the user on stderr (progress, notes), flushed at once."""
    print(message, file=sys.stderr, flush=True)


def report_error(exc: BaseException, stream: TextIO | None = None) -> int:
    """EXC as ``mlc-txt2img: error: ...`` on STREAM (default stderr), one line; returns its
    exit code.

    Exceptions the table does not name (torch, diffusers) are ordinary errors (exit 1), not
    internal ones: they are about the model or the input."""
    return report(exc, PROG, unforeseen_is_bug=False, stream=stream)


def guarded(call: Callable[[], int]) -> int:
    """CALL's exit code; any failure is reported (``report_error``: one line, its code), and
    argparse's SystemExit (``--help``) gives its own code."""
    try:
        return call()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except (Exception, KeyboardInterrupt) as exc:  # one line, no traceback
        return report_error(exc)


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stopped_like_ctrl_c(*signums: int) -> Iterator[None]:
    """While inside, each of SIGNUMS (default SIGTERM and SIGHUP) raises ``Interrupted`` (a
    KeyboardInterrupt) in the main thread, as Ctrl-C does: the command stops the same way
    (finished images kept, a warm worker's request cancelled), reported as ``interrupted
    (SIGTERM)`` with exit code 128 + N, as the host's ``mlc`` does. The previous handlers come
    back afterwards; off the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _interrupt) for s in signums or (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
