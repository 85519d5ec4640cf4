"""The user-facing error type: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations


class MlcError(Exception):
    """An error the user can act on. ``str(err)`` is the one line that is shown."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotFoundError(MlcError):
    """A container, image, recipe or file that does not exist."""


class DockerUnavailable(MlcError):
    """The Docker engine cannot be reached."""
