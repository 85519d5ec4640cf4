"""Where the `mlc` commands write: results on stdout, messages on stderr, one way each."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mlc.errors import MlcError

out = Console()
err = Console(stderr=True)
PIPE_WIDTH = 100_000  # stdout is a pipe or a file: rows whole, whatever COLUMNS says


def say(message: str) -> None:
    """A message on stderr (progress, warnings, what was skipped); dropped when stderr is gone
    (a closed terminal), so the clean-up it reports on still runs."""
    with contextlib.suppress(OSError):
        err.print(message, highlight=False, markup=False, soft_wrap=True)


def show(message: str) -> None:
    """The command's result line on stdout."""
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def table(*headers: str, **kwargs: Any) -> Table:
    """A table for stdout, without a box; a cell too long for a terminal wraps, never cut."""
    t = Table(box=None, **kwargs)
    for header in headers:
        t.add_column(header, overflow="fold")
    return t


def show_table(t: Table) -> None:
    """T on stdout: as wide as the terminal, or each row whole when stdout is not one (a pipe
    to grep or awk must see whole names and paths, not 80 columns with an ellipsis)."""
    console = out if out.is_terminal else Console(width=PIPE_WIDTH)
    console.print(t)


def show_json(data: Any) -> None:
    """The command's result as JSON on stdout."""
    print(json.dumps(data, indent=2))


def confirm(question: str, force: bool) -> None:
    """Ask QUESTION unless FORCE; refuse without a terminal to ask on."""
    if force:
        return
    if not sys.stdin.isatty():
        raise MlcError(f"{question} Not confirmed", hint="stdin is not a terminal: add -f")
    if not typer.confirm(question, default=False):
        raise MlcError("cancelled", exit_code=1)
