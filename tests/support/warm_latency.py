"""Warm `mlc txt2img` latency on this machine: from the command's start to the engine's first
denoising step (``timings.first_step_unix`` of the ``--json`` summary; host and container
share the clock) and to its exit, with the worker warm. The variants alternate, so machine
load hits each alike: the docker exec path (``MLC_FASTPATH=0``), the socket (fast) path and,
with ``--before SRC``, another tree's `mlc` (e.g. main's ``src``).

    python3 tests/support/warm_latency.py NAME [ROUNDS] [--before /path/to/src]

NAME: a container made by this mlc, set up (`mlc setup NAME demo`) and started.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

FLAGS = ["--H", "64", "--W", "64", "--ddim_steps", "2", "--n_samples", "1", "--n_iter", "1",
         "--skip_grid", "--json"]  # fmt: skip


def main(argv: list[str]) -> None:
    before = None
    if "--before" in argv:
        i = argv.index("--before")
        before = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    name, rounds = argv[0], int(argv[1]) if len(argv) > 1 else 5
    mlc = shutil.which("mlc") or "mlc"
    if mlc.endswith("/shims/mlc"):  # pyenv: the console script itself, not its bash shim
        mlc = subprocess.run(["pyenv", "which", "mlc"], capture_output=True, text=True).stdout
        mlc = mlc.strip()
    variants: dict[str, dict[str, str]] = {}
    if before:
        variants["before (docker exec)"] = {"PYTHONPATH": before}
    variants["docker exec (MLC_FASTPATH=0)"] = {"MLC_FASTPATH": "0"}
    variants["socket (fast path)"] = {}
    got: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in variants}
    for _ in range(rounds):
        for label, extra in variants.items():
            t0 = time.time()
            p = subprocess.run([mlc, "txt2img", name, *FLAGS], capture_output=True, text=True,
                               env={**os.environ, **extra})  # fmt: skip
            t1 = time.time()
            if p.returncode != 0:
                sys.exit(p.stderr)
            summary = json.loads(p.stdout)
            if summary["timings"]["load_s"]:
                sys.exit("the worker was not warm: start it first (mlc start NAME)")
            got[label][0].append(summary["timings"]["first_step_unix"] - t0)
            got[label][1].append(t1 - t0)
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print("| path | command start -> first step, median (min-max) | -> exit, median |")
    print("|---|---|---|")
    for label, (firsts, walls) in got.items():
        print(f"| {label} | {statistics.median(firsts):.3f} s ({min(firsts):.3f}-"
              f"{max(firsts):.3f}) | {statistics.median(walls):.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
