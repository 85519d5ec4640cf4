"""The benchmark's measured processes: ``python -m mlc.engine.bench_child ROLE CFG.json
RESULT.json``, started by ``mlc.engine.bench``.

ROLE ``mlc``: the engine as ``mlc-txt2img`` runs it, with a clock on the UNet (the raw times
``bench_report.summarize`` reads). ROLE ``prepare``: untimed, builds the converted cache when
it is used and reads the checkpoint into the page cache, so every timed run starts alike.
The diffusers row is ``mlc.engine.baseline``'s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mlc.engine import guarded


def engine(cfg: dict[str, Any]) -> dict[str, Any]:
    """The engine, as ``mlc-txt2img`` runs it, with a clock on the UNet."""
    from mlc.engine.options import parse
    from mlc.engine.run import execute
    from mlc.engine.session import open_session

    # Every engine flag the user gave (the benchmark passes them all on), then what the
    # harness sets for this run: the resolved checkpoint, its folder, samples and a summary.
    argv = [*cfg["engine_argv"], f"--ckpt={cfg['ckpt']}", f"--outdir={cfg['outdir']}"]
    argv += ["--skip_grid", "--json"]
    spec = parse(argv)
    t_imported = time.time()
    session = open_session(spec)
    t_loaded = time.time()
    cpu_loaded = time.process_time()  # CPU seconds of all threads since launch: the load's work
    from importlib.metadata import version

    import torch

    from mlc.engine.accel import report
    from mlc.engine.baseline import StepClock, peak_memory
    from mlc.engine.cudagraphs import steps_for

    # the engine's step (UNet + CFG, graphed on CUDA) is clocked, not the UNet's forward: a
    # replayed graph runs no hook, and warm-up and capture calls are no denoising steps; on a
    # GPU each end waits for the device, so a step's time is its GPU time
    cuda = session.device.startswith("cuda")
    clock = StepClock(sync=torch.cuda.synchronize if cuda else None)
    steps_for(session.components.unet).clocks.append((clock.pre, clock.post))
    summary = execute(spec, session)
    host, dev = peak_memory(session.device)

    return {
        "t_imported": t_imported,
        "t_loaded": t_loaded,
        "cpu_loaded": cpu_loaded,
        "unet_starts": clock.starts,
        "unet_ends": clock.ends,
        "images": [
            {"seed": e["seed"], "seconds": e["seconds"], "file": e["file"]}
            for e in summary["images"]
        ],
        "peak_host_bytes": host,
        "peak_device_bytes": dev,
        "device": session.device,
        "threads": torch.get_num_threads(),
        "dtype": summary["dtype"],
        # diffusers' version from its metadata: importing it here (the engine's run does not
        # until its schedulers) would put its import graph into the timed cold start
        "versions": {"torch": torch.__version__, "diffusers": version("diffusers")},
        "accel": report(session.components.unet),  # graphs: captures; compile: cache hits
        "t_end": time.time(),
    }


def prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    """Untimed: build the converted cache if needed, then read the files into the page cache."""
    from mlc.engine.checkpoint import resolve
    from mlc.engine.convcache import converted_cache
    from mlc.engine.loading import load
    from mlc.engine.session import pick_device, pick_dtype

    device = pick_device(cfg["device"])
    dtype = pick_dtype(cfg["precision"], device)
    source = resolve(cfg["ckpt"], cfg["config"])
    entry = converted_cache(source, dtype)
    note = "converted cache: not used (small file, folder or MLC_CACHE_DIR=off)"
    if entry is not None:
        if entry.valid():
            note = f"converted cache: reused {entry.path}"
        else:
            start = time.perf_counter()
            load(cfg["ckpt"], cfg["config"], device="cpu", dtype=dtype)
            note = (
                f"converted cache: built {entry.path} in {time.perf_counter() - start:.1f} s "
                "(once per checkpoint; not part of the timed runs)"
            )
    files = [source.path] + ([entry.path] if entry is not None and entry.path.is_file() else [])
    for f in files:
        if f.is_file():
            with f.open("rb") as fh:
                while fh.read(64 * 2**20):
                    pass
    return {"note": note + "; checkpoint files read into the page cache before timing"}


def main(argv: list[str]) -> int:
    """``python -m mlc.engine.bench_child ROLE CFG.json RESULT.json``; a failure is the
    engine's one line and exit code (the harness passes it on)."""
    return guarded(lambda: _main(argv))


def _main(argv: list[str]) -> int:
    role, cfg_file, result_file = argv
    cfg = json.loads(Path(cfg_file).read_text(encoding="utf-8"))
    result = prepare(cfg) if role == "prepare" else engine(cfg)
    Path(result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
