"""Generate the held-out prompts with the engine's own code and let the judge score them.

The images are made exactly as ``mlc-txt2img`` makes them (``loading.load`` for the
checkpoint, ``generate.Renderer`` for the denoise loop), batched: one UNet call per step for
all prompts of a sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlc.engine import offline
from mlc.engine.shapes import judge, model, scenes

offline()

SAMPLERS: tuple[str, ...] = ("ddim", "plms", "euler_a", "dpmpp_2m_karras")
STEPS = 20
SCALE = model.GUIDANCE  # the guidance the model recommends (at SD's 7.5 it oversaturates)
SEED = 1000  # prompt k is drawn with seed SEED + k


def render(
    components: Any,
    prompts: list[str],
    sampler: str,
    *,
    steps: int = STEPS,
    scale: float = SCALE,
    seed: int = SEED,
    size: int | None = None,
    batched: bool = True,
) -> list[Any]:
    """PIL images for ``prompts`` (prompt k with seed ``seed + k``), at the native size."""
    from mlc.engine.generate import ImageSpec, Renderer, Settings

    size = size or native_size(components)
    settings = Settings(
        sampler=sampler, steps=steps, scale=scale, height=size, width=size, batched=batched
    )
    specs = [ImageSpec(k, p, "", seed + k) for k, p in enumerate(prompts)]
    return [g.image for g in Renderer(components).render(specs, settings)]


def native_size(components: Any) -> int:
    """The model's native size in pixels (UNet sample_size x VAE factor)."""
    return int(components.unet.config.sample_size) * components.vae_scale_factor


def evaluate(
    components: Any,
    combos: list[tuple[str, str, str]] | None = None,
    samplers: tuple[str, ...] = SAMPLERS,
    steps: int = STEPS,
) -> dict[str, tuple[float, list[judge.Verdict]]]:
    """Per sampler: the share of ``combos`` (default HELD_OUT) judged correct, and verdicts."""
    combos = list(combos if combos is not None else scenes.HELD_OUT)
    prompts = [scenes.caption(*t) for t in combos]
    return {
        sampler: judge.score(render(components, prompts, sampler, steps=steps), combos)
        for sampler in samplers
    }


def evaluate_checkpoint(path: str | Path, **kwargs: Any) -> dict[str, float]:
    """Load a checkpoint through the engine and score it: {sampler: share correct}."""
    from mlc.engine.loading import load

    results = evaluate(load(path), **kwargs)
    return {sampler: share for sampler, (share, _) in results.items()}
