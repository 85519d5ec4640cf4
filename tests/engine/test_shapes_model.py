"""The shapes demo model: its judge, its shipped weights (loaded and run by the engine's own
code, judged on the held-out prompts with four samplers), stable images, and its trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlc.engine.shapes import evaluate, judge, model, scenes

SAMPLERS = evaluate.SAMPLERS
TARGET = 0.9  # issue 13's target: share of held-out prompts judged correct, per sampler


def _scenes(n: int, seed: int = 7) -> list[scenes.Scene]:
    """``n`` scenes of all combinations (held-out ones first), at random places and sizes."""
    rng = np.random.default_rng(seed)
    combos = list(scenes.HELD_OUT) + scenes.train_combos()[:: max(len(scenes.all_combos()) // n, 1)]
    return [scenes.random_scene(rng, [c]) for c in combos[:n]]


# -- the scenes and the judge --------------------------------------------------------------------


def test_scene_vocabulary_and_held_out_split():
    assert len(scenes.SHAPES) >= 6 and "cube" in scenes.SHAPES
    assert len(scenes.COLOURS) >= 10 and "pink" in scenes.COLOURS
    assert len(scenes.BACKGROUNDS) >= 5 and "black" in scenes.BACKGROUNDS
    held = set(scenes.HELD_OUT)
    assert len(held) == len(scenes.HELD_OUT) >= 30
    assert held <= set(scenes.all_combos())
    assert not held & set(scenes.train_combos())
    assert scenes.caption("cube", "pink", "black") == scenes.DEMO_PROMPT
    # every word of a held-out prompt is still seen in training, only the triple is new
    train = scenes.train_combos()
    for shape, colour, background in scenes.HELD_OUT:
        assert any(t[0] == shape and t[1] == colour for t in train)
        assert any(t[1] == colour and t[2] == background for t in train)


def test_training_scenes_come_from_the_seed():
    a = scenes.random_scenes(np.random.default_rng(3), 20)
    b = scenes.random_scenes(np.random.default_rng(3), 20)
    c = scenes.random_scenes(np.random.default_rng(4), 20)
    assert a == b and a != c
    assert np.array_equal(scenes.draw_batch(a), scenes.draw_batch(b))
    assert not {(s.shape, s.colour, s.background) for s in a} & set(scenes.HELD_OUT)


def test_judge_accepts_the_drawers_own_images():
    drawn = _scenes(60)
    share, verdicts = judge.score(
        [scenes.draw(s) for s in drawn], [(s.shape, s.colour, s.background) for s in drawn]
    )
    assert share == 1.0, [v.reason for v in verdicts if not v.ok]


def test_judge_rejects_wrong_shape_colour_or_background():
    for i, s in enumerate(_scenes(21, seed=11)):
        image = scenes.draw(s)
        others = [x for x in scenes.SHAPES if x != s.shape]
        colours = [x for x in scenes.COLOURS if x not in (s.colour, s.background)]
        backgrounds = [x for x in scenes.BACKGROUNDS if x not in (s.colour, s.background)]
        wrong = [
            (others[i % len(others)], s.colour, s.background),
            (s.shape, colours[i % len(colours)], s.background),
            (s.shape, s.colour, backgrounds[i % len(backgrounds)]),
        ]
        for triple in wrong:
            verdict = judge.judge(image, *triple)
            assert not verdict.ok, (s, triple)
            assert verdict.reason


def _tinted(s: scenes.Scene, shift: float) -> np.ndarray:
    """``s`` drawn with its background moved by ``shift`` levels towards another hue and its
    object a shade darker: both still nearest to their names, as a model draws them."""
    image = np.asarray(scenes.draw(s)).astype(np.float32)
    bg = np.array(scenes.COLOURS[s.background], np.float32)
    obj = np.array(scenes.COLOURS[s.colour], np.float32)
    is_bg = np.abs(image - bg).sum(-1) < 1
    is_obj = np.abs(image - obj).sum(-1) < 1
    tint = np.array([shift, -shift / 2, shift / 2], np.float32)
    image[is_bg] = np.clip(bg + tint, 0, 255)
    image[is_obj] = obj * 0.85
    named = judge.nearest_colour(np.stack([image[is_bg][0], image[is_obj][0]]))
    assert [judge._NAMES[i] for i in named] == [s.background, s.colour], s
    return image.astype(np.uint8)


def test_judge_reads_shapes_apart_from_tinted_backgrounds_and_shades():
    """A background a little off its named colour is not object: the shape is read from the
    object's own coverage, whatever its exact shade (the judge once failed these)."""
    drawn = [s for s in _scenes(60, seed=5) if s.colour not in ("black", "gray", "brown")]
    share, verdicts = judge.score(
        [_tinted(s, 22.0) for s in drawn], [(s.shape, s.colour, s.background) for s in drawn]
    )
    assert share == 1.0, [(v.wanted, v.reason, v.reading.iou) for v in verdicts if not v.ok]
    for s in drawn[:12]:
        others = [x for x in scenes.SHAPES if x != s.shape]
        for other in others:
            assert not judge.judge(_tinted(s, 22.0), other, s.colour, s.background).ok, (s, other)


def test_judge_tells_every_shape_from_every_other():
    for shape in scenes.SHAPES:
        reading = judge.read(scenes.draw(scenes.centred(shape, "orange", "blue")))
        assert reading.shape == shape, reading


def test_judge_rejects_images_without_one_clear_object():
    black = np.zeros((scenes.SIZE, scenes.SIZE, 3), np.uint8)
    assert judge.read(black).note == "no object"
    two = scenes.thumbnail(scenes.Scene("square", "red", "black", 8, 8, 40))
    two = two.copy()
    two[10:14, 10:14] = scenes.COLOURS["red"]
    assert judge.read(scenes.upscale(two)).note == "more than one object"
    noise = np.random.default_rng(0).integers(0, 256, (scenes.SIZE, scenes.SIZE, 3), np.uint8)
    assert not judge.judge(noise, "circle", "red", "black").ok


# -- the shipped weights -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    """The shipped checkpoint, loaded through the engine's normal path."""
    from mlc.engine.loading import load

    path = model.shipped_checkpoint()
    assert path.is_file(), f"missing {path}: retrain with python -m mlc.engine.shapes.train"
    return load(path)


def test_shipped_files_are_small_and_name_their_native_size():
    path = model.shipped_checkpoint()
    assert path.suffix == ".safetensors"
    assert path.stat().st_size <= 20 * 2**20
    config = path.with_name(path.stem + ".config")
    unet = json.loads((config / "unet" / "config.json").read_text())
    vae = json.loads((config / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    assert factor == 8 and vae["latent_channels"] == 4
    assert unet["sample_size"] * factor == model.NATIVE_SIZE == scenes.SIZE
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["native_size"] == model.NATIVE_SIZE
    assert min(record["held_out_scores"].values()) >= TARGET


def test_setup_installs_the_shipped_weights_offline(tmp_path: Path):
    """What `mlc setup NAME demo` runs in the container: the shipped weights, as demo.ckpt
    with its sidecar, tensor for tensor; the engine's default size for it is its native one."""
    import torch
    from safetensors.torch import load_file

    from mlc.engine import demo
    from mlc.engine.checkpoint import native_size, read_checkpoint, resolve
    from mlc.engine.options import parse_args

    argv = ["--shapes", "--format", "ckpt", "--name", "demo", str(tmp_path / "m")]
    assert demo.main(argv) == 0
    ckpt = tmp_path / "m" / "demo.ckpt"
    installed, shipped_state = read_checkpoint(ckpt), load_file(str(model.shipped_checkpoint()))
    assert installed.keys() == shipped_state.keys()
    assert all(torch.equal(installed[k], shipped_state[k]) for k in shipped_state)
    assert native_size(resolve(ckpt)) == model.NATIVE_SIZE
    args = parse_args(["--ckpt", str(ckpt), "--prompt", scenes.DEMO_PROMPT])
    assert (args.H, args.W) == (model.NATIVE_SIZE, model.NATIVE_SIZE)


def test_shipped_model_has_the_sd_v1_layout(shipped):
    from safetensors import safe_open

    with safe_open(str(model.shipped_checkpoint()), framework="pt") as fh:
        keys = list(fh.keys())
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert shipped.vae_scale_factor == 8 and shipped.latent_channels == 4
    assert shipped.text_encoder.config.vocab_size == 49408
    assert shipped.tokenizer.model_max_length == 77
    assert evaluate.native_size(shipped) == model.NATIVE_SIZE
    assert any("CrossAttn" in t for t in shipped.unet.config.down_block_types)


def test_shipped_encoder_gives_the_latents_the_model_was_trained_on(shipped):
    import torch

    from mlc.engine.shapes.train import latent_means, pixels

    drawn = _scenes(12)
    with torch.no_grad():
        z = shipped.vae.encode(pixels(scenes.draw_batch(drawn))).latent_dist.mean
    assert torch.allclose(z, latent_means(drawn), atol=0.02)


@pytest.fixture(scope="module")
def held_out(shipped):
    """Per sampler: the held-out prompts' images at 20 steps and native size, judged."""
    prompts = scenes.held_out_prompts()
    results = {}
    for sampler in SAMPLERS:
        images = evaluate.render(shipped, prompts, sampler, steps=20)
        assert images[0].size == (model.NATIVE_SIZE, model.NATIVE_SIZE)
        share, verdicts = judge.score(images, list(scenes.HELD_OUT))
        failed = [f"{p}: {v.reason}" for p, v in zip(prompts, verdicts, strict=True) if not v.ok]
        results[sampler] = (share, failed, images)
    return results


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shipped_model_draws_the_held_out_prompts(held_out, sampler):
    """Prompts whose shape-colour-background combination it never saw in training, at 20
    steps, the native size and the guidance the model recommends (``model.GUIDANCE``)."""
    share, failed, _ = held_out[sampler]
    assert share >= TARGET, f"{sampler}: {share:.0%} correct; {failed}"


def test_the_judge_rejects_the_models_pictures_for_other_prompts(held_out):
    """The same pictures, each judged against the next prompt's scene (another shape,
    colour or background): a judge that passed anything would pass these."""
    combos = list(scenes.HELD_OUT)
    others = combos[1:] + combos[:1]
    assert all(a != b for a, b in zip(combos, others, strict=True))
    for sampler, (_, _, images) in held_out.items():
        share, _ = judge.score(images, others)
        assert share <= 0.1, f"{sampler}: {share:.0%} judged right for the wrong prompt"


def test_same_prompt_and_seed_give_the_same_image(shipped):
    first = evaluate.render(shipped, [scenes.DEMO_PROMPT], "ddim", seed=42, batched=False)[0]
    again = evaluate.render(shipped, [scenes.DEMO_PROMPT], "ddim", seed=42, batched=False)[0]
    other = evaluate.render(shipped, [scenes.DEMO_PROMPT], "ddim", seed=43, batched=False)[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert judge.judge(first, "cube", "pink", "black").ok, judge.read(first)


def test_txt2img_draws_the_demo_prompt_with_the_shipped_weights(tmp_path: Path, capsys):
    """The classic command line, with no --H/--W/--scale: the model's native size and the
    guidance it recommends are the defaults."""
    from mlc.engine import txt2img

    code = txt2img.main(
        [
            "--ckpt",
            str(model.shipped_checkpoint()),
            "--ddim_steps",
            "20",
            "--n_samples",
            "1",
            "--n_iter",
            "1",
            "--prompt",
            scenes.DEMO_PROMPT,
            "--outdir",
            str(tmp_path),
            "--skip_grid",
        ]
    )
    assert code == 0, capsys.readouterr().err
    from PIL import Image

    (sample,) = sorted((tmp_path / "samples").glob("*.png"))
    image = Image.open(sample)
    assert image.size == (model.NATIVE_SIZE, model.NATIVE_SIZE)
    assert judge.judge(image, "cube", "pink", "black").ok


# -- the trainer ---------------------------------------------------------------------------------


def test_training_command_runs_end_to_end(tmp_path: Path):
    """A few steps of the real training command with narrower models: it must keep working."""
    from mlc.engine.loading import load

    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "mlc.engine.shapes.train", str(out), "--tiny", "--no-eval"]
    cmd += ["--vae-steps", "2", "--unet-steps", "2", "--vae-batch", "2", "--unet-batch", "2"]
    cmd += ["--threads", "1", "--seed", "5", "--polish-steps", "2", "--noise-offset", "0.1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ckpt = out / f"{model.NAME}.safetensors"
    record = json.loads((out / f"{model.NAME}.json").read_text())
    assert record["recipe"]["seed"] == 5 and record["losses"]["unet"]
    assert record["native_size"] == model.NATIVE_SIZE
    components = load(ckpt)
    images = evaluate.render(components, [scenes.DEMO_PROMPT], "ddim", steps=2)
    assert images[0].size == (model.NATIVE_SIZE, model.NATIVE_SIZE)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unet-steps", "0"], "--unet-steps must be at least 1"),
        (["--polish-lr", "0"], "--polish-lr must be positive"),
        (["--polish-min-snr", "-1"], "must not be negative"),
        (["--noise-offset", "-0.1"], "must not be negative"),
    ],
)
def test_training_command_rejects_bad_flags(tmp_path: Path, flags: list[str], message: str):
    cmd = [sys.executable, "-m", "mlc.engine.shapes.train", str(tmp_path), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_saved_checkpoint_polished_later_equals_the_one_command(tmp_path: Path):
    """How the shipped weights were made: a longer run's checkpoint at step N, polished with
    --resume, is bit for bit what one command with --unet-steps N trains (tiny models)."""
    import torch
    from safetensors.torch import load_file

    from mlc.engine.shapes import train

    threads = torch.get_num_threads()
    base = train.Recipe(seed=5, unet_batch=4, overrides=train.TINY, warmup=1, polish_steps=2)
    quiet = {"evaluate": False, "log": lambda _: None}
    try:
        train.train(tmp_path / "one", replace(base, unet_steps=3), **quiet)
        train.train(tmp_path / "long", replace(base, unet_steps=6, save_every=3), **quiet)
        saved = tmp_path / "long" / "steps" / "00003" / f"{model.NAME}.safetensors"
        train.train(tmp_path / "resumed", replace(base, unet_steps=3), resume=saved, **quiet)
    finally:
        torch.set_num_threads(threads)
    one = load_file(str(tmp_path / "one" / f"{model.NAME}.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / f"{model.NAME}.safetensors"))
    longer = load_file(str(tmp_path / "long" / f"{model.NAME}.safetensors"))
    assert one.keys() == resumed.keys()
    assert all(torch.equal(one[k], resumed[k]) for k in one)
    assert not all(torch.equal(one[k], longer[k]) for k in one)  # the comparison can fail
