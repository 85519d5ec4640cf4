"""tests/support/gpu-check.sh and its summary (tests/support/gpu_probe.py) on the CPU: the
stages run end to end with tiny flags (the GPU-only ones say so), a stage is stopped at its
time limit and the later ones are skipped when the budget is spent, and the targets are judged
only on a CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "gpu-check.sh"
sys.path.insert(0, str(ROOT / "tests" / "support"))

import gpu_probe  # noqa: E402


def run_check(tiny, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {
        **os.environ,
        "MLC_GPU_CHECK_CKPT": str(tiny.safetensors),
        "GPU_CHECK_FLAGS": "--H 32 --W 32 --ddim_steps 2",
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
        "MLC_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=900
    )


def stages(out: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
    return {name: status for name, status, _ in rows}


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_a_cpu(tiny, tmp_path: Path):
    proc = run_check(tiny, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert stages(out) == {
        "checkpoint": f"skipped: given: {tiny.safetensors}",
        "probe": "ok",
        "seed": "ok",
        "load": "ok",
        "native": "ok",
        "compile-cold": "skipped: no CUDA",
        "compile-warm": "skipped: no CUDA",
        "modes": "ok",
        "low-vram": "skipped: no CUDA",
    }
    probe = json.loads((out / "probe.json").read_text())["sections"]
    assert probe["graphs"]["skipped"] == "no CUDA"
    assert probe["contract"]["model_latents"]["latents_identical"] is True  # fp32: one path
    assert probe["first_image"]["second_full_image"]["denoise_s"] > 0
    load = json.loads((out / "load-twice.json").read_text())
    assert load["device"] == "cpu" and load["first_load_s"] > 0 and load["second_load_s"] > 0
    native = json.loads((out / "native.json").read_text())
    assert native["native_used"] is True and native["identical"] is True
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["cuda"] is False
    assert {t["status"] for t in summary["targets"]} <= {"not judged (no CUDA)", "not measured"}
    assert summary["figures"]["seed_identical"] is True
    assert summary["figures"]["native_identical"] is True
    assert summary["figures"]["seed_load_ratio"] > 0
    assert "| probe | ok |" in (out / "gpu-check.md").read_text()
    assert not list(out.glob("*.png"))  # images stay in WORK


def test_a_stage_stops_at_its_limit_and_the_rest_is_skipped(tiny, tmp_path: Path):
    """A budget of 45 s: the probe (far too much work) gets what is left of it and is stopped;
    nothing else starts."""
    flags = "--H 256 --W 256 --ddim_steps 500"
    proc = run_check(tiny, tmp_path, GPU_CHECK_BUDGET="45", GPU_CHECK_FLAGS=flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = stages(tmp_path / "out")
    assert got["probe"].startswith("stopped at its limit (")  # 45 s less the set-up
    limit = int(got["probe"].split("(")[1].split()[0])
    assert 20 <= limit < 45
    assert got["seed"] == got["load"] == got["native"] == got["modes"] == "skipped: no time left"
    assert (tmp_path / "out" / "gpu-check.md").is_file()


def _write(out: Path, name: str, data: dict) -> None:
    (out / name).write_text(json.dumps(data))


def _seed(mlc_s: float, base_s: float, device: str) -> dict:
    row = {"processing_s": mlc_s, "device": device, "capture_s": 0.5, "graph_replays": 153}
    row["load_s"] = 4.0
    base = {"processing_s": base_s, "device": device, "load_s": 16.0}
    return {
        "rows": {"mlc": row, "diffusers": base},
        "output": {"identical": False, "max_pixel_diff": 3},
    }


def test_targets_are_judged_on_cuda_only(tmp_path: Path):
    _write(tmp_path, "bench-seed.json", _seed(0.6, 1.8, "cuda"))
    _write(tmp_path, "probe.json", {"device": "NVIDIA H200", "sections": {
        "graphs": {"latents_identical": True}}})  # fmt: skip
    _write(tmp_path, "bench-compile-cold.json", {"rows": {"mlc": {"processing_s": 0.5}}})
    _write(tmp_path, "bench-compile-warm.json", {"rows": {"mlc": {
        "first_step_done_s": 14.0, "compile_cache": ["hit"]}}})  # fmt: skip
    _write(tmp_path, "load-twice.json", {"first_over_second": 1.7})
    _write(tmp_path, "native.json", {"identical": True, "eps_max_diff": 0.0})
    got = {t["target"]: t for t in gpu_probe.summarize(tmp_path)["targets"]}
    assert got["load: TIME TO LOAD MODEL <= 0.5x diffusers (seed run)"]["value"] == 0.25
    assert got["load: TIME TO LOAD MODEL <= 0.5x diffusers (seed run)"]["status"] == "met"
    assert got["load: first call in a process <= 1.5x the second"]["status"] == "not met"
    assert got["own models = libraries' classes, bit for bit"]["status"] == "met"
    assert got["exact: <= 0.65 s per 50-step 512x512 PLMS image"]["status"] == "met"
    assert got[">= 2.5x diffusers eager fp16 (same bench run)"]["value"] == pytest.approx(3.0)
    assert got[">= 2.5x diffusers eager fp16 (same bench run)"]["status"] == "met"
    assert got["graphs: latents bit-identical to eager"]["status"] == "met"
    assert got["--compile: <= 0.45 s per image"]["status"] == "not met"
    assert got["--compile: fresh process to first compiled step <= 15 s"]["status"] == "met"
    assert "| --compile: <= 0.45 s per image | 0.500 | not met |" in gpu_probe.table(
        gpu_probe.summarize(tmp_path)
    )

    cpu = tmp_path / "cpu"
    cpu.mkdir()
    _write(cpu, "bench-seed.json", _seed(0.05, 0.09, "cpu"))
    _write(cpu, "probe.json", {"device": "cpu", "sections": {"graphs": {"skipped": "no CUDA"}}})
    statuses = {t["status"] for t in gpu_probe.summarize(cpu)["targets"]}
    assert statuses == {"not judged (no CUDA)", "not measured"}
