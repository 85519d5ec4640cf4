"""The GPU contract with diffusers (issue 12, item 4), exercised in fp16 on the CPU with the
tiny model: with ``Settings.latents == "model"`` the engine keeps its latents and the sampler's
math in the model's dtype, as ``StableDiffusionPipeline`` does in fp16, and gives the same
final latents bit for bit; the default (fp32 latents) is within a few levels of 255.

On a GPU the same holds when both run the same kernels (the engine's ``channels_last`` off,
see docs/benchmarks.md); tests/support/gpu-check.sh measures it there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc.engine.generate import Renderer, Settings, plan
from mlc.engine.schedulers import make_scheduler

from .conftest import SIZE

PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def half(tiny):
    """The tiny model in fp16 as the engine loads it (its own models)."""
    from mlc.engine.loading import load

    return load(tiny.safetensors, dtype=torch.float16)


@pytest.fixture(scope="module")
def half_library(tiny):
    """The same in diffusers' and transformers' classes, for their pipeline."""
    from mlc.engine.loading import load

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLC_NATIVE_MODELS", "0")
        return load(tiny.safetensors, dtype=torch.float16)


def diffusers_fp16(components, sampler: str, steps: int, seed: int, scale: float):
    """StableDiffusionPipeline over the same fp16 models: its final latents and its image."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=make_scheduler(sampler, components.schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    kw = {"height": SIZE, "width": SIZE, "num_inference_steps": steps, "guidance_scale": scale}
    latents = pipe(
        PROMPT, **kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)
    ).images
    image = pipe(PROMPT, **kw, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return latents, np.asarray(image, np.int16)


@pytest.mark.parametrize("sampler", ["plms", "ddim", "euler_a", "dpmpp_2m_karras"])
def test_model_dtype_latents_reproduce_diffusers_fp16_bit_for_bit(half, half_library, sampler):
    steps, seed, scale = 4, 1234, 7.5
    their_latents, their_image = diffusers_fp16(half_library, sampler, steps, seed, scale)
    specs = plan([[PROMPT]], n_iter=1, seed=seed)[0]
    renderer = Renderer(half, "cpu", torch.float16)
    gens = [torch.Generator("cpu").manual_seed(seed)]
    settings = Settings(sampler, steps, scale, 0.0, SIZE, SIZE, latents="model")
    latents = renderer.denoise(specs, settings, gens)
    assert latents.dtype == torch.float16 == their_latents.dtype
    assert torch.equal(latents, their_latents)
    (mine,) = renderer.render(specs, settings)
    assert np.array_equal(np.asarray(mine.image, np.int16), their_image)

    # the default keeps fp32 latents: another rounding path, a few levels apart at most here
    default = renderer.denoise(specs, Settings(sampler, steps, scale, 0.0, SIZE, SIZE), gens)
    assert default.dtype == torch.float32 and not torch.equal(default.half(), their_latents)
    (fp32,) = renderer.render(specs, Settings(sampler, steps, scale, 0.0, SIZE, SIZE))
    assert np.abs(np.asarray(fp32.image, np.int16) - their_image).max() <= 3


def test_model_dtype_latents_are_fp32_for_an_fp32_model(components):
    """On a CPU (fp32) the option changes nothing: the same latents as the default."""
    specs = plan([[PROMPT]], n_iter=1, seed=3)[0]
    renderer = Renderer(components)
    a = renderer.denoise(specs, Settings("plms", 3, 7.5, 0.0, SIZE, SIZE, latents="model"),
                         [torch.Generator("cpu").manual_seed(3)])  # fmt: skip
    b = renderer.denoise(specs, Settings("plms", 3, 7.5, 0.0, SIZE, SIZE),
                         [torch.Generator("cpu").manual_seed(3)])  # fmt: skip
    assert a.dtype == torch.float32 and torch.equal(a, b)
