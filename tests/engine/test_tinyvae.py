"""mlc.engine.tinyvae: TAESD (AutoencoderTiny) load, decode, errors, offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlc.engine import EngineError
from mlc.engine import tinyvae as tv


@pytest.fixture(scope="module")
def taesd_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random TAESD as a single file and as a repo-layout folder (same seed)."""
    root = tmp_path_factory.mktemp("taesd")
    single = tv.build_random_tiny_vae(root / "taesd.safetensors", seed=3)
    folder = tv.build_random_tiny_vae(root / "repo", seed=3)
    return {"single": single, "folder": folder}


@pytest.fixture(scope="module")
def tiny_vae(taesd_files):
    return tv.load_tiny_vae(taesd_files["single"])


def one_line_error(path: Path, match: str) -> str:
    with pytest.raises(EngineError, match=match) as err:
        tv.load_tiny_vae(path)
    assert isinstance(err.value, tv.TinyVaeError)
    text = str(err.value)
    assert "\n" not in text
    return text


# -- the bundled config ----------------------------------------------------------------------


def test_bundled_config_is_sd_v1_taesd():
    cfg = json.loads((tv.TAESD_CONFIG_DIR / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderTiny"
    assert cfg["encoder_block_out_channels"] == [64, 64, 64, 64]
    assert cfg["decoder_block_out_channels"] == [64, 64, 64, 64]
    assert cfg["num_encoder_blocks"] == [1, 3, 3, 3]
    assert cfg["num_decoder_blocks"] == [3, 3, 3, 1]
    assert cfg["latent_channels"] == 4 and cfg["in_channels"] == 3 and cfg["out_channels"] == 3
    assert cfg["upsampling_scaling_factor"] == 2
    assert cfg["scaling_factor"] == 1.0
    assert cfg["act_fn"] == "relu"
    assert (cfg["latent_magnitude"], cfg["latent_shift"]) == (3, 0.5)


# -- building and loading --------------------------------------------------------------------


def test_random_builds_are_deterministic_and_both_layouts_hold_the_same_weights(
    taesd_files, tmp_path
):
    folder = taesd_files["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", tv.WEIGHTS_NAME]
    same = (folder / tv.WEIGHTS_NAME).read_bytes()
    assert taesd_files["single"].read_bytes() == same
    assert tv.build_random_tiny_vae(tmp_path / "a.safetensors", seed=4).read_bytes() != same
    before = torch.random.get_rng_state()
    tv.build_random_tiny_vae(tmp_path / "b.safetensors", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched


@pytest.mark.parametrize("layout", ["single", "folder"])
def test_loads_from_both_layouts(taesd_files, layout):
    from diffusers.models import AutoencoderTiny
    from safetensors.torch import load_file

    model = tv.load_tiny_vae(str(taesd_files[layout]))
    assert isinstance(model, AutoencoderTiny)
    assert not model.training
    assert not any(p.requires_grad or p.is_meta for p in model.parameters())
    assert model.dtype == torch.float32
    weights = taesd_files["single"]
    stored = load_file(str(weights))
    loaded = model.state_dict()
    assert set(stored) == set(loaded)
    assert all(torch.equal(stored[k], loaded[k]) for k in stored)
    assert sum(p.numel() for p in model.parameters()) == 2_445_063  # TAESD's size


def test_folder_without_config_uses_the_bundled_one(taesd_files, tmp_path):
    folder = tmp_path / "noconfig"
    folder.mkdir()
    (folder / tv.WEIGHTS_NAME).write_bytes((taesd_files["folder"] / tv.WEIGHTS_NAME).read_bytes())
    model = tv.load_tiny_vae(folder)
    assert list(model.config.num_decoder_blocks) == [3, 3, 3, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_is_respected(taesd_files, dtype):
    model = tv.load_tiny_vae(taesd_files["folder"], dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    image = tv.decode(model, torch.randn(1, 4, 2, 3))
    assert image.dtype == dtype and image.shape == (1, 3, 16, 24)


# -- decoding --------------------------------------------------------------------------------


def test_decode_shape_range_and_to_pil(tiny_vae):
    from mlc.engine.generate import to_pil

    latents = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    raw = tiny_vae.decode(latents, return_dict=False)[0]
    image = tv.decode(tiny_vae, latents)
    assert image.shape == (2, 3, 40, 56)
    assert torch.isfinite(image).all()
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert torch.equal(image, raw.clamp(-1, 1))  # TAESD's scaling_factor is 1.0: no rescale
    assert not image.requires_grad
    pictures = to_pil(image)
    assert [p.size for p in pictures] == [(56, 40), (56, 40)]


def test_decode_follows_the_configs_scaling_factor(taesd_files, tmp_path, tiny_vae):
    folder = tmp_path / "scaled"
    folder.mkdir()
    cfg = json.loads((tv.TAESD_CONFIG_DIR / "config.json").read_text())
    cfg["scaling_factor"] = 2.0
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / tv.WEIGHTS_NAME).write_bytes(taesd_files["single"].read_bytes())
    scaled = tv.load_tiny_vae(folder)
    latents = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    expected = tiny_vae.decode(latents / 2.0, return_dict=False)[0].clamp(-1, 1)
    torch.testing.assert_close(tv.decode(scaled, latents), expected)


def test_decode_rejects_wrong_latent_channels(tiny_vae):
    with pytest.raises(EngineError, match=r"\[N, 4, h, w\]"):
        tv.decode(tiny_vae, torch.zeros(1, 16, 4, 4))


# -- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    text = one_line_error(tmp_path / "taesd.safetensors", "tiny VAE not found")
    assert str(tmp_path / "taesd.safetensors") in text


def test_folder_without_weights(tmp_path):
    one_line_error(tmp_path, f"holds no {tv.WEIGHTS_NAME}")


def test_sd_checkpoint_is_refused(tiny):
    one_line_error(tiny.safetensors, "is a Stable Diffusion checkpoint")
    one_line_error(tiny.ckpt, "not a .safetensors file")


def test_truncated_file(taesd_files, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(taesd_files["single"].read_bytes()[:5000])
    one_line_error(cut, "not a valid safetensors file")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    one_line_error(empty, "not a valid safetensors file")


def test_original_decoder_only_file_is_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "taesd_decoder.safetensors"
    save_file({"1.weight": torch.zeros(64, 4, 3, 3), "1.bias": torch.zeros(64)}, str(path))
    one_line_error(path, "decoder-only or original-format TAESD")


def test_weights_that_do_not_match_the_config(taesd_files, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(taesd_files["single"]))
    partial = tmp_path / "partial.safetensors"
    save_file(
        {k: v for k, v in state.items() if not k.startswith("decoder.layers.2.")}, str(partial)
    )
    one_line_error(partial, "does not match.*missing")
    wrong = tmp_path / "wrong.safetensors"
    state["decoder.layers.0.bias"] = torch.zeros(32)
    save_file(state, str(wrong))
    text = one_line_error(wrong, "does not match")
    assert "decoder.layers.0.bias" in text


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read tiny VAE config"),
        ('{"_class_name": "AutoencoderKL"}', "config for AutoencoderKL, not AutoencoderTiny"),
        ('{"num_decoder_blocks": [3, 3]}', "invalid tiny VAE config"),
    ],
    ids=["bad-json", "other-class", "bad-values"],
)
def test_bad_folder_config(taesd_files, tmp_path, content, match):
    (tmp_path / "config.json").write_text(content)
    (tmp_path / tv.WEIGHTS_NAME).write_bytes(taesd_files["single"].read_bytes())
    one_line_error(tmp_path, match)


# -- offline ---------------------------------------------------------------------------------


def test_loading_never_touches_the_network(taesd_files, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for path in taesd_files.values():
        tv.load_tiny_vae(path)


def test_import_sets_hub_offline():
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    code = "import os, mlc.engine.tinyvae; print(os.environ['HF_HUB_OFFLINE'])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
