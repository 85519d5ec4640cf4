"""mlc.serve: the warm engine behind AUTOMATIC1111's web API (``/sdapi/v1/...``).

Two ways in: ``mlc serve NAME`` on the host (the server runs on the host and reaches the
container's worker through ``docker exec`` of :mod:`mlc.serve.relay`), and ``mlc-txt2img
--serve`` (or ``python -m mlc.serve``) inside a container (the server talks to the user's
worker socket directly). Both run the same web app (:mod:`mlc.serve.app`, FastAPI on uvicorn).

Modules: :mod:`.names` (A1111 sampler and scheduler names <-> the engine's), :mod:`.a1111`
(request and response shapes, validation, limits, the ``info`` document), :mod:`.link` (one
request to the local worker, in the container), :mod:`.relay` (the link as JSON lines, for the
host), :mod:`.backends` (how a job reaches an engine), :mod:`.jobs` (the queue, progress,
interrupt), :mod:`.app` (routes and auth), :mod:`.server` (listening, the in-container entry).

Nothing here imports torch, diffusers, transformers or docker at module level, whichever side
runs it; FastAPI and uvicorn (the ``serve`` extra) are imported only by the web app, after
:func:`require_web` said they are there.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from mlc.errors import MlcError, UsageError

DEFAULT_PORT = 7860  # AUTOMATIC1111's
WEB_PACKAGES = ("fastapi", "uvicorn")
WEB_REQUIREMENTS = ("fastapi>=0.110", "uvicorn>=0.29")
"""The ``serve`` extra (pyproject.toml), also what ``mlc setup NAME --serve`` installs in a
container for ``mlc-txt2img --serve``."""


def require_web(where: str = "pip install 'mlc-toolkit[serve]'") -> None:
    """FastAPI and uvicorn are importable, or one line that says how to get them (WHERE)."""
    missing = [p for p in WEB_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise MlcError(
            f"the A1111 API server needs {' and '.join(missing)}, which this Python lacks",
            hint=f"install them: {where}",
        )


class RequestError(UsageError):
    """A request the server refuses: one line, and its HTTP status (400 bad value, 401 no or
    wrong credentials, 404 no such thing, 413 too large, 422 malformed, 501 not supported)."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequest") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def not_supported(message: str) -> RequestError:
    """A 501: a feature of AUTOMATIC1111's API that mlc does not have."""
    return RequestError(message, 501, "NotSupported")


@dataclass(frozen=True)
class EngineRequest:
    """An engine command line for the worker, whether its images are kept, and its tag (by
    which the worker cancels it)."""

    argv: list[str]
    save: bool = True
    tag: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"argv": self.argv, "save": self.save, "tag": self.tag}
