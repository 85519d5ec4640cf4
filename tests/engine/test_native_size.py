"""A model's native size (its config's UNet sample_size times its VAE's factor) is the default
--H/--W when the user gives none, and the guidance scale it recommends the default --scale;
SD v1 checkpoints and unknown paths keep 512x512 and 7.5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlc.engine.checkpoint import (
    CLASSIC_SCALE,
    CLASSIC_SIZE,
    DEFAULTS_FILE,
    native_size,
    recommended_scale,
    resolve,
)
from mlc.engine.options import parse_args


def _size_of(config: Path) -> int:
    unet = json.loads((config / "unet" / "config.json").read_text())
    vae = json.loads((config / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def test_a_model_whose_config_names_a_size_draws_at_it_by_default(tiny):
    own = _size_of(tiny.config)
    assert own != CLASSIC_SIZE  # the tiny model is small: the default must come from it
    assert native_size(resolve(tiny.safetensors)) == own
    args = parse_args(["--ckpt", str(tiny.safetensors), "--prompt", "x"])
    assert (own, own) == (args.H, args.W)
    args = parse_args(["--ckpt", str(tiny.ckpt), "--prompt", "x", "--H", "96"])
    assert (96, own) == (args.H, args.W)  # a given flag wins; the other keeps the default


def test_sd_v1_checkpoints_and_missing_paths_keep_512(tiny, tmp_path: Path):
    bare = tmp_path / "sd.safetensors"  # no sidecar: the bundled SD v1 config
    shutil.copyfile(tiny.safetensors, bare)
    assert native_size(resolve(bare)) == CLASSIC_SIZE == 512
    args = parse_args(["--ckpt", str(bare), "--prompt", "x"])
    assert (args.H, args.W) == (512, 512)
    args = parse_args(["--ckpt", str(tmp_path / "missing.ckpt"), "--prompt", "x"])
    assert (args.H, args.W) == (512, 512)


def test_config_flag_decides_the_native_size(tiny, tmp_path: Path):
    bare = tmp_path / "m.safetensors"
    shutil.copyfile(tiny.safetensors, bare)
    config = tmp_path / "cfg"
    shutil.copytree(tiny.config, config)
    unet_file = config / "unet" / "config.json"
    unet = json.loads(unet_file.read_text())
    unet["sample_size"] = 12
    unet_file.write_text(json.dumps(unet))
    factor = _size_of(config) // 12
    args = parse_args(["--ckpt", str(bare), "--config", str(config), "--prompt", "x"])
    assert (12 * factor, 12 * factor) == (args.H, args.W)


def test_a_model_may_recommend_its_guidance_scale(tiny, tmp_path: Path):
    """``defaults.json`` in a model's own config folder gives --scale when the user gives
    none; a given --scale wins; SD v1 (the bundled config) and a broken file keep 7.5."""
    model = tmp_path / "m.safetensors"
    shutil.copyfile(tiny.safetensors, model)
    config = tmp_path / "m.config"
    shutil.copytree(tiny.config, config)
    assert parse_args(["--ckpt", str(model), "--prompt", "x"]).scale == CLASSIC_SCALE == 7.5
    (config / DEFAULTS_FILE).write_text(json.dumps({"scale": 2.5}))
    assert recommended_scale(resolve(model)) == 2.5
    assert parse_args(["--ckpt", str(model), "--prompt", "x"]).scale == 2.5
    assert parse_args(["--ckpt", str(model), "--prompt", "x", "--scale", "6"]).scale == 6.0
    (config / DEFAULTS_FILE).write_text("{not json")
    assert parse_args(["--ckpt", str(model), "--prompt", "x"]).scale == 7.5
    bare = tmp_path / "sd.safetensors"
    shutil.copyfile(tiny.safetensors, bare)
    assert parse_args(["--ckpt", str(bare), "--prompt", "x"]).scale == 7.5


def test_the_demo_model_recommends_the_scale_it_is_judged_at(tmp_path: Path):
    from mlc.engine.demo import install_shapes
    from mlc.engine.shapes import evaluate, model

    path = install_shapes(tmp_path, name="demo", fmt="ckpt")
    args = parse_args(["--ckpt", str(path), "--prompt", "x"])
    assert args.scale == model.GUIDANCE == evaluate.SCALE
    assert (args.H, args.W) == (model.NATIVE_SIZE, model.NATIVE_SIZE)
