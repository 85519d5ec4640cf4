"""Where the `mlc` commands write: results on stdout, messages on stderr, one way each."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

from mlc.errors import MlcError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_CONSOLES: dict[str, Console] = {}
PIPE_WIDTH = 100_000  # stdout is a pipe or a file: rows whole, whatever COLUMNS says


def console(name: str) -> Console:
    """The ``out`` (stdout) or ``err`` (stderr) console, made on first use: rich is imported
    only by a command that prints through it."""
    if name not in _CONSOLES:
        from rich.console import Console

        _CONSOLES[name] = Console(stderr=name == "err")
    return _CONSOLES[name]


def __getattr__(name: str) -> Any:
    if name in ("out", "err"):
        return console(name)
    raise AttributeError(f"module 'mlc.cli.output' has no attribute {name!r}")


def say(message: str) -> None:
    """A message on stderr (progress, warnings, what was skipped); dropped when stderr is gone
    (a closed terminal), so the clean-up it reports on still runs."""
    with contextlib.suppress(OSError):
        console("err").print(message, highlight=False, markup=False, soft_wrap=True)


def show(message: str) -> None:
    """The command's result line on stdout."""
    console("out").print(message, highlight=False, markup=False, soft_wrap=True)


def table(*headers: str, **kwargs: Any) -> Table:
    """A table for stdout, without a box; a cell too long for a terminal wraps, never cut."""
    from rich.table import Table

    t = Table(box=None, **kwargs)
    for header in headers:
        t.add_column(header, overflow="fold")
    return t


def show_table(t: Table) -> None:
    """T on stdout: as wide as the terminal, or each row whole when stdout is not one (a pipe
    to grep or awk must see whole names and paths, not 80 columns with an ellipsis)."""
    from rich.console import Console

    out = console("out")
    (out if out.is_terminal else Console(width=PIPE_WIDTH)).print(t)


def show_json(data: Any) -> None:
    """The command's result as JSON on stdout."""
    print(json.dumps(data, indent=2))


def confirm(question: str, force: bool) -> None:
    """Ask QUESTION unless FORCE; refuse without a terminal to ask on."""
    if force:
        return
    if not sys.stdin.isatty():
        raise MlcError(f"{question} Not confirmed", hint="stdin is not a terminal: add -f")
    import typer

    if not typer.confirm(question, default=False):
        raise MlcError("cancelled", exit_code=1)
