"""The speed and memory flags of mlc-txt2img: --fast, --deepcache, --tome, --tiny_vae,
--low_vram, and the speed-mode benchmark (tiny model, CPU; no timing is asserted)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from mlc.engine import txt2img
from mlc.engine.options import parse
from mlc.engine.outputs import read_metadata
from mlc.engine.run import execute
from mlc.engine.session import open_session

from .conftest import SIZE, STEPS, TinyModel, small_run


def _args(tiny: TinyModel, outdir: Path, *extra: str) -> list[str]:
    return [
        *small_run(tiny.safetensors),
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--skip_grid",
        "--outdir",
        str(outdir),
        "--json",
        *extra,
    ]


def _run(capsys, argv: list[str]) -> dict:
    code = txt2img.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    summary["stderr"] = err
    return summary


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_speed_modes_change_pixels_and_say_so(capsys, tiny, tmp_path, taesd):
    exact = _run(capsys, _args(tiny, tmp_path / "exact"))
    assert "speed_modes" not in exact
    base = _pixels(exact["files"][0])
    for flag, value, field, label in (
        ("--deepcache", "2", "deepcache", "DeepCache interval: 2"),
        ("--tome", "0.5", "tome", "ToMe ratio: 0.5"),
        ("--tiny_vae", str(taesd), "tiny_vae", "VAE: TAESD"),
    ):
        out = _run(capsys, _args(tiny, tmp_path / field, flag, value))
        assert field in out["speed_modes"], flag
        img = _pixels(out["files"][0])
        assert img.shape == base.shape
        assert np.abs(img - base).max() > 0, f"{flag} left the pixels unchanged"
        text, data = read_metadata(Path(out["files"][0]))
        assert label in text
        assert data["speed_modes"][field] == out["speed_modes"][field]


def test_a_session_stays_exact_after_a_speed_mode_run(tiny, tmp_path):
    """The warm worker reuses one session: token merging must be removed after its run."""
    from mlc.engine import tome

    spec = replace(parse(_args(tiny, tmp_path / "a")), json=True)
    session = open_session(spec)
    first = execute(spec, session)
    execute(replace(spec, outdir=tmp_path / "b", tome=0.5, deepcache=2), session)
    assert not tome.is_applied(session.components.unet)
    again = execute(replace(spec, outdir=tmp_path / "c"), session)
    assert np.array_equal(_pixels(first["files"][0]), _pixels(again["files"][0]))


def test_low_vram_on_cpu_is_a_note_and_changes_nothing(capsys, tiny, tmp_path):
    exact = _run(capsys, _args(tiny, tmp_path / "exact"))
    low = _run(capsys, _args(tiny, tmp_path / "low", "--low_vram"))
    assert "--low_vram has no effect on cpu" in low["stderr"]
    assert np.array_equal(_pixels(exact["files"][0]), _pixels(low["files"][0]))


def test_offload_moves_each_model_in_turn_and_keeps_the_pixels(components, tiny):
    """The --low_vram path, driven on the CPU: each model is asked for before it runs."""
    from mlc.engine.generate import ImageSpec, Renderer, Settings
    from mlc.engine.lowvram import Offload

    settings = Settings("ddim", STEPS, 7.5, 0.0, SIZE, SIZE)
    image = [ImageSpec(0, "a red cube", "", 7)]
    plain = Renderer(components).render(image, settings)[0].image
    seen: list[object] = []

    class Recording(Offload):
        def use(self, model):
            seen.append(model)
            return super().use(model)

    offload = Recording("cpu")
    offloaded = Renderer(components, offload=offload).render(image, settings)[0].image
    assert np.array_equal(np.asarray(plain), np.asarray(offloaded))
    assert seen[0] is components.text_encoder and any(m is components.unet for m in seen)
    assert seen[-1] is components.vae
    assert offload.current is components.vae and offload.moves >= 3


def test_offload_with_the_tiny_vae(components, taesd):
    from mlc.engine.generate import ImageSpec, Renderer, Settings
    from mlc.engine.lowvram import Offload
    from mlc.engine.tinyvae import load_tiny_vae

    tiny_vae = load_tiny_vae(taesd)
    settings = Settings("ddim", STEPS, 7.5, 0.0, SIZE, SIZE, tiny_vae=True)
    image = [ImageSpec(0, "a red cube", "", 7)]
    plain = Renderer(components, tiny_vae=tiny_vae).render(image, settings)[0].image
    offload = Offload("cpu")
    moved = Renderer(components, tiny_vae=tiny_vae, offload=offload).render(image, settings)
    assert np.array_equal(np.asarray(plain), np.asarray(moved[0].image))
    assert offload.current is tiny_vae  # the tiny VAE took its turn; the full VAE did not
    offload.release()
    assert offload.current is None


def test_bench_modes_reports_every_mode_against_exact(capsys, tiny, tmp_path, taesd):
    out = tmp_path / "bench"
    code = txt2img.main(
        [
            "--bench",
            "--bench_modes",
            *small_run(tiny.safetensors, 5),
            "--n_iter",
            "1",
            "--tiny_vae",
            str(taesd),
            "--outdir",
            str(out),
            "--bench_json",
            str(out / "modes.json"),
            "--no_cuda_graphs",
            "--match",
            "diffusers",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "modes.json").read_text())
    # the run's own settings reach every mode: eager steps by choice, latents in the model's dtype
    assert (report["settings"]["cuda_graphs"], report["settings"]["latents"]) == (False, "model")
    graphs = report["accel"]["graphs"]
    assert graphs["eager_reasons"] == {"off": graphs["eager_steps"]} and graphs["eager_steps"] > 0
    rows = {r["mode"]: r for r in report["modes"]}
    assert set(rows) == {"exact", "fast", "deepcache 3", "tome 0.5", "tiny_vae", "all"}
    assert rows["exact"]["deviation"]["max_abs"] == 0 and rows["exact"]["speedup"] == 1.0
    assert (rows["fast"]["sampler"], rows["fast"]["steps"]) == ("dpmpp_2m_karras", 2)
    for name in ("fast", "deepcache 3", "tome 0.5", "tiny_vae", "all"):
        assert rows[name]["deviation"]["max_abs"] > 0, name
        assert rows[name]["seconds_per_image"] > 0
    assert not any(r["vae_fallback"] for r in rows.values())  # fp32 on a CPU: no fp16 retry
    assert report["settings"]["tiny_vae"] == str(taesd)
    assert "speed-up" in captured.out and (out / "mode-exact.png").is_file()


def test_no_cuda_graphs_keeps_the_pixels_and_the_report_says_why(capsys, tiny, tmp_path):
    """On CPU every step is eager either way; the summary's accel report says why."""
    default = _run(capsys, _args(tiny, tmp_path / "default"))
    eager = _run(capsys, _args(tiny, tmp_path / "eager", "--no_cuda_graphs"))
    assert np.array_equal(_pixels(default["files"][0]), _pixels(eager["files"][0]))
    for summary, reason in ((default, "no CUDA device"), (eager, "off")):
        graphs = summary["accel"]["graphs"]
        assert graphs["eager_reasons"] == {reason: STEPS} and graphs["eager_steps"] == STEPS
        assert graphs["replays"] == 0 and graphs["captures"] == []
        assert "compile" not in summary["accel"]  # no --compile
    assert "CUDA graphs" not in eager["stderr"]  # the user's own choice: no note


def test_match_diffusers_on_cpu_fp32_is_accepted_and_recorded(capsys, tiny, tmp_path):
    exact = _run(capsys, _args(tiny, tmp_path / "exact"))
    matched = _run(capsys, _args(tiny, tmp_path / "match", "--match", "diffusers"))
    assert "match" not in exact and matched["match"] == "diffusers"
    assert matched["dtype"] == "float32"  # on CPU the model's dtype is fp32: same latents
    assert np.array_equal(_pixels(exact["files"][0]), _pixels(matched["files"][0]))
    _, data = read_metadata(Path(matched["files"][0]))
    assert data["match"] == "diffusers"
    assert "match" not in read_metadata(Path(exact["files"][0]))[1]
    assert parse(["--match", "diffusers"]).latents == "model"
    assert parse([]).latents == "float32" and parse([]).cuda_graphs is True
    assert parse(["--no_cuda_graphs"]).cuda_graphs is False
