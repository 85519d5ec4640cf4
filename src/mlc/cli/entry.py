"""The `mlc` and `mlc-VERB` entry points: AIME's argument spellings, then the app, with every
failure reported as one line through :func:`mlc.errors.report`.

Light on purpose: the Typer app (and with it the Docker SDK and rich) is imported only when a
command needs it; `mlc txt2img` first tries :mod:`mlc.fastpath` (a warm worker's socket), and
`mlc list` / `mlc stop` :mod:`.quick` (the local engine's socket, without the SDK)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from mlc import errors
from mlc.cli import signals

_SHORT_WITH_VALUE = re.compile(r"^(-[wdmg])=(.*)$")


def normalise(argv: list[str]) -> list[str]:
    """Accept AIME's spellings: `-w=DIR` as `-w DIR`, `-arch` as `--arch`."""
    fixed: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return fixed + argv[i:]
        if arg == "-arch" or arg.startswith("-arch="):  # AIME v2's single-dash long option
            arg = "--arch" + arg[5:]
        m = _SHORT_WITH_VALUE.match(arg)
        fixed += [m.group(1), m.group(2)] if m else [arg]
    return fixed


def skip_ssh_transport(args: list[str]) -> None:
    """When mlc surely talks to the local Docker socket, keep the Docker SDK from importing
    paramiko for its ssh:// transport (a third of its import time), which only a remote
    engine uses: ``--context``, DOCKER_HOST, DOCKER_CONTEXT or a docker CLI context leave it."""
    from mlc import fastpath

    if "paramiko" in sys.modules or any(a.partition("=")[0] == "--context" for a in args):
        return
    if fastpath.local_engine():
        sys.modules["paramiko"] = None  # type: ignore[assignment]  # import paramiko: ImportError


def run(args: list[str]) -> int:
    """Run the app on ARGS; the exit code (every failure reported as one line on stderr)."""
    try:
        from mlc.cli import lean

        lean.defer()  # rich's markdown and traceback modules, which the app never uses
        import typer

        from mlc.cli.app import app

        sys.modules["mlc.cli"].app = app  # type: ignore[attr-defined]  # not the submodule
    except (Exception, KeyboardInterrupt) as exc:
        return errors.report(exc, "mlc")
    try:
        code = app(args=args, prog_name="mlc", standalone_mode=False)
    except typer.Abort:  # click's EOF or Ctrl-C at a prompt: no exit_code of its own
        return errors.report(KeyboardInterrupt(), "mlc")
    except signals.Escaped as escaped:  # Ctrl-C, SIGTERM or SIGHUP in a command
        return errors.report(escaped.interrupt, "mlc")
    except (Exception, KeyboardInterrupt) as exc:
        return errors.report(exc, "mlc")
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None, prefix: list[str] | None = None) -> None:
    """`mlc`: run and exit with the command's code (SIGTERM and SIGHUP taken like Ctrl-C)."""
    signals.install()
    args = normalise((prefix or []) + list(sys.argv[1:] if argv is None else argv))
    if args[:1] == ["txt2img"]:
        from mlc import fastpath

        code = fastpath.txt2img(args[1:])
        if code is not None:
            sys.exit(code)
    elif args[:1] in (["list"], ["stop"]):
        from mlc.cli import quick

        code = quick.dispatch(args)
        if code is not None:
            sys.exit(code)
    skip_ssh_transport(args)
    sys.exit(run(args))


def _verb(verb: str) -> Callable[[], None]:
    def main_verb() -> None:
        main(prefix=[verb])

    main_verb.__doc__ = f"`mlc-{verb}`: the same as `mlc {verb}`."
    return main_verb


main_create = _verb("create")
main_open = _verb("open")
main_list = _verb("list")
main_start = _verb("start")
main_stop = _verb("stop")
main_remove = _verb("remove")
main_stats = _verb("stats")
main_update_sys = _verb("update-sys")
main_export = _verb("export")
main_import = _verb("import")
