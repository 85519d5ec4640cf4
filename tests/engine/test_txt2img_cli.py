"""The classic command line: flags, runs, --from-file, --json, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlc.engine import txt2img
from mlc.engine.outputs import read_metadata

from .conftest import SIZE, TinyModel, run_cli, small_run


def _run(capsys, tiny: TinyModel, outdir: Path, *args: str) -> dict:
    argv = [
        *small_run(tiny.safetensors),
        "--outdir",
        str(outdir),
        "--json",
        *args,
    ]
    code = txt2img.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_seed_command_line_runs(capsys, tiny: TinyModel, tmp_path: Path):
    """The seed's first command line, unchanged except for model and size."""
    out = tmp_path / "out"
    summary = _run(
        capsys,
        tiny,
        out,
        "--prompt",
        "a photo of a pink cube, black background",
        "--plms",
        "--skip_grid",
        "--n_samples",
        "1",
    )
    assert summary["grid"] is None and summary["sampler"] == "plms"
    assert summary["seeds"] == [42, 43]  # n_iter 2
    assert [Path(f).name for f in summary["files"]] == ["00000.png", "00001.png"]
    assert not list(out.glob("grid-*.png"))
    params, data = read_metadata(summary["files"][1])
    assert params.startswith("a photo of a pink cube, black background\nSteps: 3, Sampler: PLMS")
    assert "Seed: 43" in params and f"Size: {SIZE}x{SIZE}" in params and "Model hash: " in params
    assert data["seed"] == 43 and data["sampler"] == "plms" and data["model"] == "tiny"
    assert set(summary["timings"]) >= {"load_s", "generate_s", "total_s", "per_image_s"}


def test_grid_and_numbering_across_runs(capsys, tiny: TinyModel, tmp_path: Path):
    out = tmp_path / "out"
    first = _run(capsys, tiny, out, "--n_samples", "3", "--n_iter", "2", "--sampler", "euler")
    grid = Image.open(first["grid"])
    assert Path(first["grid"]).name == "grid-0000.png"
    assert grid.size == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)
    _, gdata = read_metadata(first["grid"])
    assert [i["seed"] for i in gdata["images"]] == list(range(42, 48))
    assert gdata["run"]["sampler"] == "euler"
    second = _run(capsys, tiny, out, "--n_samples", "2", "--n_iter", "1", "--n_rows", "1")
    assert [Path(f).name for f in second["files"]] == ["00006.png", "00007.png"]
    assert Path(second["grid"]).name == "grid-0001.png"
    assert Image.open(second["grid"]).size == (SIZE + 4, 2 * (SIZE + 2) + 2)
    # The first run's image 4 is reproduced alone with --seed 46.
    alone = _run(
        capsys,
        tiny,
        tmp_path / "alone",
        "--seed",
        "46",
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--sampler",
        "euler",
        "--skip_grid",
    )
    a = np.asarray(Image.open(first["files"][4]))
    b = np.asarray(Image.open(alone["files"][0]))
    assert np.array_equal(a, b)


def test_from_file_short_last_batch(capsys, tiny: TinyModel, tmp_path: Path, monkeypatch):
    prompts = ["a red cube", "", "a green ball", "  ", "a blue cone", "a pink cube", "a bär 🐻"]
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    import mlc.engine.loading as loading

    calls = []
    real_load = loading.load
    monkeypatch.setattr(loading, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    summary = _run(
        capsys,
        tiny,
        tmp_path / "bulk",
        "--from-file",
        str(pfile),
        "--n_samples",
        "2",
        "--n_iter",
        "1",
        "--skip_grid",
    )
    assert len(calls) == 1  # the model is loaded once
    lines = [p for p in prompts if p.strip()]
    assert len(lines) == 5
    assert [i["prompt"] for i in summary["images"]] == lines
    assert summary["seeds"] == [42, 43, 44, 45, 46]
    for f, line in zip(summary["files"], lines, strict=True):
        params, data = read_metadata(f)
        assert data["prompt"] == line and params.splitlines()[0] == line


def test_negative_prompt_in_metadata(capsys, tiny: TinyModel, tmp_path: Path):
    summary = _run(
        capsys,
        tiny,
        tmp_path / "o",
        "--negative_prompt",
        "blurry, low quality",
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--skip_grid",
    )
    params, data = read_metadata(summary["files"][0])
    assert params.splitlines()[1] == "Negative prompt: blurry, low quality"
    assert data["negative_prompt"] == "blurry, low quality"


def test_skip_save_writes_only_the_grid(capsys, tiny: TinyModel, tmp_path: Path):
    summary = _run(capsys, tiny, tmp_path / "o", "--skip_save", "--n_samples", "2", "--n_iter", "1")
    assert summary["files"] == [] and summary["grid"]
    assert not (tmp_path / "o" / "samples").exists() or not any(
        (tmp_path / "o" / "samples").iterdir()
    )


def test_human_output_and_module_entry_point(tiny: TinyModel, tmp_path: Path):
    proc = run_cli(
        *small_run(tiny.ckpt, 2),
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--outdir",
        str(tmp_path / "o"),
        "--dpm_solver",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Your samples are ready and waiting for you here:" in proc.stdout
    assert (tmp_path / "o" / "samples" / "00000.png").is_file()
    assert (tmp_path / "o" / "grid-0000.png").is_file()


def _masked(text: str) -> list[str]:
    """TEXT's lines with every decimal number (times) as N."""
    return [re.sub(r"\d+\.\d+", "N", line) for line in text.splitlines()]


def test_json_keeps_the_progress_on_stderr(tiny: TinyModel, tmp_path: Path):
    """--json: stdout is the JSON document alone; stderr says what it says without --json."""
    argv = [*small_run(tiny.safetensors, 2), "--n_samples", "2", "--n_iter", "2", "--fast"]
    argv += ["--outdir", "o"]
    (tmp_path / "plain").mkdir()
    (tmp_path / "json").mkdir()
    plain = run_cli(*argv, cwd=tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    with_json = run_cli(*argv, "--json", cwd=tmp_path / "json")
    assert with_json.returncode == 0, with_json.stderr
    summary = json.loads(with_json.stdout)
    assert summary["seeds"] == [42, 43, 44, 45]
    lines = _masked(with_json.stderr)
    assert lines == _masked(plain.stderr)
    assert [ln.split("]")[0] for ln in lines if ln.startswith("[")] == [
        f"[{k}/4" for k in range(1, 5)
    ]
    assert any(ln.startswith("note: --fast: ") for ln in lines)
    assert any(ln.startswith("model tiny loaded in N s on cpu") for ln in lines)
    assert "[4/4] seed 45 N s -> o/samples/00003.png" in lines


def test_bad_input_is_one_line_end_to_end():
    """The process: one stderr line, no traceback, nothing on stdout, exit 2 or 1 (every
    message is checked in process: test_options.py)."""
    for args, message, code in (
        (["--H", "500"], "--H 500 is not a multiple of 8; use 496 or 504", 2),
        (["--precision", "half"], "argument --precision: invalid choice", 2),
        (["--ckpt", "/nonexistent/v1-5-pruned-emaonly.ckpt"], "checkpoint not found: ", 1),
    ):
        proc = run_cli(*args)
        assert proc.returncode == code
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("mlc-txt2img: error: ") and message in lines[0]
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_exit_codes(tmp_path: Path):
    assert run_cli("--H", "500").returncode == 2
    missing = run_cli("--ckpt", str(tmp_path / "x.ckpt"))
    assert missing.returncode == 1
    assert "mlc setup NAME stable-diffusion-v1-5" in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    proc = run_cli("--from-file", str(empty))
    assert proc.returncode == 2 and "has no prompts" in proc.stderr
    corrupt = tmp_path / "model.ckpt"
    corrupt.write_bytes(b"\x00" * 1000)
    proc = run_cli("--ckpt", str(corrupt), "--H", "64", "--W", "64")
    assert proc.returncode == 1 and "not a PyTorch checkpoint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help_lists_samplers_without_importing_torch():
    """--help only builds the parser: no torch, no model (what made it fast)."""
    code = (
        "import sys\n"
        "from mlc.engine.txt2img import main\n"
        "code = main(['--help'])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--dpm_solver" in proc.stdout and "euler_a" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "torch imported: False"
    assert run_cli("--help").returncode == 0  # the module entry point too


def test_engine_never_imports_host_libraries():
    """Importing every engine module loads no docker, typer or rich, not even indirectly (the
    static side, every import statement of src/, is tests/test_layout.py's)."""
    code = (
        "import pkgutil, importlib, sys, mlc.engine\n"
        "names = [m.name for m in pkgutil.iter_modules(mlc.engine.__path__, 'mlc.engine.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in ('docker', 'typer', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert len(names) > 20 and 'mlc.engine.worker' in sys.modules, names\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_explicit_config_folder(capsys, tiny: TinyModel, tmp_path: Path):
    """A checkpoint alone (no sidecar) needs --config; without it the error says why."""
    import shutil

    lone = tmp_path / "lone.ckpt"
    shutil.copy2(tiny.ckpt, lone)
    base = [
        *small_run(lone, 2),
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--outdir",
        str(tmp_path / "o"),
        "--json",
    ]
    assert txt2img.main(base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match config bundled sd-v1" in err[0]
    assert txt2img.main([*base, "--config", str(tiny.config)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"] == str(tiny.config) and len(summary["files"]) == 1


# --- one error table ---------------------------------------------------------------------

FAILURES = [
    (
        "torch_oom",
        "error: out of GPU memory; try --low_vram, smaller --H/--W, drop --batched, or "
        "--precision autocast",
        1,
    ),
    ("memory", "error: out of memory; try smaller --H/--W or --n_samples", 1),
    ("runtime", "error: RuntimeError: CUDA error: device-side assert", 1),
    ("no_space", "error: no space left on device writing /out/x.png; free some space", 1),
    ("engine", "error: the model is broken (see the log)", 1),
    ("interrupt", "interrupted", 130),
]


def _failure(kind: str) -> BaseException:
    import errno

    import torch

    from mlc.errors import EngineError

    return {
        "torch_oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
        "memory": MemoryError,
        "runtime": lambda: RuntimeError("CUDA error: device-side assert\nmore detail"),
        "no_space": lambda: OSError(errno.ENOSPC, "No space left on device", "/out/x.png"),
        "engine": lambda: EngineError("the model is broken", hint="see the log"),
        "interrupt": KeyboardInterrupt,
    }[kind]()


@pytest.mark.parametrize(("kind", "line", "code"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failed_run_is_one_line_through_the_error_table(capsys, kind: str, line: str, code):
    """torch/diffusers failures stay one line with exit 1 (not internal errors), as do the
    table's own rows; the warm worker runs the same command.main."""
    from mlc.engine import command

    def fail(spec):
        raise _failure(kind)

    assert command.main(["--n_samples", "1"], run=fail) == code
    out, err = capsys.readouterr()
    assert out == "" and err == f"mlc-txt2img: {line}\n"


def _odd_model(dest: Path) -> Path:
    """A tiny SD-v1-shaped model whose VAE downsamples by 2 into 8 latent channels."""
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mlc.engine import demo
    from mlc.engine.export import export_checkpoint

    torch.manual_seed(5)
    unet = UNet2DConditionModel(**{**demo.UNET_CONFIG, "in_channels": 8, "out_channels": 8})
    vae = AutoencoderKL(
        **{
            **demo.VAE_CONFIG,
            "block_out_channels": [32, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 8,
        }
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**demo.TEXT_CONFIG))
    path = dest / "odd.safetensors"
    demo.write_config_folder(demo.sidecar_dir(path), unet, vae, text_encoder)
    return export_checkpoint(unet, vae, text_encoder, path)


def test_f_and_c_default_to_the_models_own(capsys, tmp_path: Path):
    """--f and --C not given: the model's VAE factor and latent channels; only an explicit
    value that differs is refused."""
    odd = _odd_model(tmp_path)
    base = [*small_run(odd), "--n_samples", "1", "--n_iter", "1", "--skip_grid"]
    for extra in ([], ["--f", "2", "--C", "8"]):
        code = txt2img.main([*base, *extra, "--outdir", str(tmp_path / "out"), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        (file,) = json.loads(out)["files"]
        assert Image.open(file).size == (SIZE, SIZE)
    for extra, line in (
        (["--f", "8"], "--f 8 does not match the model's VAE, which downsamples by 2"),
        (["--C", "4"], "--C 4 does not match the model's 8 latent channels"),
    ):
        assert txt2img.main([*base, *extra, "--outdir", str(tmp_path / "refused")]) == 2
        assert capsys.readouterr().err == f"mlc-txt2img: error: {line}\n"
    assert not (tmp_path / "refused").exists()
