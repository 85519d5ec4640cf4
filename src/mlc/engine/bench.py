"""``mlc-txt2img --bench``: the seed's benchmark, optionally side by side with plain diffusers.

The seed (AIME's "Stable Diffusion on AIME MLC") times ``txt2img.py --prompt 'a photograph of
an astronaut riding a horse' --scale 7.5 --ddim_steps 50 --n_iter 3 --n_samples 1 --plms``
at 512x512, the first two iterations being warm-up, and reports TIME TO LOAD MODEL,
PROCESSING TIME (one image) and TOTAL TIME (their sum). ``--bench`` uses those defaults;
any txt2img flag overrides them (e.g. ``--H 256 --W 256 --ddim_steps 2 --n_iter 2`` on a
CPU), and the output says what was run.

Every measured run is a fresh Python process timed from its launch: the engine as
``mlc-txt2img`` runs it, and with ``--baseline diffusers`` also ``mlc.engine.baseline``
(``StableDiffusionPipeline.from_single_file`` with the bundled config, the same scheduler,
``torch.Generator("cpu").manual_seed(seed + k)``). ``--bench_repeat N`` alternates them N
times; the table shows medians. Columns: TIME TO LOAD MODEL = launch -> model ready
(imports included); PROCESSING TIME = seconds per image after warm-up; TOTAL TIME = their
sum (the seed's definition); cold start = launch -> first denoising step (the first UNet
call starts); s/step and it/s = denoising steps (UNet calls) in the timed images; peak host
(max RSS) and device memory. The JSON (``--bench_json``, default
``<outdir>/bench-<time>.json``) holds the medians, the ratios and every raw run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlc.engine import CONFIG_DIR, UsageError, offline

offline()

SEED_DEFAULTS: dict[str, Any] = {
    "prompt": "a photograph of an astronaut riding a horse",
    "scale": 7.5,
    "ddim_steps": 50,
    "n_iter": 3,
    "n_samples": 1,
    "H": 512,
    "W": 512,
}
SEED_SAMPLER = "plms"
SEED_WARMUP = 2
ROWS = ("mlc", "diffusers")


def bench_args(argv: list[str] | None) -> argparse.Namespace:
    """txt2img's flags with the seed benchmark's defaults (explicit flags win)."""
    from mlc.engine.txt2img import build_parser

    parser = build_parser()
    parser.set_defaults(**SEED_DEFAULTS)
    args = parser.parse_args(argv)
    if args.sampler is None and not args.dpm_solver:
        args.plms = True
    return args


def what_was_run(args: argparse.Namespace, spec: Any, warmup: int) -> list[str]:
    """The differences from the seed's benchmark, as flags (empty: the seed's own)."""
    diff = []
    for key, flag in (("H", "--H"), ("W", "--W"), ("ddim_steps", "--ddim_steps")):
        if getattr(args, key) != SEED_DEFAULTS[key]:
            diff.append(f"{flag} {getattr(args, key)}")
    for key in ("n_iter", "n_samples", "scale", "prompt"):
        if getattr(args, key) != SEED_DEFAULTS[key]:
            diff.append(f"--{key} {getattr(args, key)!r}")
    if spec.sampler != SEED_SAMPLER:
        diff.append(f"--sampler {spec.sampler}")
    if warmup != min(SEED_WARMUP, spec.n_iter - 1):
        diff.append(f"--bench_warmup {warmup}")
    return diff


def run_bench(argv: list[str] | None = None) -> int:
    """The ``--bench`` entry point (called by txt2img's main); returns the exit code."""
    from mlc.engine.loading import resolve
    from mlc.engine.txt2img import PROG, validate

    try:
        args = bench_args(argv)
        spec = validate(args)
        if args.from_file:
            raise UsageError("--bench runs one prompt; drop --from-file")
        warmup = args.bench_warmup
        if warmup is None:
            warmup = min(SEED_WARMUP, spec.n_iter - 1)
        if not 0 <= warmup < spec.n_iter:
            raise UsageError(f"--bench_warmup must be between 0 and n_iter-1 ({spec.n_iter - 1})")
        if args.bench_repeat < 1:
            raise UsageError("--bench_repeat must be at least 1")
        if not args.bench_modes and (spec.deepcache or spec.tome or spec.tiny_vae):
            raise UsageError(
                "--bench times the exact output; --bench --bench_modes times the speed modes"
            )
        source = resolve(spec.ckpt, spec.config)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - checkpoint errors: one line
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.bench_modes:
        return _speed_modes(args, spec, stamp)
    work = spec.outdir / f"bench-{stamp}"
    json_path = Path(args.bench_json) if args.bench_json else spec.outdir / f"bench-{stamp}.json"
    cfg = {
        "ckpt": str(source.path),
        "config": spec.config,
        "config_dir": str(baseline_config(source, work / "baseline-config")),
        "prompt": spec.batches[0][0],
        "negative_prompt": spec.negative_prompt,
        "sampler": spec.sampler,
        "steps": spec.steps,
        "scale": spec.scale,
        "height": spec.height,
        "width": spec.width,
        "n_iter": spec.n_iter,
        "n_samples": spec.n_samples,
        "n_images": spec.n_images,
        "seed": spec.seed,
        "device": spec.device,
        "precision": spec.precision,
        "warmup": warmup,
        "engine_flags": [
            f for f, on in (("--compile", args.compile), ("--low_vram", args.low_vram)) if on
        ],
    }
    rows = ["mlc"] + (["diffusers"] if args.baseline else [])
    if args.baseline:
        from mlc.engine.loading import schedule_of
        from mlc.engine.samplers import get_sampler, scheduler_config

        cfg["scheduler_class"] = get_sampler(spec.sampler).scheduler
        cfg["scheduler_kwargs"] = scheduler_config(spec.sampler, schedule_of(source))
    ran = what_was_run(args, spec, warmup) + cfg["engine_flags"]
    _say(
        f"benchmark: {cfg['prompt']!r}, {spec.sampler}, {spec.steps} steps, scale {spec.scale}, "
        f"{spec.width}x{spec.height}, n_samples {spec.n_samples}, n_iter {spec.n_iter} "
        f"({warmup} warm-up), seed {spec.seed}"
    )
    _say("the seed's benchmark" if not ran else "reduced/changed from the seed's: " + " ".join(ran))
    _say(f"model: {source.path} (config {source.config_label})")
    try:
        prep = _child(["prepare"], cfg, work / "prepare")
        _say(prep["note"])
        runs: list[dict[str, Any]] = []
        for r in range(args.bench_repeat):
            order = rows if r % 2 == 0 else rows[::-1]
            for row in order:
                _say(f"run {r + 1}/{args.bench_repeat}: {row} ...")
                raw = _child([row], cfg, work / f"{row}-{r + 1}")
                runs.append({"row": row, "repeat": r + 1, **summarize(raw, cfg)})
    except RuntimeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    report = build_report(runs, rows, cfg, ran, prep, argv)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"JSON: {json_path}")
    return 0


def _speed_modes(args: argparse.Namespace, spec: Any, stamp: str) -> int:
    """``--bench_modes``: mlc.engine.speedbench, with the CLI's one-line errors."""
    from mlc.engine import EngineError, speedbench
    from mlc.engine.txt2img import PROG

    default = spec.outdir / f"bench-modes-{stamp}" / "bench-modes.json"
    json_path = Path(args.bench_json) if args.bench_json else default
    try:
        return speedbench.run(args, spec, json_path)
    except EngineError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code


def baseline_config(source: Any, dest: Path) -> Path:
    """A complete diffusers config folder for the baseline: the model's parts, else the bundle's
    (the engine's rule), as links; the bundled folder itself when nothing differs."""
    parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    if source.yaml is not None or all(source.part(n) == CONFIG_DIR / n for n in parts):
        return CONFIG_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in parts:
        (dest / name).symlink_to(source.part(name).resolve(), target_is_directory=True)
    (dest / "model_index.json").symlink_to(CONFIG_DIR / "model_index.json")
    return dest


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _child(role: list[str], cfg: dict[str, Any], outdir: Path) -> dict[str, Any]:
    """Run one measured process; its result dict (with ``t_launch``)."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlc-bench-") as tmp:
        cfg_file, result_file = Path(tmp) / "cfg.json", Path(tmp) / "result.json"
        cfg_file.write_text(json.dumps({**cfg, "outdir": str(outdir)}), encoding="utf-8")
        module = "mlc.engine.baseline" if role[0] == "diffusers" else "mlc.engine.bench"
        cmd = [sys.executable, "-m", module]
        cmd += (
            [str(cfg_file), str(result_file)]
            if module.endswith("baseline")
            else ["--child", role[0], str(cfg_file), str(result_file)]
        )
        t_launch = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not result_file.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{role[0]} run failed (exit {proc.returncode}): {' | '.join(tail)}")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    result["t_launch"] = t_launch
    return result


def summarize(raw: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """One process's raw times -> the benchmark's figures (seconds, bytes)."""
    t0 = raw["t_launch"]
    starts, ends = raw["unet_starts"], raw["unet_ends"]
    n_images = len(raw["images"])
    per_image = len(starts) // max(1, n_images)
    timed = list(range(cfg["warmup"] * cfg["n_samples"], n_images))
    loop = [ends[(k + 1) * per_image - 1] - starts[k * per_image] for k in timed]
    calls = [ends[i] - starts[i] for k in timed for i in range(k * per_image, (k + 1) * per_image)]
    processing = statistics.mean(raw["images"][k]["seconds"] for k in timed)
    load = raw["t_loaded"] - t0
    steps = per_image * len(timed)
    return {
        "load_s": load,
        "processing_s": processing,
        "total_s": load + processing,
        "cold_start_s": starts[0] - t0,
        "first_step_done_s": ends[0] - t0,
        "step_s": sum(loop) / steps,
        "unet_call_s": sum(calls) / steps,  # the UNet alone, without the scheduler between calls
        "it_per_s": steps / sum(loop),
        "unet_calls_per_image": per_image,
        "wall_s": raw["t_end"] - t0,
        "peak_host_bytes": raw["peak_host_bytes"],
        "peak_device_bytes": raw["peak_device_bytes"],
        "device": raw["device"],
        "threads": raw.get("threads"),
        "dtype": raw["dtype"],
        "versions": raw.get("versions", {}),
        "last_image": raw["images"][-1]["file"],
    }


METRICS = (
    "load_s",
    "processing_s",
    "total_s",
    "cold_start_s",
    "first_step_done_s",
    "step_s",
    "unet_call_s",
    "it_per_s",
    "wall_s",
    "peak_host_bytes",
    "peak_device_bytes",
)


def build_report(
    runs: list[dict[str, Any]],
    rows: list[str],
    cfg: dict[str, Any],
    ran: list[str],
    prep: dict[str, Any],
    argv: list[str] | None,
) -> dict[str, Any]:
    """Medians per row, ratios mlc/diffusers, output comparison and the raw runs."""
    medians: dict[str, dict[str, Any]] = {}
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        med: dict[str, Any] = {}
        for m in METRICS:
            values = [r[m] for r in mine if r[m] is not None]
            med[m] = statistics.median(values) if values else None
        med.update({k: mine[-1][k] for k in ("device", "dtype", "unet_calls_per_image")})
        med["repeats"] = len(mine)
        medians[row] = med
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "mlc-txt2img " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in cfg.items() if k not in ("scheduler_kwargs",)},
        "changed_from_seed": ran,
        "machine": machine_info(),
        "versions": runs[-1]["versions"],
        "cache": prep.get("note"),
        "rows": medians,
        "runs": runs,
    }
    if "diffusers" in medians:
        a, b = medians["mlc"], medians["diffusers"]
        report["ratios"] = {
            m: (a[m] / b[m] if a[m] is not None and b[m] else None)
            for m in (
                "cold_start_s",
                "load_s",
                "step_s",
                "processing_s",
                "total_s",
                "peak_host_bytes",
                "peak_device_bytes",
            )
        }
        report["output"] = compare_images(
            next(r for r in runs if r["row"] == "mlc")["last_image"],
            next(r for r in runs if r["row"] == "diffusers")["last_image"],
        )
    return report


def compare_images(a: str, b: str) -> dict[str, Any]:
    """Whether two PNGs have the same pixels (and the largest difference)."""
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    diff = int(np.abs(x - y).max()) if x.shape == y.shape else None
    return {"identical": diff == 0, "max_pixel_diff": diff, "mlc": a, "diffusers": b}


def machine_info() -> dict[str, Any]:
    """CPU, cores, load average and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def _fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def _fmt_b(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def format_table(report: dict[str, Any]) -> str:
    """The seed's columns plus ours, one line per row, then the ratios."""
    head = (
        f"{'':<20}{'TIME TO LOAD MODEL':>19}{'PROCESSING TIME':>17}{'TOTAL TIME':>12}"
        f"{'it/s':>8}{'cold start':>12}{'s/step':>10}{'peak host':>12}{'peak device':>13}"
    )
    lines = [head]
    names = {"mlc": "mlc engine", "diffusers": "diffusers baseline"}
    for row, m in report["rows"].items():
        lines.append(
            f"{names[row]:<20}{_fmt_s(m['load_s']):>19}{_fmt_s(m['processing_s']):>17}"
            f"{_fmt_s(m['total_s']):>12}{m['it_per_s']:>8.3f}{_fmt_s(m['cold_start_s']):>12}"
            f"{_fmt_s(m['step_s']):>10}{_fmt_b(m['peak_host_bytes']):>12}"
            f"{_fmt_b(m['peak_device_bytes']):>13}"
        )
    ratios = report.get("ratios")
    if ratios:

        def r(k: str) -> str:
            return "n/a" if ratios[k] is None else f"{ratios[k]:.2f}x"

        lines.append(
            f"{'ratio mlc/diffusers':<20}{r('load_s'):>19}{r('processing_s'):>17}"
            f"{r('total_s'):>12}{'':>8}{r('cold_start_s'):>12}{r('step_s'):>10}"
            f"{r('peak_host_bytes'):>12}{r('peak_device_bytes'):>13}"
        )
        out = report["output"]
        same = "identical" if out["identical"] else f"max pixel difference {out['max_pixel_diff']}"
        lines.append(f"output of the last image: {same}")
    any_row = next(iter(report["rows"].values()))
    lines.append(
        f"device {any_row['device']} ({any_row['dtype']}), {any_row['unet_calls_per_image']} "
        f"UNet calls per image, medians of {any_row['repeats']} run(s) per row; "
        f"load average {report['machine'].get('load_avg')}"
    )
    return "\n".join(lines)


# -- the measured processes -------------------------------------------------------------


def _engine_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """The engine, as ``mlc-txt2img`` runs it, with a clock on the UNet."""
    from mlc.engine.txt2img import build_parser, execute, open_session, validate

    argv = [
        "--ckpt",
        cfg["ckpt"],
        "--prompt",
        cfg["prompt"],
        "--sampler",
        cfg["sampler"],
        "--ddim_steps",
        str(cfg["steps"]),
        "--scale",
        str(cfg["scale"]),
        "--H",
        str(cfg["height"]),
        "--W",
        str(cfg["width"]),
        "--n_iter",
        str(cfg["n_iter"]),
        "--n_samples",
        str(cfg["n_samples"]),
        "--seed",
        str(cfg["seed"]),
        "--outdir",
        cfg["outdir"],
        "--device",
        cfg["device"],
        "--precision",
        cfg["precision"],
        "--skip_grid",
        "--json",
    ]
    if cfg["config"]:
        argv += ["--config", cfg["config"]]
    if cfg["negative_prompt"]:
        argv += ["--negative_prompt", cfg["negative_prompt"]]
    argv += cfg.get("engine_flags", [])
    spec = validate(build_parser().parse_args(argv))
    t_imported = time.time()
    session = open_session(spec)
    t_loaded = time.time()
    from mlc.engine.baseline import StepClock, peak_memory

    clock = StepClock(session.components.unet)
    summary = execute(spec, session)
    host, dev = peak_memory(session.device)
    import diffusers
    import torch

    return {
        "t_imported": t_imported,
        "t_loaded": t_loaded,
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
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "t_end": time.time(),
    }


def _prepare_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Untimed: build the converted cache if needed, then read the files into the page cache."""
    from mlc.engine.loading import converted_cache, load, resolve
    from mlc.engine.txt2img import pick_device, pick_dtype

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


def child_main(argv: list[str]) -> int:
    """``python -m mlc.engine.bench --child ROLE CFG.json RESULT.json``."""
    role, cfg_file, result_file = argv
    cfg = json.loads(Path(cfg_file).read_text(encoding="utf-8"))
    result = _prepare_child(cfg) if role == "prepare" else _engine_child(cfg)
    Path(result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        raise SystemExit(child_main(sys.argv[2:]))
    raise SystemExit(run_bench(sys.argv[1:]))
