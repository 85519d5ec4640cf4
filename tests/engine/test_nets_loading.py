"""Loading picks the engine's own models (``mlc.engine.nets``), from a single file or from
the converted cache, and the images are the libraries' pixel for pixel; configs they do not
implement, and ``MLC_NATIVE_MODELS=0``, get diffusers' and transformers' classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlc.engine import checkpoint, loading
from mlc.engine.command import main
from mlc.engine.convcache import _models_from_state, converted_cache
from mlc.engine.export import to_original_state_dict
from mlc.engine.nets.clip import TextEncoder
from mlc.engine.nets.tokenizer import ClipTokenizer
from mlc.engine.nets.unet import UNet
from mlc.engine.nets.vae import VAE


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "0")
    return tmp_path


def test_single_file_loads_as_our_own_models(tiny, monkeypatch) -> None:
    """Without a cache entry: the original layout's weights straight into our models (no
    diffusers converter), the same tensors as diffusers' conversion gives its classes."""
    ours = loading.load(tiny.ckpt)
    assert isinstance(ours.unet, UNet) and isinstance(ours.text_encoder, TextEncoder)
    monkeypatch.setenv("MLC_NATIVE_MODELS", "0")
    theirs = loading.load(tiny.ckpt)
    assert type(theirs.unet).__name__ == "UNet2DConditionModel"
    for a, b in ((ours.unet, theirs.unet), (ours.vae, theirs.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    sa, sb = ours.text_encoder.state_dict(), theirs.text_encoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and len(sa) == len(sb)
    assert ours.model_hash == theirs.model_hash


def test_a_single_file_that_does_not_fit_gets_diffusers_conversion(tiny, tmp_path) -> None:
    """A weight missing, a config beyond ours, a config file missing: ours refuse (None),
    and the loader converts with diffusers as it always did; nothing half-built is used."""
    from mlc.engine.nets.original import from_original, read_configs

    sd = checkpoint.read_checkpoint(tiny.ckpt)
    parts = {n: checkpoint.resolve(tiny.ckpt).part(n) for n in ("unet", "vae", "text_encoder")}
    configs = read_configs(parts)
    assert from_original(sd, configs, torch.float32) is not None
    broken = {k: v for k, v in sd.items() if not k.endswith("out.2.weight")}  # UNet conv_out
    assert from_original(broken, configs, torch.float32) is None
    assert (
        from_original(
            sd, {**configs, "unet": {**configs["unet"], "upcast_attention": True}}, torch.float32
        )
        is None
    )
    assert read_configs({**parts, "vae": tmp_path}) is None  # no config.json there


def test_cached_model_loads_as_our_own_models(tiny, cache_env, monkeypatch) -> None:
    monkeypatch.setenv("MLC_NATIVE_MODELS", "0")
    first = loading.load(tiny.safetensors)  # converts and writes the cache (libraries' classes)
    assert type(first.unet).__name__ == "UNet2DConditionModel"
    monkeypatch.setenv("MLC_NATIVE_MODELS", "1")
    again = loading.load(tiny.safetensors)
    assert isinstance(again.unet, UNet) and isinstance(again.vae, VAE)
    assert isinstance(again.text_encoder, TextEncoder)
    assert isinstance(again.tokenizer, ClipTokenizer)
    assert again.vae_scale_factor == first.vae_scale_factor == 8
    assert again.latent_channels == first.latent_channels
    assert again.model_hash == first.model_hash
    for ours, theirs in ((again.unet, first.unet), (again.vae, first.vae)):
        assert not ours.training and not any(p.requires_grad for p in ours.parameters())
        assert ours.state_dict().keys() == theirs.state_dict().keys()
    # exporting to the original layout gives the same file contents from either
    ours = to_original_state_dict(again.unet, again.vae, again.text_encoder)
    theirs = to_original_state_dict(first.unet, first.vae, first.text_encoder)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    monkeypatch.setenv("MLC_NATIVE_MODELS", "0")
    library = loading.load(tiny.safetensors)
    assert type(library.unet).__name__ == "UNet2DConditionModel"
    assert type(library.tokenizer).__name__ == "CLIPTokenizer"


def _images(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((folder / "samples").glob("*.png"))]


@pytest.mark.parametrize("sampler", ["plms", "euler_a"])
def test_our_models_draw_the_libraries_pixels(tiny, cache_env, monkeypatch, sampler) -> None:
    """The whole engine, one shot, from the cache: the same PNGs with either set of classes."""
    loading.load(tiny.safetensors)  # the cache entry
    args = ["--ckpt", str(tiny.safetensors), "--prompt", "a red cube, blue background"]
    args += ["--H", "64", "--W", "64", "--ddim_steps", "3", "--n_samples", "2", "--n_iter", "1"]
    args += ["--seed", "7", "--skip_grid", "--sampler", sampler]
    out = {}
    for native in ("1", "0"):
        monkeypatch.setenv("MLC_NATIVE_MODELS", native)
        out[native] = cache_env / f"out{native}"
        assert main([*args, "--outdir", str(out[native])]) == 0
    ours, theirs = _images(out["1"]), _images(out["0"])
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(ours[0], ours[1])  # two seeds, two pictures


def test_a_config_beyond_ours_gets_the_library_classes(tiny, cache_env) -> None:
    loading.load(tiny.safetensors)
    entry = converted_cache(checkpoint.resolve(tiny.safetensors), torch.float32)
    state, configs = entry.read()
    assert isinstance(_models_from_state(state, configs)[0], UNet)
    configs["unet"]["upcast_attention"] = True  # same weights, a setting ours do not implement
    unet, vae, text = _models_from_state(state, configs)
    assert type(unet).__name__ == "UNet2DConditionModel"
    assert unet.config.upcast_attention is True
    assert isinstance(vae, VAE) is False  # one set of classes for the three


def test_an_older_torch_gets_the_library_classes(tiny, monkeypatch) -> None:
    """torch 2.0 (the AIME 2.0.1 image) lacks what our models use: the loader knows."""
    from mlc.engine.nets import models

    assert models.available()
    monkeypatch.setattr(torch, "__version__", "2.0.1+cu118")
    assert not models.available()
    assert type(loading.load(tiny.ckpt).unet).__name__ == "UNet2DConditionModel"


def test_cache_entries_load_across_text_encoder_layouts(tiny, cache_env) -> None:
    """transformers 4 names the text encoder's weights under ``text_model.``, 5 and ours do
    not: an entry written in either layout loads into either set of classes."""
    from mlc.engine.checkpoint import text_keys_for

    loading.load(tiny.safetensors)
    entry = converted_cache(checkpoint.resolve(tiny.safetensors), torch.float32)
    state, configs = entry.read()
    prefixed = {
        (
            f"text_encoder.text_model.{k[len('text_encoder.') :]}"
            if k.startswith("text_encoder.")
            else k
        ): v
        for k, v in state.items()
    }
    for native in (True, False):
        unet, vae, text = _models_from_state(prefixed, configs, native=native)
        assert isinstance(text, TextEncoder) is native
        assert torch.equal(
            text.state_dict()["final_layer_norm.weight"],
            state["text_encoder.final_layer_norm.weight"],
        )
    weights = {"a.weight": 1}
    assert text_keys_for(text, {"text_model.a.weight": 1}) == weights
