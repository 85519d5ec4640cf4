"""Token merging: exact when nothing merges, fewer tokens in attn1 when it does, reproducible."""

from __future__ import annotations

import copy

import pytest
import torch

from mlc.engine import tome

from .conftest import SD_LIKE_UNET

# 16x16 latents (128 px with the tiny VAE): the tiny UNet's full-resolution level has 256
# tokens (down_blocks.0 and up_blocks.1, 3 transformer blocks), its mid block 8x8 = 64.
LATENT = 16
FULL_RES_BLOCKS = 3


@pytest.fixture
def unet(library_components):
    """A private copy of the tiny UNet: patching it never leaks into other tests."""
    return copy.deepcopy(library_components.unet).eval()


def inputs(unet, height=LATENT, width=LATENT, batch=2, seed=0, timestep=500):
    gen = torch.Generator("cpu").manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, height, width, generator=gen)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=gen)
    return sample, torch.tensor(timestep), context


@torch.no_grad()
def run(unet, sample, timestep, context):
    return unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


def transformer_blocks(unet):
    from diffusers.models.attention import BasicTransformerBlock

    return {n: m for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}


def record_attn1_lengths(unet):
    """{block name: [sequence length attn1 saw, per call]}, via forward pre-hooks on attn1."""
    seen: dict[str, list[int]] = {}
    for name, block in transformer_blocks(unet).items():

        def hook(module, args, kwargs, name=name):
            states = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(name, []).append(states.shape[1])

        block.attn1.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def patched_names(unet):
    return sorted(n for n, b in transformer_blocks(unet).items() if "forward" in b.__dict__)


# -- exactness ----------------------------------------------------------------------------
def test_apply_then_remove_is_bit_identical(unet):
    args = inputs(unet)
    before = run(unet, *args)
    assert tome.apply(unet, 0.5) == FULL_RES_BLOCKS
    assert tome.is_applied(unet)
    assert not torch.equal(run(unet, *args), before)
    tome.remove(unet)
    assert not tome.is_applied(unet)
    assert patched_names(unet) == []
    assert not unet.conv_in._forward_pre_hooks and not unet.time_proj._forward_pre_hooks
    assert torch.equal(run(unet, *args), before)
    tome.remove(unet)  # idempotent
    assert torch.equal(run(unet, *args), before)


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "ff-chunked"])
def test_patched_forward_without_merging_is_exact(unet, chunked):
    """r = int(256 * 0.001) = 0: the replicated block forward alone equals diffusers'."""
    if chunked:
        for block in transformer_blocks(unet).values():
            block.set_chunk_feed_forward(1, dim=0)  # the feed-forward runs per batch element
    args = inputs(unet)
    exact = run(unet, *args)
    assert tome.apply(unet, 0.001) == FULL_RES_BLOCKS
    assert len(patched_names(unet)) == FULL_RES_BLOCKS  # the replacement forward really runs
    seen = record_attn1_lengths(unet)
    out = run(unet, *args)
    assert all(lengths == [LATENT * LATENT] for n, lengths in seen.items() if "mid" not in n)
    assert torch.equal(out, exact)


def test_block_without_a_known_grid_runs_unmerged(unet):
    """Called outside a UNet call (no latent size recorded) a patched block does not merge."""
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    gen = torch.Generator("cpu").manual_seed(1)
    hidden = torch.randn(2, LATENT * LATENT, block.dim, generator=gen)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        exact = block(hidden, encoder_hidden_states=context)
        tome.apply(unet, 0.5)
        assert "forward" in block.__dict__
        assert torch.equal(block(hidden, encoder_hidden_states=context), exact)


# -- merging ------------------------------------------------------------------------------
def test_merging_reduces_attn1_tokens(unet):
    args = inputs(unet)
    exact = run(unet, *args)
    tome.apply(unet, 0.5)
    seen = record_attn1_lengths(unet)
    out = run(unet, *args)
    assert out.shape == exact.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, exact)
    full = LATENT * LATENT
    assert seen == {
        "down_blocks.0.attentions.0.transformer_blocks.0": [full - full // 2],
        "mid_block.attentions.0.transformer_blocks.0": [(LATENT // 2) ** 2],  # not patched
        "up_blocks.1.attentions.0.transformer_blocks.0": [full - full // 2],
        "up_blocks.1.attentions.1.transformer_blocks.0": [full - full // 2],
    }


def test_high_ratio_merges_every_source(unet):
    """At most all sources merge: what is left is one destination per 2x2 window."""
    tome.apply(unet, 0.99)
    seen = record_attn1_lengths(unet)
    out = run(unet, *inputs(unet))
    assert torch.isfinite(out).all()
    assert seen["down_blocks.0.attentions.0.transformer_blocks.0"] == [(LATENT // 2) ** 2]


def test_max_downsample_adds_the_half_resolution_level(unet):
    assert tome.apply(unet, 0.5, max_downsample=2) == FULL_RES_BLOCKS + 1
    seen = record_attn1_lengths(unet)
    run(unet, *inputs(unet))
    mid = (LATENT // 2) ** 2
    assert seen["mid_block.attentions.0.transformer_blocks.0"] == [mid - mid // 2]


@pytest.mark.parametrize("max_downsample", [1, 2, 4, 8])
def test_levels_on_an_sd_like_unet(max_downsample):
    """Each level's blocks are patched by its downsample factor and merge at runtime."""
    from diffusers.models import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD_LIKE_UNET).eval()
    per_level = {1: 5, 2: 5, 4: 5, 8: 1}  # blocks: 2 down + 3 up per level, mid at 1/8
    expected = sum(n for factor, n in per_level.items() if factor <= max_downsample)
    assert tome.apply(unet, 0.5, max_downsample=max_downsample) == expected
    seen = record_attn1_lengths(unet)
    out = run(unet, *inputs(unet, 32, 32))
    assert torch.isfinite(out).all()
    for name, lengths in seen.items():
        factor = 8 if name.startswith("mid") else None
        if factor is None:
            level = int(name.split(".")[1])
            factor = 2**level if name.startswith("down") else 2 ** (3 - level)
        tokens = (32 // factor) ** 2
        merged = factor <= max_downsample
        assert lengths == [tokens - tokens // 2 if merged else tokens], name
    assert len(patched_names(unet)) == expected


@pytest.mark.parametrize("size", [(15, 17), (16, 9), (17, 16)])
def test_latent_sizes_not_multiple_of_two(unet, size):
    """Odd grids: the last row/column has no window, its tokens are sources."""
    height, width = size
    args = inputs(unet, height, width)
    exact = run(unet, *args)
    tome.apply(unet, 0.5)
    seen = record_attn1_lengths(unet)
    out = run(unet, *args)
    assert out.shape == exact.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, exact)
    full = height * width
    assert seen["down_blocks.0.attentions.0.transformer_blocks.0"] == [full - full // 2]


def test_cfg_pair_images_are_merged_independently(unet):
    """The matching is per image: an image's output does not depend on its batch partner."""
    tome.apply(unet, 0.5)
    sample, t, context = inputs(unet, seed=0)
    other, _, other_context = inputs(unet, seed=1)
    first = run(unet, sample, t, context)
    swapped_partner = run(
        unet, torch.cat([sample[:1], other[:1]]), t, torch.cat([context[:1], other_context[:1]])
    )
    alone = run(unet, sample[:1], t, context[:1])
    torch.testing.assert_close(swapped_partner[0], first[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone[0], first[0], rtol=0, atol=1e-5)


# -- determinism --------------------------------------------------------------------------
def test_same_input_gives_identical_output(unet, library_components):
    args = inputs(unet)
    tome.apply(unet, 0.5)
    first = run(unet, *args)
    run(unet, *inputs(unet, seed=3, timestep=10))  # an unrelated call in between
    assert torch.equal(run(unet, *args), first)

    fresh = copy.deepcopy(library_components.unet).eval()  # another process-like fresh patch
    tome.apply(fresh, 0.5)
    assert torch.equal(run(fresh, *args), first)


def test_destination_choice_is_a_fixed_function_of_grid_and_timestep():
    from mlc.engine.tome import _partition

    h, w = 8, 10
    src, dst = _partition(h, w, torch.tensor(500), torch.device("cpu"))
    assert torch.equal(torch.sort(torch.cat([src, dst])).values, torch.arange(h * w))
    assert dst.numel() == (h // 2) * (w // 2)
    rows, cols = dst // w, dst % w
    windows = (rows // 2) * (w // 2) + cols // 2
    assert torch.equal(windows, torch.arange(dst.numel()))  # one destination per window
    again = _partition(h, w, torch.tensor([500, 500]), torch.device("cpu"))
    assert torch.equal(again[1], dst)
    other = _partition(h, w, torch.tensor(480), torch.device("cpu"))[1]
    assert not torch.equal(other, dst)  # varies from step to step
    offsets = (rows % 2) * 2 + cols % 2
    assert len(set(offsets.tolist())) > 1  # not a fixed corner


def test_merge_then_unmerge_restores_tokens_that_equal_their_destination():
    """Tokens constant over each 2x2 window: merged into their own window, and restored."""
    from mlc.engine.tome import _merge, _partition, _unmerge

    h, w, channels = 6, 8, 5
    gen = torch.Generator("cpu").manual_seed(0)
    windows = torch.randn(2, h // 2, w // 2, channels, generator=gen)
    x = windows.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(2, h * w, channels)
    src, dst = _partition(h, w, torch.tensor(7), torch.device("cpu"))
    for r in (1, src.numel() // 2, src.numel()):
        reduced, rows = _merge(x, src, dst, r)
        assert reduced.shape == (2, h * w - r, channels)
        torch.testing.assert_close(_unmerge(reduced, rows), x)


# -- API errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, 0.0, 1.0, float("nan"), True, "0.5", None])
def test_bad_ratio_is_a_value_error(unet, ratio):
    with pytest.raises(ValueError, match="ratio"):
        tome.apply(unet, ratio)
    assert not tome.is_applied(unet)
    assert patched_names(unet) == []


@pytest.mark.parametrize("max_downsample", [0, 3, -1, 1.0])
def test_bad_max_downsample_is_a_value_error(unet, max_downsample):
    with pytest.raises(ValueError, match="max_downsample"):
        tome.apply(unet, 0.5, max_downsample=max_downsample)
    assert not tome.is_applied(unet)


def test_apply_twice_does_not_double_patch(unet, library_components):
    args = inputs(unet)
    exact = run(unet, *args)
    assert tome.apply(unet, 0.3) == FULL_RES_BLOCKS
    assert tome.apply(unet, 0.5) == FULL_RES_BLOCKS
    twice = run(unet, *args)

    once = copy.deepcopy(library_components.unet).eval()
    tome.apply(once, 0.5)
    assert torch.equal(twice, run(once, *args))  # the second settings win, applied once
    assert len(unet.conv_in._forward_pre_hooks) == 1
    assert len(unet.time_proj._forward_pre_hooks) == 1

    tome.remove(unet)  # one remove undoes everything
    assert patched_names(unet) == []
    assert torch.equal(run(unet, *args), exact)


def test_unsupported_block_is_a_value_error_and_patches_nothing(unet):
    block = unet.up_blocks[1].attentions[1].transformer_blocks[0]
    block.norm_type = "ada_norm"
    with pytest.raises(ValueError, match=r"up_blocks\.1\.attentions\.1.*norm_type"):
        tome.apply(unet, 0.5)
    assert not tome.is_applied(unet)
    assert patched_names(unet) == []


def test_foreign_forward_replacement_is_refused(unet):
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    block.forward = block.forward  # someone else's instance-level forward
    with pytest.raises(ValueError, match="already replaced"):
        tome.apply(unet, 0.5)


def test_not_a_unet_is_a_value_error():
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        tome.apply(torch.nn.Linear(2, 2), 0.5)
