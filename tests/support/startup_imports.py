"""Python start-up of the host CLI: import time (the sum of ``python -X importtime``'s self
column) and wall time, medians of ROUNDS fresh processes, per command; ``--before SRC`` adds
another tree's figures (e.g. main's ``src``).

    python3 tests/support/startup_imports.py [ROUNDS] [--before /path/to/src]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "mlc --help": ["--help"],
    "mlc list": ["list"],
    "mlc stop NAME (no such container)": ["stop", "no-such-container"],
}
SRC = str(Path(__file__).resolve().parents[2] / "src")


def measure(script: str, args: list[str], src: str, rounds: int) -> tuple[float, float]:
    imports, walls = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": src}
        argv = [sys.executable, "-X", "importtime", script, *args]
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        imports.append(sum(
            int(line.split("|")[0].split(":")[1])
            for line in p.stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line
        ) / 1e6)  # fmt: skip
    return statistics.median(imports), statistics.median(walls)


def main(argv: list[str]) -> None:
    trees = {"this tree": SRC}
    if "--before" in argv:
        i = argv.index("--before")
        trees = {"before": argv[i + 1], **trees}
        argv = argv[:i] + argv[i + 2 :]
    rounds = int(argv[0]) if argv else 5
    script = shutil.which("mlc") or "mlc"
    if script.endswith("/shims/mlc"):
        script = subprocess.run(["pyenv", "which", "mlc"], capture_output=True, text=True)
        script = script.stdout.strip()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print("| command | tree | imports (s) | wall (s) |")
    print("|---|---|---|---|")
    for label, args in COMMANDS.items():
        for tree, src in trees.items():
            imports, wall = measure(script, args, src, rounds)
            print(f"| {label} | {tree} | {imports:.3f} | {wall:.3f} |")
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
    print(f"| python -c pass | - | - | {statistics.median(walls):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
