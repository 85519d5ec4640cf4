"""Where host library code reports progress (downloads, unpacking, image pulls and builds).

Library functions take a ``Progress`` and never print; the CLI passes a ``RichProgress`` (bars
on a terminal, plain lines otherwise) and tests a ``NullProgress`` or their own recorder. Sizes
are shown by rich's own formatter (:func:`human_size`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """The progress interface: tasks of bytes, and one-line notes."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """Begin a task of ``total`` bytes (None: unknown), ``completed`` already done."""

    def advance(self, n: int) -> None:
        """``n`` more bytes done in the current task."""

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the current task's bytes done (and its total, when it becomes known)."""

    def note(self, text: str) -> None:
        """A one-line message (a retry, a build step) worth showing."""

    def finish(self) -> None:
        """The current task is over."""


class NullProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """Ignore."""

    def advance(self, n: int) -> None:
        """Ignore."""

    def update(self, completed: int, total: int | None = None) -> None:
        """Ignore."""

    def note(self, text: str) -> None:
        """Ignore."""

    def finish(self) -> None:
        """Ignore."""


class RichProgress:
    """A rich progress bar (bytes, rate, ETA); use as a context manager. Notes are printed
    above the bars."""

    def __init__(self, console: Any = None, transient: bool = False) -> None:
        from rich import progress as rp

        self._progress = rp.Progress(
            rp.TextColumn("[bold]{task.description}"),
            rp.BarColumn(),
            rp.DownloadColumn(),
            rp.TransferSpeedColumn(),
            rp.TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
        self._progress.stop()

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """Add a new bar."""
        self.finish()
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, n: int) -> None:
        """Move the bar."""
        if self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the bar."""
        if self._task is not None:
            self._progress.update(self._task, completed=completed, total=total)

    def note(self, text: str) -> None:
        """Print a line above the bars."""
        self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def finish(self) -> None:
        """Complete the current bar."""
        if self._task is not None:
            task = self._progress.tasks[-1]
            if task.total is None:
                self._progress.update(self._task, total=task.completed)
            self._task = None


def human_size(n: int | float | None) -> str:
    """Bytes for people, by rich's formatter (decimal units, as downloads are shown)."""
    from rich.filesize import decimal

    return decimal(int(n or 0))
