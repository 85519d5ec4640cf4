"""The engine's own UNet and VAE (``mlc.engine.nets``) against diffusers' classes: the same
weights' names, the same numbers bit for bit, the same hooks for DeepCache and token
merging, and a clear refusal of configs they do not implement."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models import AutoencoderKL, UNet2DConditionModel

from mlc.engine import CONFIG_DIR
from mlc.engine.demo import UNET_CONFIG, VAE_CONFIG
from mlc.engine.nets.unet import UNet, check_config
from mlc.engine.nets.vae import VAE

SMALL_UNET = {
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "sample_size": 8,
}
"""SD v1's layout (three cross-attention levels and a plain one), small."""


def _pair(cls_ref, cls_mine, config, seed=0):
    """A diffusers model with random (not default-initialised) weights, and ours with them."""
    torch.manual_seed(seed)
    ref = cls_ref(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)  # zero-initialised outputs would hide a wrong path
    mine = cls_mine(dict(ref.config)).eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    return ref, mine


@pytest.mark.parametrize("config", [SMALL_UNET, UNET_CONFIG], ids=["sd-layout", "demo"])
@pytest.mark.parametrize("timestep", [torch.tensor(500), 999, torch.tensor([10, 20]), 3.5])
def test_unet_is_bit_identical_to_diffusers(config, timestep) -> None:
    ref, mine = _pair(UNet2DConditionModel, UNet, config)
    dim = ref.config.cross_attention_dim
    x, cond = torch.randn(2, 4, 16, 24), torch.randn(2, 7, dim)
    with torch.no_grad():
        want = ref(x, timestep, encoder_hidden_states=cond, return_dict=False)[0]
        got = mine(x, timestep, encoder_hidden_states=cond, return_dict=False)[0]
    assert torch.equal(want, got)
    assert want.abs().max() > 0


def test_unet_odd_sizes_and_return_dict_as_diffusers() -> None:
    """A latent not divisible by the UNet's total upsampling passes each up block its
    skip's size (``upsample_size``); ``return_dict=True`` gives ``.sample``."""
    ref, mine = _pair(UNet2DConditionModel, UNet, SMALL_UNET, seed=1)
    x, cond = torch.randn(1, 4, 20, 12), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.equal(ref(x, 10, cond).sample, mine(x, 10, cond).sample)


def test_unet_bf16_is_bit_identical() -> None:
    ref, mine = _pair(UNet2DConditionModel, UNet, SMALL_UNET, seed=2)
    ref, mine = ref.to(torch.bfloat16), mine.to(torch.bfloat16)
    x, cond = torch.randn(1, 4, 16, 16, dtype=torch.bfloat16), torch.randn(1, 7, 32)
    with torch.no_grad():
        want = ref(x, 500, cond.to(torch.bfloat16)).sample
        got = mine(x, 500, cond.to(torch.bfloat16)).sample
    assert got.dtype == torch.bfloat16 and torch.equal(want, got)


@pytest.mark.parametrize(
    "config", [VAE_CONFIG, {**VAE_CONFIG, "block_out_channels": [16, 32, 32, 64]}]
)
def test_vae_decode_and_encode_are_bit_identical(config) -> None:
    cfg = {**config, "norm_num_groups": 8}
    ref, mine = _pair(AutoencoderKL, VAE, cfg, seed=3)
    z = torch.randn(2, 4, 8, 8)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(
            ref.decode(z, return_dict=False)[0], mine.decode(z, return_dict=False)[0]
        )
        assert torch.equal(ref.decode(z).sample, mine.decode(z).sample)
        want, got = ref.encode(image).latent_dist, mine.encode(image).latent_dist
        for field in ("parameters", "mean", "std", "var", "logvar"):
            assert torch.equal(getattr(want, field), getattr(got, field)), field
        assert torch.equal(want.mode(), got.mode())
        draws = [d.sample(torch.Generator().manual_seed(3)) for d in (want, got)]
        assert torch.equal(*draws)
    assert mine.config.scaling_factor == ref.config.scaling_factor


@pytest.mark.parametrize(
    ("cls_ref", "cls_mine", "part"),
    [(UNet2DConditionModel, UNet, "unet"), (AutoencoderKL, VAE, "vae")],
)
def test_full_size_models_have_diffusers_weight_names_and_shapes(cls_ref, cls_mine, part) -> None:
    """SD v1's own configs, built on the meta device (no memory): every weight's name and
    shape is diffusers', so a converted cache entry loads as it is."""
    config = json.loads((CONFIG_DIR / part / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        ref, mine = cls_ref.from_config(config), cls_mine(config)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mine.state_dict().items()} == shapes
    assert len(shapes) > 200


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"use_linear_projection": True}, "use_linear_projection"),
        ({"upcast_attention": True}, "upcast_attention"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"addition_embed_type": "text_time"}, "addition_embed_type"),
        ({"transformer_layers_per_block": [1, 2, 2, 1]}, "transformer_layers_per_block"),
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4}, "down blocks"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"only_cross_attention": [False, True, False, False]}, "only_cross_attention"),
    ],
)
def test_configs_beyond_sd_v1_are_refused_by_name(change, word) -> None:
    with pytest.raises(ValueError, match=word):
        check_config({**SMALL_UNET, **change})
    check_config(SMALL_UNET)  # and SD v1's own is accepted
    check_config({**SMALL_UNET, "only_cross_attention": [False] * 4, "attention_head_dim": [4] * 4})


def test_vae_beyond_sd_v1_is_refused() -> None:
    with pytest.raises(ValueError, match="latents_mean"):
        VAE({**VAE_CONFIG, "latents_mean": [0.0] * 4})
    with pytest.raises(ValueError, match="use_quant_conv"):
        VAE({**VAE_CONFIG, "use_quant_conv": False})


def test_deepcache_drives_our_unet_as_diffusers() -> None:
    """DeepCache re-implements the UNet's forward through its blocks' calls: on our UNet it
    gives what it gives on diffusers', full calls and shallow ones."""
    from mlc.engine.deepcache import DeepCache

    ref, mine = _pair(UNet2DConditionModel, UNet, SMALL_UNET, seed=4)
    x, cond = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32)
    outs = []
    for unet in (ref, mine):
        wrapped = DeepCache(unet, interval=2, branch=1)
        with torch.no_grad():
            outs.append([wrapped(x, t, cond, return_dict=False)[0] for t in (900, 800, 700)])
        assert wrapped.shallow_calls == 1
    for want, got in zip(*outs, strict=True):
        assert torch.equal(want, got)


def test_token_merging_on_our_unet_as_on_diffusers() -> None:
    """Token merging patches the transformer blocks of either UNet alike (same blocks, same
    numbers), and is removed cleanly."""
    from mlc.engine import tome

    ref, mine = _pair(UNet2DConditionModel, UNet, SMALL_UNET, seed=5)
    x, cond = torch.randn(1, 4, 32, 32), torch.randn(1, 7, 32)
    with torch.no_grad():
        plain = mine(x, 500, cond).sample
    outs, patched = [], []
    for unet in (ref, mine):
        patched.append(tome.apply(unet, ratio=0.5, max_downsample=1))
        with torch.no_grad():
            outs.append(unet(x, 500, cond).sample)
        tome.remove(unet)
    assert patched[0] == patched[1] == 3  # the first level's blocks: one down, two up
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[1], plain)  # merging changed something
    with torch.no_grad():
        assert torch.equal(mine(x, 500, cond).sample, plain)


@pytest.mark.parametrize(
    ("cls_ref", "defaults"),
    [(UNet2DConditionModel, "UNET_DEFAULTS"), (AutoencoderKL, "VAE_DEFAULTS")],
)
def test_defaults_are_diffusers_defaults(cls_ref, defaults) -> None:
    """A config file may leave keys out: ours fill them as diffusers' classes do."""
    import inspect

    from mlc.engine.nets import unet, vae

    ours = getattr(unet if defaults == "UNET_DEFAULTS" else vae, defaults)
    params = inspect.signature(cls_ref.__init__).parameters
    for key, value in ours.items():
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key
