"""Every sampler runs; seeds are per image and independent of batching; fp16 VAE fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc.engine.generate import ImageSpec, Renderer, Settings, plan
from mlc.engine.samplers import SAMPLERS, get_sampler
from mlc.engine.schedulers import make_scheduler, scheduler_config

from .conftest import SIZE, STEPS


def _pixels(results) -> list[np.ndarray]:
    return [np.asarray(r.image).astype(np.int16) for r in results]


def _settings(**kw) -> Settings:
    base = {"sampler": "ddim", "steps": STEPS, "height": SIZE, "width": SIZE}
    return Settings(**{**base, **kw})


REQUIRED = [
    "ddim",
    "plms",
    "dpm_solver",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "lms",
    "euler",
    "euler_a",
    "heun",
    "unipc",
]


def test_required_samplers_are_in_the_table():
    assert set(REQUIRED) <= set(SAMPLERS)
    with pytest.raises(ValueError, match="choose one of: ddim, plms"):
        get_sampler("k_euler")


def test_sampler_configs_follow_the_mapping_table():
    plms = scheduler_config("plms")
    assert plms["skip_prk_steps"] and plms["steps_offset"] == 1 and not plms["set_alpha_to_one"]
    ddim = scheduler_config("ddim")
    assert ddim["timestep_spacing"] == "leading" and not ddim["set_alpha_to_one"]
    dpm = scheduler_config("dpm_solver")
    assert dpm["algorithm_type"] == "dpmsolver++" and dpm["final_sigmas_type"] == "sigma_min"
    assert scheduler_config("dpmpp_2m_karras")["use_karras_sigmas"] is True
    assert type(make_scheduler("euler_a")).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(make_scheduler("plms")).__name__ == "PNDMScheduler"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs(renderer: Renderer, name: str):
    specs = plan([["a red cube"]], n_iter=1, seed=1)[0]
    (result,) = renderer.render(specs, _settings(sampler=name))
    assert result.image.size == (SIZE, SIZE) and result.image.mode == "RGB"
    assert np.asarray(result.image).std() > 0


def test_same_seed_same_image_different_seed_differs(renderer: Renderer):
    s = _settings(sampler="euler_a")
    a = _pixels(renderer.render([ImageSpec(0, "a cat", "", 5)], s))[0]
    b = _pixels(renderer.render([ImageSpec(0, "a cat", "", 5)], s))[0]
    c = _pixels(renderer.render([ImageSpec(0, "a cat", "", 6)], s))[0]
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 0.7), ("euler_a", 0.0)])
def test_image_k_does_not_depend_on_batching(renderer: Renderer, sampler: str, eta: float):
    """Image k of a 2x3 run equals a lone run with seed S+k, pixel for pixel."""
    s = _settings(sampler=sampler, eta=eta)
    run = plan([["a cat", "a dog", "a cow"]], n_iter=2, seed=100)
    assert [sp.seed for b in run for sp in b] == list(range(100, 106))
    together = [r for batch in run for r in renderer.render(batch, s)]
    for k, result in enumerate(together):
        alone = renderer.render(plan([[result.spec.prompt]], n_iter=1, seed=100 + k)[0], s)
        assert np.array_equal(_pixels([result])[0], _pixels(alone)[0]), k


def test_batched_mode_matches_within_one_level(renderer: Renderer):
    specs = plan([["a cat", "a dog", "a cow"]], n_iter=1, seed=7)[0]
    single = _pixels(renderer.render(specs, _settings(sampler="euler_a")))
    batched = _pixels(renderer.render(specs, _settings(sampler="euler_a", batched=True)))
    for a, b in zip(single, batched, strict=True):
        assert np.abs(a - b).max() <= 1


def test_fixed_code_starts_every_image_from_seed_s(renderer: Renderer):
    run = plan([["a cat", "a cat"]], n_iter=2, seed=9, fixed_code=True)
    assert {sp.seed for b in run for sp in b} == {9}
    images = [p for b in run for p in _pixels(renderer.render(b, _settings()))]
    assert all(np.array_equal(images[0], im) for im in images[1:])


def test_negative_prompt_changes_the_image(renderer: Renderer):
    s = _settings()
    a = _pixels(renderer.render([ImageSpec(0, "a cat", "", 3)], s))[0]
    b = _pixels(renderer.render([ImageSpec(0, "a cat", "blurry", 3)], s))[0]
    assert not np.array_equal(a, b)


def test_fp16_vae_nan_falls_back_to_fp32(components):
    """A VAE whose fp16 decode gives NaN is retried in fp32."""

    class NanInHalf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
            self.config = type("C", (), {"scaling_factor": 0.18215})()

        @property
        def dtype(self):
            return self.w.dtype

        def decode(self, z, return_dict=False):
            img = torch.zeros(z.shape[0], 3, 8, 8, dtype=self.w.dtype)
            if self.w.dtype == torch.float16:
                img[:] = float("nan")
            return (img,)

    class Fake:
        vae = NanInHalf()

    r = Renderer(Fake())
    images, fallback = r.decode(torch.zeros(2, 4, 1, 1))
    assert fallback and len(images) == 2
    assert np.asarray(images[0]).tolist()[0][0] == [128, 128, 128]


def test_fp16_path_runs_and_stays_close(tiny, renderer: Renderer):
    """The fp16 (GPU autocast) code path, exercised on CPU with the tiny model."""
    from mlc.engine.loading import load

    half = Renderer(load(tiny.safetensors, dtype=torch.float16), "cpu", torch.float16)
    assert half.c.unet.dtype == torch.float16
    specs = plan([["a cat"]], n_iter=1, seed=1)[0]
    s = _settings(sampler="euler_a")
    a = _pixels(half.render(specs, s))[0]
    b = _pixels(renderer.render(specs, s))[0]
    assert np.abs(a - b).max() <= 3
