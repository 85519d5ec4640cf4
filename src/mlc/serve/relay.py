"""Inside the container, for ``mlc serve`` on the host: :mod:`mlc.serve.link` as JSON lines.

``python -m mlc.serve.relay run JOB`` (JOB: ``{"argv", "save", "tag"}`` as JSON) runs one
request in the user's warm worker and writes every event as one JSON line on stdout, a PNG's
bytes as base64 in ``png``, and last ``{"exit": code}`` (or ``{"error": line}`` when the worker
cannot be reached, exit 1). ``models`` writes the installed checkpoints as one JSON line;
``cancel TAG`` cancels the request tagged TAG. Ctrl-C, SIGTERM or SIGHUP end it as they end
``mlc.engine.client``: the worker sees it leave and stops the request after the current step.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from mlc.engine import stopped_like_ctrl_c
from mlc.errors import MlcError, describe
from mlc.serve import EngineRequest, link


def emit(event: dict[str, Any]) -> None:
    """EVENT as one JSON line on stdout (bytes as base64)."""
    if isinstance(event.get("png"), bytes):
        event = {**event, "png": base64.b64encode(event["png"]).decode("ascii")}
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """``run JOB`` | ``models`` | ``cancel TAG``; the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    with stopped_like_ctrl_c():
        try:
            if args[:1] == ["models"]:
                emit({"models": link.models()})
                return 0
            if args[:1] == ["cancel"] and len(args) == 2:
                emit({"cancelled": link.cancel(args[1])})
                return 0
            if args[:1] == ["run"] and len(args) == 2:
                job = json.loads(args[1])
                argv = [str(a) for a in job["argv"]]
                req = EngineRequest(argv, bool(job["save"]), job.get("tag"))
                code = link.run(req, emit)
                emit({"exit": code})
                return 0
            emit({"error": "usage: python -m mlc.serve.relay run JOB | models | cancel TAG"})
            return 2
        except (MlcError, OSError, ValueError, KeyError) as err:
            emit({"error": describe(err)[0]})
            return 1
        except KeyboardInterrupt:  # the request was cancelled (the worker saw us leave)
            return 130


if __name__ == "__main__":
    sys.exit(main())
