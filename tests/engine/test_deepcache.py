"""DeepCache: exact when interval=1, a faithful full pass, a real shallow pass, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from mlc.engine.deepcache import DeepCache

from .conftest import SD_LIKE_UNET


@pytest.fixture
def unet(components):
    return components.unet


@pytest.fixture(scope="module")
def sd_like():
    from diffusers.models import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**SD_LIKE_UNET).eval()


def inputs(unet, step: int, *, hw: tuple[int, int] = (4, 4), batch: int = 2):
    """CFG-style inputs for one step: fresh latents, a timestep, text embeddings."""
    gen = torch.Generator().manual_seed(100 + step)
    c = unet.config
    sample = torch.randn((batch, c.in_channels, *hw), generator=gen)
    cond = torch.randn((batch, 77, c.cross_attention_dim), generator=gen)
    return sample, torch.tensor(900 - 150 * step), cond


def exact(unet, sample, t, cond) -> torch.Tensor:
    return unet(sample, t, encoder_hidden_states=cond, return_dict=False)[0]


class Counter:
    """Counts forward calls of named submodules through forward hooks."""

    def __init__(self, unet, names: list[str]):
        self.counts = dict.fromkeys(names, 0)
        self.handles = [
            unet.get_submodule(name).register_forward_hook(self._hook(name)) for name in names
        ]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] += 1

        return hook

    def take(self) -> dict[str, int]:
        out, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
def test_interval_one_is_bit_identical(unet, hw):
    dc = DeepCache(unet, interval=1)
    for step in range(4):
        sample, t, cond = inputs(unet, step, hw=hw)
        out = dc(sample, t, cond)
        assert isinstance(out, tuple) and len(out) == 1
        assert torch.equal(out[0], exact(unet, sample, t, cond))
    assert (dc.full_calls, dc.shallow_calls) == (4, 0)


@torch.no_grad()
@pytest.mark.parametrize("branch", [0, 1, 2, 3])
def test_full_pass_is_faithful_on_sd_v1_layout(sd_like, branch):
    dc = DeepCache(sd_like, interval=2, branch=branch)
    for step in (0, 2):  # the full calls of interval 2
        sample, t, cond = inputs(sd_like, step, hw=(8, 8))
        dc(sample, t, cond)  # shallow call in between uses the step-0 cache
        dc.reset()
        assert torch.equal(dc(sample, t, cond)[0], exact(sd_like, sample, t, cond))
    # odd latent size: upsample sizes are forwarded as diffusers does
    dc.reset()
    sample, t, cond = inputs(sd_like, 1, hw=(9, 7))
    assert torch.equal(dc(sample, t, cond)[0], exact(sd_like, sample, t, cond))


@torch.no_grad()
@pytest.mark.parametrize("branch", [0, 1, 2, 3])
def test_shallow_call_on_same_input_reproduces_full(sd_like, branch):
    """Same input as the caching call: the cached deep feature is exact, so is the output."""
    dc = DeepCache(sd_like, interval=2, branch=branch)
    sample, t, cond = inputs(sd_like, 0, hw=(8, 8))
    full = dc(sample, t, cond)[0]
    shallow = dc(sample, t, cond)[0]
    assert (dc.full_calls, dc.shallow_calls) == (1, 1)
    assert torch.equal(shallow, full)


@torch.no_grad()
def test_interval_three_schedule_and_skipped_blocks(unet):
    dc = DeepCache(unet, interval=3)
    deep = ["down_blocks.1", "mid_block", "up_blocks.0"]
    shallow = ["conv_in", "down_blocks.0", "up_blocks.1", "conv_out"]
    assert dc.skipped_blocks() == deep
    counter = Counter(unet, deep + shallow)
    try:
        kinds = []
        for step in range(5):
            sample, t, cond = inputs(unet, step)
            before = (dc.full_calls, dc.shallow_calls)
            out = dc(sample, t, cond)[0]
            counts = counter.take()
            ref = exact(unet, sample, t, cond)
            counter.take()
            full = dc.full_calls == before[0] + 1
            kinds.append("full" if full else "shallow")
            assert all(counts[name] == 1 for name in shallow)
            assert all(counts[name] == (1 if full else 0) for name in deep), counts
            assert out.shape == ref.shape and torch.isfinite(out).all()
            if full:
                assert torch.equal(out, ref)
            else:
                assert not torch.allclose(out, ref, atol=1e-4)
    finally:
        counter.close()
    assert kinds == ["full", "shallow", "shallow", "full", "shallow"]
    assert (dc.full_calls, dc.shallow_calls) == (2, 3)


@torch.no_grad()
def test_sd_v1_layout_branch0_skips_all_but_outer_blocks(sd_like):
    dc = DeepCache(sd_like, interval=2)
    assert dc.skipped_blocks() == [
        "down_blocks.1",
        "down_blocks.2",
        "down_blocks.3",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2",
    ]
    names = [f"down_blocks.{i}" for i in range(4)] + ["mid_block"]
    names += [f"up_blocks.{i}" for i in range(4)]
    counter = Counter(sd_like, names)
    try:
        dc(*inputs(sd_like, 0, hw=(8, 8)))
        full_counts = counter.take()
        dc(*inputs(sd_like, 1, hw=(8, 8)))
        shallow_counts = counter.take()
    finally:
        counter.close()
    assert full_counts == dict.fromkeys(names, 1)
    outer = ("down_blocks.0", "up_blocks.3")
    assert shallow_counts == {n: int(n in outer) for n in names}


@torch.no_grad()
def test_reset_makes_next_call_full(unet):
    dc = DeepCache(unet, interval=4)
    dc(*inputs(unet, 0))
    dc(*inputs(unet, 1))
    assert (dc.full_calls, dc.shallow_calls) == (1, 1)
    dc.reset()
    sample, t, cond = inputs(unet, 2)
    assert torch.equal(dc(sample, t, cond)[0], exact(unet, sample, t, cond))
    assert (dc.full_calls, dc.shallow_calls) == (2, 1)  # counters survive reset
    dc(*inputs(unet, 3))
    assert dc.shallow_calls == 2


@torch.no_grad()
def test_shallow_call_with_other_shape_needs_reset(unet):
    dc = DeepCache(unet, interval=2)
    dc(*inputs(unet, 0, batch=2))
    with pytest.raises(RuntimeError, match="reset"):
        dc(*inputs(unet, 1, batch=1))


def test_passthrough_and_return_dict(unet):
    dc = DeepCache(unet, interval=2)
    assert dc.dtype == unet.dtype and dc.device == unet.device and dc.config is unet.config
    with torch.no_grad():
        out = dc(*inputs(unet, 0), return_dict=True)
    assert out.sample.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_bad_interval(unet, interval):
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        DeepCache(unet, interval=interval)


@pytest.mark.parametrize("branch", [-1, 2, 10])
def test_bad_branch(unet, branch):
    with pytest.raises(ValueError, match=r"branch must be an integer in 0\.\.1"):
        DeepCache(unet, interval=2, branch=branch)


@pytest.mark.parametrize(
    "extra",
    [
        {"num_class_embeds": 10},
        {"class_embed_type": "timestep"},
        {"addition_embed_type": "text", "encoder_hid_dim": 16},
        {"encoder_hid_dim": 24, "encoder_hid_dim_type": "text_proj"},
        {"attention_type": "gated"},
    ],
)
def test_unsupported_config(extra):
    from diffusers.models import UNet2DConditionModel

    model = UNet2DConditionModel(**SD_LIKE_UNET, **extra)
    with pytest.raises(ValueError, match="SD v1-style UNets only"):
        DeepCache(model, interval=2)


def test_not_a_unet():
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        DeepCache(torch.nn.Conv2d(4, 4, 1), interval=2)


@torch.no_grad()
def denoise(components, unet, sampler: str, steps: int, before_image=None) -> torch.Tensor:
    """A minimal CFG denoise loop (like generate.Renderer.denoise) with `unet` as the model."""
    from mlc.engine.schedulers import make_scheduler

    scheduler = make_scheduler(sampler, components.schedule)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(7)
    latents = torch.randn((1, 4, 4, 4), generator=gen) * scheduler.init_noise_sigma
    dim = components.unet.config.cross_attention_dim
    cond = torch.randn((2, 77, dim), generator=gen)
    if before_image is not None:
        before_image()
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = unet(model_input, t, encoder_hidden_states=cond, return_dict=False)[0]
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + 7.5 * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_denoise_with_deepcache(components, sampler):
    steps = 8
    plain = denoise(components, components.unet, sampler, steps)

    exact_dc = DeepCache(components.unet, interval=1)
    assert torch.equal(denoise(components, exact_dc, sampler, steps, exact_dc.reset), plain)

    dc = DeepCache(components.unet, interval=3)
    for image in range(2):
        latents = denoise(components, dc, sampler, steps, dc.reset)
        assert latents.shape == plain.shape and torch.isfinite(latents).all()
        full = (image + 1) * math.ceil(steps / 3)
        assert (dc.full_calls, dc.shallow_calls) == (full, (image + 1) * steps - full)
    assert not torch.equal(latents, plain)
