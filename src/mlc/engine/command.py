"""One engine command line, from argv to exit code: what ``mlc-txt2img`` runs
(``txt2img.main``) and what the warm worker runs for each request (with its own Session).

parse the flags -> the benchmark (``--bench``), or validate -> a grid (``--x/--y/--z``) or a
plain run -> the summary on stdout. Every failure is one line on stderr through the one error
table (``mlc.errors``): exit 1 for a model/checkpoint/runtime error (torch and diffusers
failures included), 2 for bad command-line input, 130 when interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from mlc.engine import guarded
from mlc.engine.grid import execute_grid
from mlc.engine.options import parse_args, validate
from mlc.engine.run import Control, Summary
from mlc.engine.run import execute as execute_run
from mlc.engine.session import Session
from mlc.engine.spec import RunSpec

Execute = Callable[[RunSpec], Summary]


def execute(
    spec: RunSpec, session: Session | None = None, control: Control | None = None
) -> Summary:
    """SPEC's grid when it has axes, else its plain run (on SESSION when it serves SPEC;
    CONTROL: see ``run.Control``)."""
    run = execute_grid if spec.axes else execute_run
    return run(spec, session, control)


def main(argv: list[str] | None = None, run: Execute | None = None) -> int:
    """Run one command line; returns the exit code. RUN replaces ``execute`` (the warm worker
    passes one that keeps its Session). ``--serve`` serves the warm worker over HTTP with
    AUTOMATIC1111's API instead (``mlc.serve``; never inside the worker)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if run is None and "--serve" in args:
        from mlc.serve.server import main as serve

        return serve([a for a in args if a != "--serve"])
    return guarded(lambda: _main(argv, run or execute))


def _main(argv: list[str] | None, run: Execute) -> int:
    args = parse_args(argv)
    if args.bench:  # the seed's defaults instead of the classic ones: see mlc.engine.bench
        from mlc.engine.bench import run_bench

        return run_bench(argv)
    spec = validate(args)
    if spec.scaled:  # several devices, Ray or --resume: mlc.engine.scale
        from mlc.engine.scale import run_scaled

        summary = run_scaled(spec)
    else:
        summary = run(spec)
    print_summary(spec, summary)
    return 0


def print_summary(spec: RunSpec, summary: Summary) -> None:
    """The ``--json`` document, or the classic closing line, on stdout."""
    try:
        if spec.json:
            print(json.dumps(summary, ensure_ascii=False, indent=2))
        else:
            print(f"Your samples are ready and waiting for you here: \n{spec.outdir} \n \nEnjoy.")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`: the reader left; the images are saved
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
