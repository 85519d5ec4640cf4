"""Prompts and seeds -> latents -> images: the denoise loop.

Every image has its own seed and its own CPU ``torch.Generator``: its starting noise and
any step noise (ancestral samplers, DDIM eta > 0) come from that generator only. By
default each image is denoised on its own (the UNet sees the CFG pair ``[uncond, cond]``,
batch 2), exactly as diffusers' ``StableDiffusionPipeline`` does for one image, so an
image is the same whatever the batch size, ``n_iter`` or its place in the run. With
``batched=True`` a whole batch shares one UNet call per step: faster on GPUs, and equal to
the single-image result only up to float rounding (about 1e-6, at most 1/255 per pixel).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlc.engine.cudagraphs import steps_for, unsupported
from mlc.engine.schedulers import make_scheduler


@dataclass(frozen=True)
class ImageSpec:
    """One image to make: its place in the run, its prompts and its seed."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int


@dataclass(frozen=True)
class Settings:
    """The sampling settings shared by every image of a run."""

    sampler: str = "ddim"
    steps: int = 50
    scale: float = 7.5
    eta: float = 0.0
    height: int = 512
    width: int = 512
    batched: bool = False
    # opt-in speed modes that change pixels (docs/benchmarks.md lists their cost)
    deepcache: int = 0  # full UNet every N steps, cached deep features between (0: off)
    tome: float = 0.0  # token merging ratio in the highest-resolution blocks (0: off)
    tiny_vae: bool = False  # decode with TAESD (Renderer.tiny_vae) instead of the full VAE
    # where the latents and the sampler's math live: "float32" (the engine's default, see
    # docs/benchmarks.md "The GPU contract with diffusers") or "model": the model's dtype, as
    # diffusers' fp16 pipeline keeps them (same pixels as StableDiffusionPipeline in fp16)
    latents: str = "float32"
    cuda_graphs: bool = True  # replay each step's UNet call from a CUDA graph on CUDA


@dataclass
class Generated:
    """An image and how long it took (its share of the batch when batched)."""

    spec: ImageSpec
    image: Any  # PIL.Image.Image
    seconds: float
    vae_fallback: bool = False


def plan(
    batches: Sequence[Sequence[str]],
    *,
    n_iter: int,
    seed: int,
    negative_prompt: str = "",
    fixed_code: bool = False,
) -> list[list[ImageSpec]]:
    """The classic loop order (``for n in n_iter: for batch in batches``) with per-image seeds.

    Image k (0-based, over the whole run) gets seed ``seed + k``; with ``fixed_code`` every
    image gets ``seed``.
    """
    out: list[list[ImageSpec]] = []
    k = 0
    for _ in range(n_iter):
        for batch in batches:
            specs = []
            for prompt in batch:
                specs.append(
                    ImageSpec(k, prompt, negative_prompt, seed if fixed_code else seed + k)
                )
                k += 1
            out.append(specs)
    return out


def initial_noise(seed: int, shape: tuple[int, ...], generator: torch.Generator | None = None):
    """The starting noise of one image: ``torch.randn`` from a CPU generator seeded ``seed``."""
    gen = generator or torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=gen, dtype=torch.float32)


class Renderer:
    """Runs the denoise loop on loaded components (see loading.Components)."""

    def __init__(
        self,
        components: Any,
        device: str | torch.device = "cpu",
        dtype: Any = None,
        *,
        tiny_vae: Any = None,
        offload: Any = None,
        steps: Any = None,
    ):
        self.c = components
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.tiny_vae = tiny_vae  # AutoencoderTiny for Settings.tiny_vae (mlc.engine.tinyvae)
        self.offload = offload  # mlc.engine.lowvram.Offload: models visit the GPU one at a time
        # the UNet + CFG part of each step: a CUDA graph per shape on CUDA, eager elsewhere
        # (mlc.engine.cudagraphs.GraphedStep; the loaded UNet's own unless STEPS is given)
        self.steps = steps
        self._embeds: dict[str, torch.Tensor] = {}
        self._vae32: Any = None
        self.first_step_at: float | None = None  # time.time() when the first UNet call began

    def _on_device(self, model: Any) -> Any:
        return self.offload.use(model) if self.offload is not None else contextlib.nullcontext()

    # -- text -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """CLIP last hidden state for one prompt, ``[1, 77, dim]`` (cached per run)."""
        if text not in self._embeds:
            tok = self.c.tokenizer
            ids = tok(
                [text],
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            with self._on_device(self.c.text_encoder):
                out = self.c.text_encoder(ids.to(self.device), attention_mask=None)
            self._embeds[text] = out[0].to(self.dtype)
        return self._embeds[text]

    # -- sampling ---------------------------------------------------------------------
    def latent_shape(self, settings: Settings) -> tuple[int, int, int]:
        """``(C, H/f, W/f)`` for this model."""
        f = self.c.vae_scale_factor
        return (self.c.latent_channels, settings.height // f, settings.width // f)

    @torch.no_grad()
    def denoise(
        self,
        specs: Sequence[ImageSpec],
        settings: Settings,
        generators: list[torch.Generator],
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The sampling loop for one batch; returns the final latents (fp32, or the model's
        dtype with ``settings.latents == "model"``)."""
        scheduler = make_scheduler(settings.sampler, self.c.schedule)
        scheduler.set_timesteps(settings.steps, device=self.device)
        shape = self.latent_shape(settings)
        noise = torch.cat(
            [initial_noise(s.seed, shape, g) for s, g in zip(specs, generators, strict=True)]
        )
        latents = noise.to(self.device, self.latents_dtype(settings)) * scheduler.init_noise_sigma

        cond = torch.cat([self.encode(s.prompt) for s in specs])
        cfg = settings.scale != 1.0
        if cfg:
            uncond = torch.cat([self.encode(s.negative_prompt) for s in specs])
            cond = torch.cat([uncond, cond])

        accepted = set(inspect.signature(scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in accepted:
            extra["eta"] = settings.eta
        if "generator" in accepted:
            extra["generator"] = generators

        timesteps = scheduler.timesteps
        with self._on_device(self.c.unet), self._speed_modes(settings) as unet:
            # the CFG pair through the UNet and the guidance combine (cudagraphs.guided_eps),
            # replayed from a CUDA graph where one can be used
            model = self._graphed().bind(
                unet,
                cond,
                scale=settings.scale,
                cfg=cfg,
                dtype=self.dtype,
                device=self.device,
                why_eager="off"
                if not settings.cuda_graphs
                else unsupported(
                    deepcache=settings.deepcache,
                    tome=settings.tome,
                    low_vram=self.offload is not None,
                ),
            )
            for i, t in enumerate(timesteps):
                if self.first_step_at is None:
                    self.first_step_at = time.time()
                eps = model(scheduler.scale_model_input(latents, t), t)
                latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        return latents

    def latents_dtype(self, settings: Settings) -> torch.dtype:
        """The latents' dtype: fp32, or the model's (``settings.latents == "model"``; the
        noise is drawn in fp32 and cast, which equals drawing it in fp16 on the CPU)."""
        return self.dtype if settings.latents == "model" else torch.float32

    def _graphed(self) -> Any:
        """The GraphedStep of this renderer's UNet (its notes said once in this run)."""
        if self.steps is None:
            self.steps = steps_for(self.c.unet)
            self.steps.begin_run()
        return self.steps

    @contextlib.contextmanager
    def _speed_modes(self, settings: Settings) -> Iterator[Any]:
        """The UNet to call for one image/batch: the model itself, or with token merging
        patched in (removed again afterwards: a session's model stays exact) and/or wrapped
        in DeepCache."""
        unet = self.c.unet
        if settings.tome > 0:
            from mlc.engine import tome

            tome.apply(unet, settings.tome)
        try:
            if settings.deepcache > 1:
                from mlc.engine.deepcache import DeepCache

                yield DeepCache(unet, settings.deepcache)
            else:
                yield unet
        finally:
            if settings.tome > 0:
                tome.remove(unet)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiny: bool = False) -> tuple[list[Any], bool]:
        """Latents -> PIL images; redo in fp32 when fp16 gives NaN/inf or all-black output.
        TINY decodes with the tiny VAE (a speed mode: fast, approximate)."""
        if tiny:
            from mlc.engine.tinyvae import decode as tiny_decode

            if self.tiny_vae is None:
                raise ValueError("Settings.tiny_vae needs a Renderer with tiny_vae")
            with self._on_device(self.tiny_vae):
                return to_pil(tiny_decode(self.tiny_vae, latents)), False
        vae = self.c.vae
        scaled = latents / vae.config.scaling_factor
        with self._on_device(vae):
            image = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        fallback = False
        if vae.dtype != torch.float32 and _bad_decode(image):
            if self._vae32 is None:
                import copy

                if self.offload is not None:
                    self.offload.release()  # copy on the host, not next to it on the GPU
                self._vae32 = copy.deepcopy(vae).to(torch.float32)
            with self._on_device(self._vae32):
                image = self._vae32.decode(scaled.float(), return_dict=False)[0]
            fallback = True
        return to_pil(image), fallback

    def render_iter(
        self,
        specs: Sequence[ImageSpec],
        settings: Settings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Iterator[Generated]:
        """The images of one batch, each yielded as soon as it is decoded (per image, or the
        whole batch at once when ``settings.batched``). ON_STEP(i, n) runs after every
        denoising step: raising there stops the batch between two steps."""
        groups = [list(specs)] if settings.batched else [[s] for s in specs]
        for group in groups:
            start = time.perf_counter()
            generators = [torch.Generator("cpu").manual_seed(s.seed) for s in group]
            latents = self.denoise(group, settings, generators, on_step)
            images, fallback = self.decode(latents, tiny=settings.tiny_vae)
            share = (time.perf_counter() - start) / len(group)
            for s, im in zip(group, images, strict=True):
                yield Generated(s, im, share, fallback)

    def render(
        self,
        specs: Sequence[ImageSpec],
        settings: Settings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Generated]:
        """Make the images of one batch (per image, or as one batch when ``settings.batched``)."""
        return list(self.render_iter(specs, settings, on_step))

    def run(
        self,
        batches: Sequence[Sequence[ImageSpec]],
        settings: Settings,
        on_image: Callable[[Generated], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Iterator[Generated]:
        """Render every batch in order, yielding each image as soon as it is decoded (the
        caller saves it before the next one is made)."""
        for specs in batches:
            for result in self.render_iter(specs, settings, on_step):
                if on_image is not None:
                    on_image(result)
                yield result


def _bad_decode(image: torch.Tensor) -> bool:
    return bool((~torch.isfinite(image)).any()) or bool((image <= -1.0).all())


def to_pil(image: torch.Tensor) -> list[Any]:
    """VAE output in [-1, 1] -> PIL images, rounded as diffusers does."""
    from PIL import Image

    image = (image * 0.5 + 0.5).clamp(0, 1)
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()
    array = (array * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in array]
