"""The `mlc` command line: each command parses its flags, calls one library function, and
renders the result.

Modules: :mod:`.app` (the Typer app, assembled), :mod:`.entry` (``main``, the ``mlc-VERB``
entry points, AIME's spellings, the one error report), :mod:`.options` (shared option types),
:mod:`.output` (stdout/stderr), :mod:`.signals` (Ctrl-C, SIGTERM and SIGHUP), and one module
per command group: :mod:`.containers_cmd`, :mod:`.archive_cmd`, :mod:`.models_cmd`,
:mod:`.images_cmd`.
"""

from mlc.cli.app import app
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
