"""The benchmark's figures: one measured process's raw times -> its numbers, the medians and
ratios of the report (the JSON), the seed's table, and the machine it ran on.

Pure functions over the JSON the measured processes write (``mlc.engine.bench_child``,
``mlc.engine.baseline``); nothing here times or runs anything.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


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
        "load_cpu_s": raw.get("cpu_loaded"),  # CPU time to model ready (less load-sensitive)
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
        **accel_fields(raw.get("accel")),
    }


def accel_fields(accel: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's CUDA graphs and --compile figures (None for the baseline): seconds spent
    capturing graphs, steps replayed and run eagerly (and why), first compiled calls' seconds
    and whether their kernels came from the cache (hit, miss, off)."""
    graphs = (accel or {}).get("graphs") or {}
    comp = (accel or {}).get("compile") or {}
    return {
        "accel": accel,  # the whole report: each capture's key and cost, each shape's compile
        "capture_s": graphs.get("capture_s"),
        "graph_replays": graphs.get("replays"),
        "eager_steps": graphs.get("eager_steps"),
        "eager_reasons": graphs.get("eager_reasons"),
        "compile_s": comp.get("compile_s"),
        "compile_cache": comp.get("compile_cache"),
    }


METRICS = (
    "load_s",
    "load_cpu_s",
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
    "capture_s",
    "compile_s",
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
        med["compile_cache"] = [r.get("compile_cache") for r in mine]  # per run, in order
        med["graph_replays"] = mine[-1].get("graph_replays")
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
                "load_cpu_s",
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


def warm_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The warm-path row: medians of the requests to a warm worker (``mlc.engine.bench_warm``)
    and the requests themselves."""
    med: dict[str, Any] = {}
    for m in ("first_step_s", "first_png_s", "wall_s"):
        values = [r[m] for r in runs if r[m] is not None]
        med[m] = statistics.median(values) if values else None
    return {**med, "requests": len(runs), "runs": runs}


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
    warm = report.get("warm")
    if warm:
        lines.append(
            f"{'mlc warm worker':<20}request -> first step {_fmt_s(warm['first_step_s'])}, "
            f"-> first PNG {_fmt_s(warm['first_png_s'])} (median of {warm['requests']} "
            "request(s), one image each, model already loaded)"
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
        a, b = report["rows"]["mlc"], report["rows"]["diffusers"]
        if a.get("load_cpu_s") is not None and b.get("load_cpu_s") is not None:
            lines.append(
                f"load, CPU time of all threads (less sensitive to other load): mlc "
                f"{_fmt_s(a['load_cpu_s'])}, diffusers {_fmt_s(b['load_cpu_s'])}, "
                f"ratio {r('load_cpu_s')}"
            )
        out = report["output"]
        same = "identical" if out["identical"] else f"max pixel difference {out['max_pixel_diff']}"
        lines.append(f"output of the last image: {same}")
    mlc = report["rows"].get("mlc") or {}
    if mlc.get("graph_replays") or mlc.get("compile_s") is not None:
        parts = []
        if mlc.get("graph_replays"):
            parts.append(f"CUDA graphs: capture {_fmt_s(mlc.get('capture_s'))} per process")
        if mlc.get("compile_s") is not None:
            hits = ", ".join(str(c) for c in mlc.get("compile_cache") or [])
            parts.append(f"--compile: first calls {_fmt_s(mlc['compile_s'])} (cache: {hits})")
        lines.append("mlc engine: " + "; ".join(parts))
    any_row = next(iter(report["rows"].values()))
    lines.append(
        f"device {any_row['device']} ({any_row['dtype']}), {any_row['unet_calls_per_image']} "
        f"UNet calls per image, medians of {any_row['repeats']} run(s) per row; "
        f"load average {report['machine'].get('load_avg')}"
    )
    return "\n".join(lines)
