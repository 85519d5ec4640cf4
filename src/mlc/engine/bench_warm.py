"""The benchmark's warm-path row (``--bench_warm N``): a txt2img request to a warm worker.

A worker of its own (a private ``$MLC_WORKER_DIR``) is started the way the engine's client
starts one: the first request, ``python -m mlc.engine.client`` with the benchmark's flags,
starts it and loads the model (untimed). Then N requests, each a fresh client process
launched by the harness, each with a new prompt (the benchmark's plus ", take K": its text
encoding is not cached): the time from the client's launch to the worker's first denoising
step (the summary's ``timings.first_step_unix``) and to the first PNG written (its mtime).
Every request renders one image (``--n_iter 1``). The worker is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlc.engine import PROG, EngineError
from mlc.engine.env import with_worker_dir


def warm_runs(cfg: dict[str, Any], work: Path, n: int) -> list[dict[str, Any]]:
    """N timed requests to a warm worker (after one untimed that starts and loads it)."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlc-bench-worker-") as wdir:
        env = with_worker_dir(os.environ, Path(wdir) / "w")
        # the worker runs in its own folder: a relative PYTHONPATH (``PYTHONPATH=src``) would
        # make it import another mlc, which the client then replaces on every request
        paths = [str(Path(x).resolve()) for x in env.get("PYTHONPATH", "").split(os.pathsep) if x]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        runs = []
        try:
            _request(cfg, work / "start", f"{cfg['prompt']}, warm-up", env)
            for k in range(1, n + 1):
                runs.append(_request(cfg, work / f"take-{k}", f"{cfg['prompt']}, take {k}", env))
        finally:
            subprocess.run(
                [sys.executable, "-m", "mlc.engine.client", "--stop-worker"],
                env=env,
                capture_output=True,
                timeout=60,
            )
    return runs


def _request(cfg: dict[str, Any], outdir: Path, prompt: str, env: dict[str, str]) -> dict[str, Any]:
    """One client process: its launch, the first step and the first PNG, in seconds."""
    argv = [*cfg["engine_argv"], f"--ckpt={cfg['ckpt']}", f"--outdir={outdir}"]
    argv += [f"--prompt={prompt}", "--n_iter=1", "--skip_grid", "--json"]
    t_launch = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    t_exit = time.time()
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        line = tail[0] if tail else f"exit {proc.returncode}"
        raise EngineError(f"the warm worker run: {line.removeprefix(f'{PROG}: error: ')}")
    summary = json.loads(proc.stdout)
    first_png = Path(summary["files"][0]).stat().st_mtime if summary["files"] else None
    return {
        "t_launch": t_launch,
        "first_step_s": summary["timings"]["first_step_unix"] - t_launch,
        "first_png_s": first_png - t_launch if first_png is not None else None,
        "wall_s": t_exit - t_launch,
        "load_s": summary["timings"]["load_s"],  # 0: the worker's model was loaded already
    }
