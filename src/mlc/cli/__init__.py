"""The `mlc` command line: each command parses its flags, calls one library function, and
renders the result.

Modules: :mod:`.app` (the Typer app, assembled), :mod:`.entry` (``main``, the ``mlc-VERB``
entry points, AIME's spellings, the one error report), :mod:`.options` (shared option types),
:mod:`.output` (stdout/stderr), :mod:`.signals` (Ctrl-C, SIGTERM and SIGHUP), and one module
per command group: :mod:`.containers_cmd`, :mod:`.archive_cmd`, :mod:`.models_cmd`,
:mod:`.images_cmd`.

Importing this package is cheap: the entry points are light (:mod:`.entry`), and ``app``
(Typer, rich, the Docker SDK) is loaded on first use, so `mlc txt2img` with a warm worker
(:mod:`mlc.fastpath`) starts without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlc.cli.entry import (
    main,
    main_create,
    main_export,
    main_import,
    main_list,
    main_open,
    main_remove,
    main_start,
    main_stats,
    main_stop,
    main_update_sys,
    normalise,
    run,
)

if TYPE_CHECKING:
    from mlc.cli.app import app

__all__ = [
    "app",
    "main",
    "main_create",
    "main_export",
    "main_import",
    "main_list",
    "main_open",
    "main_remove",
    "main_start",
    "main_stats",
    "main_stop",
    "main_update_sys",
    "normalise",
    "run",
]


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app (importing the submodule bound the module's name here)
        from mlc.cli.app import app

        globals()["app"] = app
        return app
    raise AttributeError(f"module 'mlc.cli' has no attribute {name!r}")
