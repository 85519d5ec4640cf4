"""The classic ``scripts/txt2img.py`` command line, on the bundled engine.

``python -m mlc.engine.txt2img [flags]`` or ``mlc-txt2img [flags]``. Accepts the CompVis /
AIME flags with their names, types and defaults, plus ``--sampler``, ``--negative_prompt``,
``--device``, ``--json``, ``--batched``, the speed flags, ``--bench`` and the grid axes
(``mlc.engine.options``). Exit codes: 0 success, 1 model/checkpoint/runtime error, 2 bad
command-line input, 130 interrupted.

Only the entry point lives here: the flow is ``mlc.engine.command`` (shared with the warm
worker), the run ``mlc.engine.run``. Nothing in the engine imports this module.
"""

from __future__ import annotations

import sys

from mlc.engine import command, stopped_like_ctrl_c
from mlc.engine.options import build_parser, read_prompt_file

__all__ = ["build_parser", "main", "read_prompt_file"]  # the parser is public (docs/engine.md)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. SIGTERM and SIGHUP stop it as Ctrl-C does (every
    image finished so far is kept, no half-written file is left; exit 143 or 129)."""
    with stopped_like_ctrl_c():
        return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
