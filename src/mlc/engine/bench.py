"""``mlc-txt2img --bench``: the seed's benchmark, optionally side by side with plain diffusers.

The seed (AIME's "Stable Diffusion on AIME MLC") times ``txt2img.py --prompt 'a photograph of
an astronaut riding a horse' --scale 7.5 --ddim_steps 50 --n_iter 3 --n_samples 1 --plms``
at 512x512, the first two iterations being warm-up, and reports TIME TO LOAD MODEL,
PROCESSING TIME (one image) and TOTAL TIME (their sum). ``--bench`` uses those defaults;
any txt2img flag overrides them (e.g. ``--H 256 --W 256 --ddim_steps 2 --n_iter 2`` on a
CPU), and the output says what was run.

Every measured run is a fresh Python process timed from its launch: the engine as
``mlc-txt2img`` runs it (``mlc.engine.bench_child``), and with ``--baseline diffusers`` also
``mlc.engine.baseline`` (``StableDiffusionPipeline.from_single_file`` with the bundled
config, the same scheduler, ``torch.Generator("cpu").manual_seed(seed + k)``).
``--bench_repeat N`` alternates them N times; the table shows medians. Columns: TIME TO LOAD
MODEL = launch -> model ready (imports included); PROCESSING TIME = seconds per image after
warm-up; TOTAL TIME = their sum (the seed's definition); cold start = launch -> first
denoising step (the first UNet call starts); s/step and it/s = denoising steps (UNet calls)
in the timed images; peak host (max RSS) and device memory. The JSON (``--bench_json``,
default ``<outdir>/bench-<time>.json``) holds the medians, the ratios and every raw run
(``mlc.engine.bench_report``). ``--bench_modes`` is ``mlc.engine.speedbench``'s.

This module is the harness: flags, the processes, the files. It raises; the one error
table reports (``command.main``, or ``main`` here for ``python -m mlc.engine.bench``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlc.engine import CONFIG_DIR, PROG, EngineError, UsageError, guarded, say
from mlc.engine.bench_report import build_report, format_table, summarize, warm_report
from mlc.engine.checkpoint import ModelSource, resolve
from mlc.engine.options import build_parser, parse_args, validate
from mlc.engine.spec import RunSpec

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

OWN = (
    "bench",
    "baseline",
    "bench_json",
    "bench_warmup",
    "bench_repeat",
    "bench_modes",
    "bench_warm",
)
"""The benchmark's own flags (argparse dests): never passed to a measured run."""
SET_PER_RUN = ("ckpt", "outdir", "skip_grid", "skip_save", "json", "from_file", "x", "y", "z")
"""What the harness decides for every measured run itself (the resolved checkpoint, a folder
of its own, samples without a grid, the summary; one prompt, no grid axes)."""
NAMED = ("H", "W", "ddim_steps", "n_iter", "n_samples", "scale", "prompt", "sampler", "plms")
"""Flags that ``what_was_run`` reports in its own words."""

Flag = tuple[str, str, str | None]
"""An engine flag as given: its dest, its option string, its value (None: a switch)."""


def bench_args(argv: list[str] | None) -> argparse.Namespace:
    """txt2img's flags with the seed benchmark's defaults (explicit flags win)."""
    args = parse_args(argv, defaults=SEED_DEFAULTS)
    if args.sampler is None and not args.dpm_solver:
        args.plms = True
    return args


def passthrough(args: argparse.Namespace) -> list[Flag]:
    """Every engine flag of ARGS that differs from txt2img's default, but the benchmark's own
    and those it sets per run: what each measured run gets, whatever the flag (generic, so a
    new engine flag is passed on without a change here)."""
    flags: list[Flag] = []
    for action in build_parser()._actions:
        dest = action.dest
        if not action.option_strings or dest == "help" or dest in OWN + SET_PER_RUN:
            continue
        value = getattr(args, dest, action.default)
        if value == action.default or value is None:
            continue
        if action.nargs == 0:  # a switch (store_true)
            flags.append((dest, action.option_strings[0], None))
        else:
            flags.append((dest, action.option_strings[0], str(value)))
    return flags


def engine_argv(flags: list[Flag]) -> list[str]:
    """FLAGS as a command line (``--flag=value``: a value may start with a dash)."""
    return [flag if value is None else f"{flag}={value}" for _, flag, value in flags]


def what_was_run(args: argparse.Namespace, spec: RunSpec, warmup: int) -> list[str]:
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


def check(args: argparse.Namespace) -> tuple[RunSpec, int, ModelSource]:
    """The benchmark's own checks on top of txt2img's: the run, its warm-up and the model."""
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
    if args.bench_warm < 0:
        raise UsageError("--bench_warm must be 0 or more")
    if spec.axes:
        raise UsageError("--bench times one run; drop --x/--y/--z")
    if not args.bench_modes and (spec.deepcache or spec.tome or spec.tiny_vae):
        raise UsageError(
            "--bench times the exact output; --bench --bench_modes times the speed modes"
        )
    return spec, warmup, resolve(spec.ckpt, spec.config)


def run_bench(argv: list[str] | None = None) -> int:
    """The ``--bench`` entry point (called by ``command.main``); returns the exit code and
    raises what the error table reports."""
    args = bench_args(argv)
    spec, warmup, source = check(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.bench_modes:
        from mlc.engine import speedbench

        default = spec.outdir / f"bench-modes-{stamp}" / "bench-modes.json"
        return speedbench.run(args, spec, Path(args.bench_json) if args.bench_json else default)
    work = spec.outdir / f"bench-{stamp}"
    json_path = Path(args.bench_json) if args.bench_json else spec.outdir / f"bench-{stamp}.json"
    cfg = child_config(args, spec, warmup, source, work)
    rows = ["mlc"] + (["diffusers"] if args.baseline else [])
    ran = what_was_run(args, spec, warmup) + [
        flag if value is None else f"{flag} {value}"
        for dest, flag, value in passthrough(args)
        if dest not in NAMED
    ]
    say(
        f"benchmark: {cfg['prompt']!r}, {spec.sampler}, {spec.steps} steps, scale {spec.scale}, "
        f"{spec.width}x{spec.height}, n_samples {spec.n_samples}, n_iter {spec.n_iter} "
        f"({warmup} warm-up), seed {spec.seed}"
    )
    say("the seed's benchmark" if not ran else "reduced/changed from the seed's: " + " ".join(ran))
    say(f"model: {source.path} (config {source.config_label})")
    prep = _child("prepare", cfg, work / "prepare")
    say(prep["note"])
    runs: list[dict[str, Any]] = []
    for r in range(args.bench_repeat):
        for row in rows if r % 2 == 0 else rows[::-1]:
            say(f"run {r + 1}/{args.bench_repeat}: {row} ...")
            raw = _child(row, cfg, work / f"{row}-{r + 1}")
            runs.append({"row": row, "repeat": r + 1, **summarize(raw, cfg)})
    report = build_report(runs, rows, cfg, ran, prep, argv)
    if args.bench_warm:
        from mlc.engine.bench_warm import warm_runs

        say(f"warm worker: {args.bench_warm} request(s) after one that starts it ...")
        report["warm"] = warm_report(warm_runs(cfg, work / "warm", args.bench_warm))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"JSON: {json_path}")
    return 0


def child_config(
    args: argparse.Namespace, spec: RunSpec, warmup: int, source: ModelSource, work: Path
) -> dict[str, Any]:
    """What every measured process gets (JSON): the run's settings and the model."""
    cfg: dict[str, Any] = {
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
        "engine_argv": engine_argv(passthrough(args)),  # + --ckpt, --outdir per measured run
    }
    if args.baseline:
        from mlc.engine.checkpoint import schedule_of
        from mlc.engine.samplers import get_sampler
        from mlc.engine.schedulers import scheduler_config

        cfg["scheduler_class"] = get_sampler(spec.sampler).scheduler
        cfg["scheduler_kwargs"] = scheduler_config(spec.sampler, schedule_of(source))
    return cfg


def baseline_config(source: ModelSource, dest: Path) -> Path:
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


def _child(role: str, cfg: dict[str, Any], outdir: Path) -> dict[str, Any]:
    """Run one measured process (ROLE: prepare, mlc or diffusers); its result (``t_launch``
    added). EngineError with the tail of its output when it fails."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlc-bench-") as tmp:
        cfg_file, result_file = Path(tmp) / "cfg.json", Path(tmp) / "result.json"
        cfg_file.write_text(json.dumps({**cfg, "outdir": str(outdir)}), encoding="utf-8")
        if role == "diffusers":
            cmd = [sys.executable, "-m", "mlc.engine.baseline", str(cfg_file), str(result_file)]
        else:
            cmd = [sys.executable, "-m", "mlc.engine.bench_child", role]
            cmd += [str(cfg_file), str(result_file)]
        t_launch = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not result_file.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            prefix = f"{PROG}: error: "
            if tail and tail[-1].startswith(prefix):  # the engine's own one line, and its code
                raise EngineError(
                    f"the measured {role} run: {tail[-1][len(prefix) :]}",
                    exit_code=proc.returncode,
                )
            raise EngineError(f"{role} run failed (exit {proc.returncode}): {' | '.join(tail)}")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    result["t_launch"] = t_launch
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m mlc.engine.bench [txt2img flags]``: the benchmark alone."""
    return guarded(lambda: run_bench(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
