"""``mlc-txt2img --bench --bench_modes``: each opt-in speed mode against the exact output.

One process loads the model once and renders the same image (the benchmark's prompt and
seed) exactly and with every speed mode: ``--fast`` (DPM++ 2M Karras at 40% of the steps,
20 of the seed's 50), ``--deepcache 3``, ``--tome 0.5``, ``--tiny_vae`` and all of them
together. For each it reports seconds per image (median of ``--bench_repeat`` runs after an
untimed warm-up of every mode), the speed-up over the exact run, and the deviation
of its pixels from the exact image: mean and largest absolute difference (0-255) and PSNR.
Modes alternate within every repeat, so a busy machine slows them alike. Timings are
printed and written to JSON, never asserted.

The warm-up renders every mode's image as it is timed on a GPU, and with 2 steps on a CPU.
On a GPU first-call costs depend on the data, not only on the shapes: the fp16 VAE's fp32
retry (``vae_fallback``, its first use copies the VAE and loads fp32 kernels) happens only
for latents that overflow in fp16, and a sampler's later steps run kernels its first two do
not. A 2-step warm-up left those costs in the first timed run, the exact one (see
docs/benchmarks.md, "Why the modes benchmark's exact image was slower"). On a GPU the clock
is read after the device finished (``torch.cuda.synchronize``).

Without TAESD weights (``--tiny_vae PATH`` or ``$MLC_TINY_VAE``) a random-weight TAESD with
the real architecture is built and used: its time is real, its deviation is not.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc.engine import say
from mlc.engine.bench_report import machine_info
from mlc.engine.env import tiny_vae_default
from mlc.engine.session import open_session
from mlc.engine.spec import DEFAULT_STEPS, FAST_SAMPLER, FAST_STEPS, RunSpec

if TYPE_CHECKING:
    from PIL.Image import Image

FAST_SHARE = FAST_STEPS / DEFAULT_STEPS  # --fast: DPM++ 2M Karras at 20 steps where 50 run


def modes(steps: int, tiny_vae: bool) -> dict[str, dict[str, Any]]:
    """Mode name -> the Settings fields it changes."""
    fast = {"sampler": FAST_SAMPLER, "steps": max(1, round(steps * FAST_SHARE))}
    table: dict[str, dict[str, Any]] = {
        "exact": {},
        "fast": fast,
        "deepcache 3": {"deepcache": 3},
        "tome 0.5": {"tome": 0.5},
    }
    if tiny_vae:
        table["tiny_vae"] = {"tiny_vae": True}
    table["all"] = {**fast, "deepcache": 3, "tome": 0.5, "tiny_vae": tiny_vae}
    return table


def deviation(exact: Image, other: Image) -> dict[str, float]:
    """Mean/max absolute pixel difference (0-255) and PSNR (dB) of two PIL images."""
    import numpy as np

    a = np.asarray(exact.convert("RGB"), dtype=np.float64)
    b = np.asarray(other.convert("RGB"), dtype=np.float64)
    diff = np.abs(a - b)
    mse = float((diff**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "psnr_db": psnr}


def run(args: argparse.Namespace, spec: RunSpec, json_path: Path) -> int:
    """Load once, render every mode, print the table, write the JSON; returns the exit code."""
    from mlc.engine.accel import report as accel_report
    from mlc.engine.generate import ImageSpec, Renderer, Settings

    session = open_session(replace(spec, tiny_vae=None))
    tiny_path, tiny_note = _tiny_vae(spec, json_path.parent)
    renderer = Renderer(
        session.components,
        session.device,
        session.dtype,
        tiny_vae=session.tiny_vae(tiny_path),
        offload=session.offload,
    )
    base = Settings(
        spec.sampler,
        spec.steps,
        spec.scale,
        spec.eta,
        spec.height,
        spec.width,
        latents=spec.latents,
        cuda_graphs=spec.cuda_graphs,
    )
    image = [ImageSpec(0, spec.batches[0][0], spec.negative_prompt, spec.seed)]
    table = modes(spec.steps, tiny_path is not None)
    say(
        f"speed modes: {image[0].prompt!r}, {spec.sampler}, {spec.steps} steps, "
        f"{spec.width}x{spec.height}, seed {spec.seed}, on {session.device} "
        f"({str(session.dtype).replace('torch.', '')}); {args.bench_repeat} repeat(s)"
    )
    if tiny_note:
        say(tiny_note)
    settings = {name: replace(base, **change) for name, change in table.items()}
    gpu = session.device.startswith("cuda")
    say(f"warm-up: every mode once{'' if gpu else ', 2 steps'} ...")  # one-time costs
    for name in table:
        warm = settings[name] if gpu else replace(settings[name], steps=min(2, spec.steps))
        renderer.render(image, warm)
    times: dict[str, list[float]] = {name: [] for name in table}
    images: dict[str, Image] = {}
    fallback: dict[str, bool] = {}
    for r in range(args.bench_repeat):
        order = list(table) if r % 2 == 0 else list(table)[::-1]
        for name in order:
            say(f"run {r + 1}/{args.bench_repeat}: {name} ...")
            _sync(gpu)
            start = time.perf_counter()
            result = renderer.render(image, settings[name])[0]
            _sync(gpu)
            times[name].append(time.perf_counter() - start)
            images[name] = result.image
            fallback[name] = result.vae_fallback
    exact_s = statistics.median(times["exact"])
    rows = []
    for name in table:
        s = settings[name]
        median = statistics.median(times[name])
        rows.append(
            {
                "mode": name,
                "sampler": s.sampler,
                "steps": s.steps,
                "deepcache": s.deepcache,
                "tome": s.tome,
                "tiny_vae": s.tiny_vae,
                "seconds_per_image": median,
                "speedup": exact_s / median,
                "deviation": deviation(images["exact"], images[name]),
                "vae_fallback": fallback[name],  # the fp16 VAE decode was redone in fp32
                "runs": times[name],
            }
        )
    out_dir = json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        im.save(out_dir / f"mode-{name.replace(' ', '-')}.png")
    report = {
        "benchmark": "speed modes",
        "command": "mlc-txt2img " + " ".join(sys.argv[1:]),
        "settings": {
            "prompt": image[0].prompt,
            "sampler": spec.sampler,
            "steps": spec.steps,
            "scale": spec.scale,
            "height": spec.height,
            "width": spec.width,
            "seed": spec.seed,
            "ckpt": spec.ckpt,
            "device": session.device,
            "dtype": str(session.dtype).replace("torch.", ""),
            "repeat": args.bench_repeat,
            "tiny_vae": tiny_path,
            "tiny_vae_note": tiny_note,
            "cuda_graphs": base.cuda_graphs,
            "latents": base.latents,
        },
        "machine": machine_info(),
        "modes": rows,
        "accel": accel_report(session.components.unet),  # every mode's steps, warm-ups too
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(rows))
    redone = [r["mode"] for r in rows if r["vae_fallback"]]
    if redone:
        print(f"fp16 VAE decode gave NaN/black and was redone in fp32 in: {', '.join(redone)}")
    print(f"JSON: {json_path}  (images: {out_dir}/mode-*.png)")
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table."""
    head = f"{'mode':<14}{'sampler, steps':>24}{'s/image':>10}{'speed-up':>10}"
    head += f"{'mean |d|':>10}{'max |d|':>9}{'PSNR':>10}"
    lines = [head]
    for r in rows:
        d = r["deviation"]
        psnr = "exact" if math.isinf(d["psnr_db"]) else f"{d['psnr_db']:.1f} dB"
        lines.append(
            f"{r['mode']:<14}{r['sampler'] + ', ' + str(r['steps']):>24}"
            f"{r['seconds_per_image']:>9.2f}s{r['speedup']:>9.2f}x"
            f"{d['mean_abs']:>10.2f}{d['max_abs']:>9.0f}{psnr:>10}"
        )
    return "\n".join(lines)


def _sync(gpu: bool) -> None:
    """Wait for the GPU (its work is asynchronous) before the clock is read."""
    if gpu:
        import torch

        torch.cuda.synchronize()


def _tiny_vae(spec: RunSpec, where: Path) -> tuple[str | None, str]:
    """The TAESD weights to use: the given/installed ones, else a random-weight one."""
    given = spec.tiny_vae or tiny_vae_default()
    if given and Path(given).exists():
        return str(given), ""
    from mlc.engine.tinyvae import build_random_tiny_vae

    path = build_random_tiny_vae(where / "taesd-random.safetensors")
    return str(path), (
        "tiny_vae: no TAESD weights here; using random weights with TAESD's architecture "
        "(its time is real, its deviation is not)"
    )
