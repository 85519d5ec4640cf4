"""--bench (the seed's benchmark, with the plain-diffusers baseline) and the converted cache.

No test asserts a time: the benchmark runs end to end on the tiny model, its JSON has the
fields for both rows, and the converted safetensors cache is reused, and rebuilt when the
checkpoint changes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mlc.engine import bench, bench_report, checkpoint, loading
from mlc.engine.convcache import converted_cache
from mlc.engine.options import validate
from mlc.engine.txt2img import main

ROW_FIELDS = {
    "load_s",
    "processing_s",
    "total_s",
    "cold_start_s",
    "first_step_done_s",
    "step_s",
    "it_per_s",
    "wall_s",
    "peak_host_bytes",
    "peak_device_bytes",
    "device",
    "dtype",
    "unet_calls_per_image",
    "repeats",
}


def test_bench_defaults_are_the_seeds_and_flags_override() -> None:
    args = bench.bench_args([])
    assert (args.prompt, args.scale, args.ddim_steps, args.n_iter, args.n_samples) == (
        "a photograph of an astronaut riding a horse",
        7.5,
        50,
        3,
        1,
    )
    assert (args.H, args.W, args.plms) == (512, 512, True)
    args = bench.bench_args(["--H", "256", "--ddim_steps", "2", "--sampler", "ddim"])
    spec = validate(args)
    assert spec.sampler == "ddim" and spec.height == 256 and spec.width == 512
    assert bench.what_was_run(args, spec, 2) == ["--H 256", "--ddim_steps 2", "--sampler ddim"]


def test_summarize_follows_the_column_definitions() -> None:
    """One process's raw clock readings -> the table's figures (2 images, 3 UNet calls each,
    the first image warm-up)."""
    raw = {
        "t_launch": 100.0,
        "t_loaded": 105.0,
        "t_end": 130.0,
        "unet_starts": [110.0, 111.0, 112.0, 120.0, 121.0, 122.0],
        "unet_ends": [110.5, 111.5, 112.5, 120.5, 121.5, 122.5],
        "images": [{"seconds": 5.0, "file": "a.png"}, {"seconds": 4.0, "file": "b.png"}],
        "peak_host_bytes": 2**30,
        "peak_device_bytes": None,
        "device": "cpu",
        "dtype": "float32",
    }
    got = bench_report.summarize(raw, {"warmup": 1, "n_samples": 1})
    assert (got["load_s"], got["processing_s"], got["total_s"]) == (5.0, 4.0, 9.0)
    assert (got["cold_start_s"], got["first_step_done_s"], got["wall_s"]) == (10.0, 10.5, 30.0)
    assert got["step_s"] == pytest.approx(2.5 / 3) and got["it_per_s"] == pytest.approx(1.2)
    assert got["unet_call_s"] == pytest.approx(0.5) and got["unet_calls_per_image"] == 3
    assert got["last_image"] == "b.png" and got["threads"] is None and got["versions"] == {}
    assert got["capture_s"] is None and got["compile_cache"] is None  # no accel report
    accel = {
        "graphs": {"capture_s": 0.8, "replays": 6, "eager_steps": 0, "eager_reasons": {}},
        "compile": {"compile_s": 12.5, "compile_cache": "hit", "shapes": []},
    }
    fields = bench_report.summarize({**raw, "accel": accel}, {"warmup": 1, "n_samples": 1})
    assert (fields["capture_s"], fields["graph_replays"], fields["eager_steps"]) == (0.8, 6, 0)
    assert (fields["compile_s"], fields["compile_cache"]) == (12.5, "hit")
    assert fields["accel"] == accel
    report = {
        "rows": {"mlc": {**got, "repeats": 1}},
        "machine": {"load_avg": [0.5, 0.4, 0.3]},
    }
    table = bench_report.format_table(report).splitlines()
    assert table[0].split()[:4] == ["TIME", "TO", "LOAD", "MODEL"]
    assert table[1].startswith("mlc engine") and "5.00 s" in table[1] and "9.00 s" in table[1]
    assert table[1].split()[-2:] == ["GiB", "n/a"]  # 1.00 GiB host, no device figure on a CPU
    assert table[-1].startswith("device cpu (float32), 3 UNet calls per image, medians of 1")


def test_bench_end_to_end_with_baseline(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "0")  # the tiny model goes through the cache too
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "b.json"
    argv = ["--bench", "--baseline", "diffusers", "--ckpt", str(tiny.safetensors)]
    argv += ["--H", "32", "--W", "32", "--ddim_steps", "2", "--n_iter", "2"]
    argv += ["--outdir", str(tmp_path / "out"), "--bench_json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for column in ("TIME TO LOAD MODEL", "PROCESSING TIME", "TOTAL TIME", "it/s", "cold start"):
        assert column in table
    assert "mlc engine" in table and "diffusers baseline" in table
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {"mlc", "diffusers"}
    for row in report["rows"].values():
        assert set(row) >= ROW_FIELDS
        assert row["unet_calls_per_image"] == 3  # PLMS: S+1 calls
        assert 0 < row["cold_start_s"] < row["first_step_done_s"] <= row["wall_s"]
        assert row["peak_host_bytes"] > 0 and row["device"] == "cpu"
    assert set(report["ratios"]) >= {"cold_start_s", "step_s", "total_s", "peak_host_bytes"}
    for run in report["runs"]:  # CPU seconds to model ready, within the wall time it took
        assert run["load_cpu_s"] > 0
    assert "load, CPU time of all threads" in table
    for run in report["runs"]:  # the engine's steps: eager on a CPU (no graphs, no compile)
        if run["row"] == "mlc":
            assert run["eager_reasons"] == {"no CUDA device": 6} and run["graph_replays"] == 0
            assert run["capture_s"] == 0 and run["compile_s"] is None
        else:
            assert run["eager_reasons"] is None and run["capture_s"] is None
    assert report["output"]["identical"] is True
    assert report["changed_from_seed"] == ["--H 32", "--W 32", "--ddim_steps 2", "--n_iter 2"]
    assert report["settings"]["warmup"] == 1 and len(report["runs"]) == 2
    assert "converted cache: built" in report["cache"]


def test_bench_warm_row(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    """--bench_warm 2: a worker of the bench's own is started through the engine's client,
    then two timed requests (new prompts) reach their first step and first PNG; the worker is
    stopped after."""
    monkeypatch.setenv("MLC_CACHE_DIR", "off")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "b.json"
    argv = ["--bench", "--ckpt", str(tiny.safetensors), "--H", "32", "--W", "32"]
    argv += ["--ddim_steps", "1", "--n_iter", "1", "--bench_warm", "2"]
    argv += ["--outdir", str(tmp_path / "out"), "--bench_json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mlc warm worker" in table and "first PNG" in table
    warm = json.loads(out.read_text())["warm"]
    assert warm["requests"] == 2 and len(warm["runs"]) == 2
    for run in warm["runs"]:
        assert 0 < run["first_step_s"] < run["first_png_s"] <= run["wall_s"]
        assert run["load_s"] == 0  # the worker's model was loaded by the untimed request
    pngs = sorted((tmp_path / "out").glob("bench-*/warm/*/samples/*.png"))
    assert [p.parent.parent.name for p in pngs] == ["start", "take-1", "take-2"]
    assert "--bench_warm" not in json.loads(out.read_text())["settings"]["engine_argv"]


def test_bench_refuses_bad_warm_count(tiny, capsys) -> None:
    assert main(["--bench", "--ckpt", str(tiny.safetensors), "--bench_warm", "-1"]) == 2
    assert "--bench_warm" in capsys.readouterr().err


def test_bench_refuses_bad_warmup(tiny, capsys) -> None:
    argv = ["--bench", "--ckpt", str(tiny.safetensors), "--n_iter", "2", "--bench_warmup", "2"]
    assert main(argv) == 2
    assert "--bench_warmup" in capsys.readouterr().err


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLC_CACHE_DIR", str(root))
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "0")
    return root


def _count_conversions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = loading._load_single_file

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "_load_single_file", counting)
    return calls


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_converted_cache_reused_and_invalidated(tiny, tmp_path, cache_env, monkeypatch, fmt):
    src = tiny.ckpt if fmt == "ckpt" else tiny.safetensors
    ckpt = tmp_path / f"model.{fmt}"
    shutil.copy(src, ckpt)
    shutil.copytree(tiny.config, tmp_path / "model.config")
    calls = _count_conversions(monkeypatch)

    first = loading.load(ckpt)
    entries = list(cache_env.glob("*.safetensors"))
    assert len(calls) == 1 and len(entries) == 1

    second = loading.load(ckpt)  # reused: no conversion, same tensors
    assert len(calls) == 1
    a, b = first.unet.state_dict(), second.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # from the cache: the engine's own models (mlc.engine.nets), the same weights
    assert type(second.unet).__module__ == "mlc.engine.nets.unet"
    assert second.text_encoder.config.hidden_size == 32

    # the checkpoint changes (new weights, new mtime): the entry is stale and rebuilt
    from mlc.engine.export import save_checkpoint

    state = checkpoint.read_checkpoint(ckpt)
    key = checkpoint.UNET_PREFIX + "input_blocks.0.0.weight"  # the UNet's conv_in
    state = {k: v.clone() for k, v in state.items()}
    state[key] += 1.0
    save_checkpoint(state, ckpt)
    os.utime(ckpt, ns=(1, ckpt.stat().st_mtime_ns + 10**9))
    third = loading.load(ckpt)
    assert len(calls) == 2
    assert torch.equal(third.unet.conv_in.weight, state[key].float())  # the new weights
    assert not torch.equal(third.unet.conv_in.weight, first.unet.conv_in.weight)
    assert len(list(cache_env.glob("*.safetensors"))) == 1  # replaced, not piled up
    fourth = loading.load(ckpt)
    assert len(calls) == 2 and torch.equal(fourth.unet.conv_in.weight, third.unet.conv_in.weight)


def test_cached_weights_go_straight_to_the_device(tiny, tmp_path, cache_env, monkeypatch):
    """``load(device=X)`` reads the cache entry onto X (safetensors' ``device=``: on a GPU one
    copy, file -> device, in the entry's dtype) and moves no weight after. X is "cuda" here:
    the read is sent to the CPU (no GPU in this machine), and any ``.to("cuda")`` of a model
    would fail with this CPU-only torch."""
    from mlc.engine.convcache import ConvertedCache

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(tiny.safetensors, ckpt)
    shutil.copytree(tiny.config, tmp_path / "model.config")
    first = loading.load(ckpt)  # builds the entry
    asked: list[str] = []
    real_read = ConvertedCache.read

    def read(self, device: str = "cpu"):
        asked.append(device)
        return real_read(self, "cpu")

    monkeypatch.setattr(ConvertedCache, "read", read)
    calls = _count_conversions(monkeypatch)
    on_gpu = loading.load(ckpt, device="cuda")
    assert asked == ["cuda"] and calls == []  # from the entry, read for the device
    assert on_gpu.unet.device.type == "cpu"  # where the read put it: nothing moved after
    a, b = first.unet.state_dict(), on_gpu.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises((AssertionError, RuntimeError)):  # what a move would have done here
        torch.zeros(1).to("cuda")


def test_cache_off_small_files_and_other_dtype(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLC_CACHE_DIR", "off")
    assert converted_cache(checkpoint.resolve(tiny.safetensors), torch.float32) is None
    monkeypatch.setenv("MLC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MLC_CACHE_MIN_BYTES", raising=False)  # default: only large files
    assert converted_cache(checkpoint.resolve(tiny.safetensors), torch.float32) is None
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "0")
    source = checkpoint.resolve(tiny.safetensors)
    e32 = converted_cache(source, torch.float32)
    e16 = converted_cache(source, torch.float16)
    assert e32 is not None and e16 is not None
    assert e32.path != e16.path and e32.key != e16.key and not e32.valid()


def test_bench_passes_every_engine_flag_through(tiny, tmp_path: Path, monkeypatch, capsys):
    """Flags the benchmark does not own reach the measured runs, whatever they are: --f (an
    explicit mismatch fails there, as in a plain run), --ddim_eta and --match (in the PNG's
    metadata) and --no_cuda_graphs (the run's accel report: every step eager, "off")."""
    from mlc.engine.outputs import read_metadata

    monkeypatch.setenv("MLC_CACHE_DIR", "off")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["--bench", "--ckpt", str(tiny.safetensors), "--H", "32", "--W", "32"]
    base += ["--ddim_steps", "2", "--n_iter", "2", "--sampler", "ddim"]
    out = tmp_path / "b.json"
    argv = [*base, "--f", "8", "--ddim_eta", "0.5", "--outdir", str(tmp_path / "ok")]
    argv += ["--no_cuda_graphs", "--match", "diffusers"]
    assert main([*argv, "--bench_json", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert {"--f 8", "--ddim_eta 0.5", "--no_cuda_graphs", "--match diffusers"} <= set(
        report["changed_from_seed"]
    )
    (run,) = report["runs"]
    _, data = read_metadata(run["last_image"])
    assert data["eta"] == 0.5 and data["sampler"] == "ddim" and data["match"] == "diffusers"
    assert run["eager_reasons"] == {"off": run["eager_steps"]} and run["eager_steps"] >= 4
    capsys.readouterr()
    assert main([*base, "--f", "4", "--outdir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "mlc-txt2img: error: the measured mlc run: --f 4 does not match the model's VAE, "
        "which downsamples by 8"
    )
