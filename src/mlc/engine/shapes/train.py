"""Train the shapes model from a seed, on the CPU, and write it in the original layout.

``python -m mlc.engine.shapes.train OUT [--seed N] [--threads N]`` sets the autoencoder up
as an exact thumbnail autoencoder (``thumbnail.py``; ``--vae-steps`` would fine-tune its
decoder, 0 by default), then trains the UNet and the text encoder together on the latents
(SD v1's noise schedule, epsilon prediction, min-SNR weighting, captions dropped to "" 10%
of the time so classifier-free guidance works, constant learning rate after a warmup, an EMA
of the weights), then polishes the EMA weights with the plain loss (``--polish-steps``).
With a constant learning rate, a checkpoint written by ``--save-every`` at step N is what
``--unet-steps N`` trains, and ``--resume`` polishes such a checkpoint.
It writes ``OUT/mlc-shapes.safetensors`` (fp16,
``model.diffusion_model.*`` / ``first_stage_model.*`` / ``cond_stage_model.transformer.*``),
its sidecar config folder ``OUT/mlc-shapes.config/`` and ``OUT/mlc-shapes.json`` (recipe,
times, losses and, unless ``--no-eval``, the judge's scores on the held-out prompts).

Every random draw comes from the seed: the same command on the same machine and thread
count trains the same weights.

Why one module of ~570 lines: it is the whole recipe in the order it runs (data, losses, the
two training phases, the polish, export, the command line); split, a reader who retrains the
model would follow it across files for no reuse (nothing else imports its parts).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mlc.engine import offline

offline()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlc.engine.shapes import model as shapes_model  # noqa: E402
from mlc.engine.shapes import scenes  # noqa: E402
from mlc.engine.shapes.thumbnail import LOGVAR_EXACT  # noqa: E402


@dataclass
class Recipe:
    """Everything that decides the trained weights (written into the record)."""

    seed: int = 0
    threads: int = 1  # one thread: on a shared 2-core machine two threads spin-wait and crawl
    vae_steps: int = 0  # decoder fine-tuning steps after the thumbnail start (0: it is exact)
    vae_batch: int = 8
    vae_lr: float = 1e-4
    latent_noise: float = 0.05  # extra noise on the decoder's latents while it trains
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 100
    uncond_rate: float = 0.1  # share of captions replaced by "" (for guidance)
    min_snr: float = 5.0  # min-SNR loss weighting (0: plain MSE)
    noise_offset: float = 0.0  # offset noise: this times one normal draw per image and channel
    ema: float = 0.995
    save_every: int = 0  # also write the EMA weights every this many steps (0: only at the end)
    # the polish: from the EMA weights (rounded to fp16, as exported), more steps at half the
    # learning rate, a fresh optimizer and EMA, with offset noise: a 16x16 latent's noise has a
    # per-channel mean of about 1/16, as large as the picture's own share at the first steps,
    # and a model never shown such shifts reads them as the background's colour (black came
    # out brown, white pink); offset noise teaches it the whole-image colour from the prompt
    polish_steps: int = 1600
    polish_lr: float = 5e-4
    polish_min_snr: float = 5.0  # the polish's loss weighting (0: plain MSE)
    polish_noise_offset: float = 0.1  # the polish's offset noise
    overrides: dict[str, Any] = field(default_factory=dict)  # config changes (smoke tests)


# -- data -------------------------------------------------------------------------------------


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def latent_means(batch: list[scenes.Scene]) -> torch.Tensor:
    """The encoder's latent means for these scenes, without running it: its block means
    (channels 0-2) and zero (channel 3). ``thumbnail_init(exact_encoder=True)`` makes the
    encoder compute exactly this (the tests check it)."""
    rgb = pixels(scenes.thumbnail_batch(batch))
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids exactly as the engine makes them: padded to 77 with the end token."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def load_tokenizer() -> Any:
    """The bundled CLIP tokenizer."""
    from transformers import CLIPTokenizer

    from mlc.engine import CONFIG_DIR

    return CLIPTokenizer.from_pretrained(str(CONFIG_DIR / "tokenizer"), local_files_only=True)


# -- schedules --------------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then constant: a run of N steps is the first N steps of a longer one
    (so a checkpoint written at step N is what ``--unet-steps N`` trains)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak


class Losses:
    """Mean loss per window of steps, for the record."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.points: list[tuple[int, float]] = []
        self._sum, self._n = 0.0, 0

    def add(self, step: int, value: float) -> None:
        self._sum += value
        self._n += 1
        if (step + 1) % self.every == 0:
            self.flush(step + 1)

    def flush(self, step: int) -> None:
        if self._n:
            self.points.append((step, round(self._sum / self._n, 5)))
        self._sum, self._n = 0.0, 0

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None


# -- phase 1: the autoencoder -----------------------------------------------------------------


def train_vae(vae: Any, recipe: Recipe, rng: np.random.Generator, log: Callable) -> Losses:
    """Start the autoencoder as an exact thumbnail encoder and a block-repeating decoder
    (``thumbnail.thumbnail_init``), then fine-tune the decoder alone (L1 on the drawn images)
    on slightly noisy latents, 64x64-pixel crops; the encoder stays as it is."""
    from mlc.engine.shapes.thumbnail import freeze_anchors, thumbnail_init

    thumbnail_init(vae, exact_encoder=True)
    vae.requires_grad_(False)
    vae.post_quant_conv.requires_grad_(True)
    vae.decoder.requires_grad_(True)
    hooks = freeze_anchors(vae)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.vae_lr, weight_decay=0.0)
    losses = Losses(max(recipe.vae_steps // 10, 1))
    gen = torch.Generator().manual_seed(recipe.seed + 10)
    combos = scenes.train_combos()
    crop = min(CROP_CELLS, scenes.GRID)
    vae.train()
    for step in range(recipe.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.vae_steps, recipe.vae_lr, recipe.warmup)
        batch = scenes.random_scenes(rng, recipe.vae_batch, combos)
        oy, ox = (int(v) for v in rng.integers(0, scenes.GRID - crop + 1, 2))
        z = latent_means(batch)[:, :, oy : oy + crop, ox : ox + crop]
        c = scenes.CELL
        x = pixels(scenes.draw_batch(batch))[
            :, :, oy * c : (oy + crop) * c, ox * c : (ox + crop) * c
        ]
        z = z + recipe.latent_noise * torch.randn(z.shape, generator=gen)
        loss = (vae.decode(z).sample - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.add(step, float(loss.detach()))
        if (step + 1) % losses.every == 0:
            log(f"vae {step + 1}/{recipe.vae_steps} loss {losses.last:.4f}")
    losses.flush(recipe.vae_steps)
    for hook in hooks:
        hook.remove()
    vae.eval().requires_grad_(False)
    return losses


CROP_CELLS = 8  # the decoder trains on crops of this many latent cells per side


@torch.no_grad()
def latent_scale(rng: np.random.Generator, n: int = 512) -> float:
    """1 / std of the latents on ``n`` training scenes (SD v1's is 0.18215)."""
    z = latent_means(scenes.random_scenes(rng, n))
    return float(f"{1.0 / float(z.std()):.5f}")


# -- phase 2: UNet + text encoder on latents -------------------------------------------------


class Ema:
    """An exponential moving average of some modules' parameters."""

    def __init__(self, modules: list[Any], decay: float) -> None:
        self.decay = decay
        self.copies = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for live, avg in zip(self.modules, self.copies, strict=True):
            for p, q in zip(live.parameters(), avg.parameters(), strict=True):
                q.lerp_(p, 1 - decay)


def train_unet(
    unet: Any,
    text_encoder: Any,
    vae: Any,
    tokenizer: Any,
    recipe: Recipe,
    rng: np.random.Generator,
    log: Callable,
    on_step: Callable[[int, Ema, Losses], None] | None = None,
) -> tuple[Losses, Ema]:
    """Denoising training of the UNet and the text encoder together; returns the EMA.

    Every step draws fresh scenes; their latents are posterior samples (the encoder's mean,
    see ``latent_means``, plus its standard deviation times noise), scaled like SD's."""
    from diffusers import DDPMScheduler

    from mlc.engine.samplers import BASE_SCHEDULE

    schedule = DDPMScheduler(**{k: v for k, v in BASE_SCHEDULE.items() if k != "steps_offset"})
    alphas = schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    scale = float(vae.config.scaling_factor)
    posterior_std = math.exp(0.5 * LOGVAR_EXACT)
    empty = tokenize(tokenizer, [""])[0]
    captions: dict[str, torch.Tensor] = {}
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.0)
    ema = Ema([unet, text_encoder], recipe.ema)
    gen = torch.Generator().manual_seed(recipe.seed + 20)
    combos = scenes.train_combos()
    losses = Losses(max(recipe.unet_steps // 40, 1))
    n = recipe.unet_batch
    for step in range(recipe.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.unet_steps, recipe.unet_lr, recipe.warmup)
        batch = scenes.random_scenes(rng, n, combos)
        means = latent_means(batch)
        latents = (means + posterior_std * torch.randn(means.shape, generator=gen)) * scale
        for s in batch:
            if s.caption not in captions:
                captions[s.caption] = tokenize(tokenizer, [s.caption])[0]
        ids = torch.stack([captions[s.caption] for s in batch])
        ids[torch.rand(n, generator=gen) < recipe.uncond_rate] = empty
        noise = torch.randn(latents.shape, generator=gen)
        if recipe.noise_offset:  # a whole-image shift per channel: flat colours can be learnt
            noise += recipe.noise_offset * torch.randn(n, noise.shape[1], 1, 1, generator=gen)
        t = torch.randint(0, len(alphas), (n,), generator=gen)
        noisy = schedule.add_noise(latents, noise, t)
        cond = text_encoder(ids)[0]
        eps = unet(noisy, t, encoder_hidden_states=cond).sample
        per = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        if recipe.min_snr > 0:
            per = per * (snr[t].clamp(max=recipe.min_snr) / snr[t])
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        losses.add(step, float(loss.detach()))
        if (step + 1) % losses.every == 0:
            log(f"unet {step + 1}/{recipe.unet_steps} loss {losses.last:.4f}")
        if on_step is not None:
            on_step(step + 1, ema, losses)
    losses.flush(recipe.unet_steps)
    return losses, ema


# -- writing ----------------------------------------------------------------------------------


def export(unet: Any, vae: Any, text_encoder: Any, dest: Path, name: str) -> Path:
    """Write the models as ``dest/<name>.safetensors`` (fp16, original layout) + sidecar."""
    from mlc.engine.checkpoint import DEFAULTS_FILE
    from mlc.engine.demo import sidecar_dir, write_config_folder
    from mlc.engine.export import save_checkpoint, to_original_state_dict

    path = dest / f"{name}.safetensors"
    config = write_config_folder(sidecar_dir(path), unet, vae, text_encoder)
    defaults = {"scale": shapes_model.GUIDANCE}  # what the engine uses when given no --scale
    (config / DEFAULTS_FILE).write_text(json.dumps(defaults) + "\n", encoding="utf-8")
    state = to_original_state_dict(unet, vae, text_encoder)
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    return save_checkpoint(state, path)


def save_step(ema: Ema, vae: Any, losses: Losses, dest: Path, name: str) -> Path:
    """The EMA weights so far, with the losses so far beside them (``<name>.json``)."""
    path = export(ema.copies[0], vae, ema.copies[1], dest, name)
    path.with_suffix(".json").write_text(json.dumps(losses.points) + "\n", encoding="utf-8")
    return path


def polish(
    unet: Any,
    text_encoder: Any,
    vae: Any,
    tokenizer: Any,
    recipe: Recipe,
    log: Callable[[str], None],
    dest: Path,
    name: str,
    started: float,
) -> tuple[Any, Any, list[tuple[int, float]]]:
    """The second phase: from the first one's EMA weights rounded to fp16 (exactly what a
    checkpoint written at that step holds), ``recipe.polish_steps`` more steps with the plain
    loss, fresh draws from the seed, a fresh optimizer and EMA. Returns the new EMA weights."""
    unet, text_encoder = (
        copy.deepcopy(m).to(torch.float16).to(torch.float32).requires_grad_(True)
        for m in (unet, text_encoder)
    )
    phase = replace(
        recipe,
        seed=recipe.seed + 1000,
        unet_steps=recipe.polish_steps,
        unet_lr=recipe.polish_lr,
        min_snr=recipe.polish_min_snr,
        noise_offset=recipe.polish_noise_offset,
        warmup=min(recipe.warmup, max(recipe.polish_steps // 10, 1)),
    )

    def snapshot(step: int, ema: Ema, losses: Losses) -> None:
        if recipe.save_every and step % recipe.save_every == 0 and step < phase.unet_steps:
            where = save_step(ema, vae, losses, dest / "steps" / f"polish-{step:05d}", name)
            log(f"polish step {step}: wrote {where} after {time.time() - started:.0f} s")

    def tagged(message: str) -> None:
        log(f"polish: {message}")

    rng = np.random.default_rng(phase.seed)
    losses, ema = train_unet(
        unet, text_encoder, vae, tokenizer, phase, rng, tagged, on_step=snapshot
    )
    return ema.copies[0], ema.copies[1], losses.points


def machine() -> dict[str, Any]:
    """Where the training ran (for the record)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def train(
    dest: str | Path,
    recipe: Recipe,
    *,
    name: str = shapes_model.NAME,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
    resume: str | Path | None = None,
) -> dict[str, Any]:
    """Train, export and (optionally) judge the model; returns the record it writes."""
    import diffusers
    import transformers

    from mlc.engine.modelimports import quiet_libraries

    quiet_libraries()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    started = time.time()
    record: dict[str, Any] = {
        "model": name,
        "recipe": asdict(recipe),
        "machine_at_start": machine(),
        "versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__},
    }
    rng = np.random.default_rng(recipe.seed)
    unet, vae, text_encoder = shapes_model.build(recipe.seed, **recipe.overrides)
    tokenizer = load_tokenizer()

    t0 = time.time()
    vae_losses = train_vae(vae, recipe, rng, log)
    vae.register_to_config(scaling_factor=latent_scale(rng))
    t1 = time.time()

    def snapshot(step: int, ema: Ema, losses: Losses) -> None:
        if recipe.save_every and step % recipe.save_every == 0 and step < recipe.unet_steps:
            where = save_step(ema, vae, losses, dest / "steps" / f"{step:05d}", name)
            log(f"step {step}: wrote {where} after {time.time() - started:.0f} s")

    if resume is None:
        unet_losses, ema = train_unet(
            unet, text_encoder, vae, tokenizer, recipe, rng, log, on_step=snapshot
        )
        ema_unet, ema_text = ema.copies
        unet_points = unet_losses.points
    else:  # the first phase's result, as written at step recipe.unet_steps
        from mlc.engine.loading import load

        loaded = load(resume, native=False)  # diffusers' classes: trained and saved here
        ema_unet, vae, ema_text = loaded.unet, loaded.vae, loaded.text_encoder
        unet_points = json.loads(Path(resume).with_suffix(".json").read_text("utf-8"))
        record["resumed_from"] = str(resume)
    polish_points: list[tuple[int, float]] = []
    if recipe.polish_steps:
        ema_unet, ema_text, polish_points = polish(
            ema_unet, ema_text, vae, tokenizer, recipe, log, dest, name, started
        )
    t2 = time.time()
    path = export(ema_unet, vae, ema_text, dest, name)
    record.update(
        {
            "native_size": shapes_model.native_size(unet, vae),
            "scaling_factor": vae.config.scaling_factor,
            "parameters": {
                "unet": sum(p.numel() for p in unet.parameters()),
                "vae": sum(p.numel() for p in vae.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
            },
            "seconds": {"vae": round(t1 - t0, 1), "unet": round(t2 - t1, 1)},
            "losses": {"vae": vae_losses.points, "unet": unet_points, "polish": polish_points},
            "file": path.name,
            "file_bytes": path.stat().st_size,
        }
    )
    log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) after {t2 - started:.0f} s")
    if evaluate:
        from mlc.engine.shapes.evaluate import evaluate_checkpoint

        t3 = time.time()
        scores = evaluate_checkpoint(path)
        record["held_out_scores"] = {k: round(v, 4) for k, v in scores.items()}
        record["seconds"]["evaluate"] = round(time.time() - t3, 1)
        log(
            "held-out prompts judged correct: "
            + ", ".join(f"{k} {v:.0%}" for k, v in scores.items())
        )
    record["seconds"]["total"] = round(time.time() - started, 1)
    record["machine_at_end"] = machine()
    (dest / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m mlc.engine.shapes.train OUT``: train the shapes model into OUT."""
    defaults = Recipe()
    parser = argparse.ArgumentParser(
        prog="python -m mlc.engine.shapes.train",
        description="Train the tiny shapes text-to-image model (SD v1 architecture) on the CPU.",
    )
    parser.add_argument("dest", help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--vae-batch", type=int, default=defaults.vae_batch)
    parser.add_argument("--unet-batch", type=int, default=defaults.unet_batch)
    parser.add_argument(
        "--save-every", type=int, default=0, help="also write the weights every N UNet steps"
    )
    parser.add_argument(
        "--name", default=shapes_model.NAME, help="file stem (default: %(default)s)"
    )
    parser.add_argument("--polish-steps", type=int, default=defaults.polish_steps)
    parser.add_argument("--polish-lr", type=float, default=defaults.polish_lr)
    parser.add_argument("--noise-offset", type=float, default=defaults.noise_offset)
    parser.add_argument("--polish-noise-offset", type=float, default=defaults.polish_noise_offset)
    parser.add_argument(
        "--polish-min-snr",
        type=float,
        default=defaults.polish_min_snr,
        help="min-SNR weighting in the polish (0: plain loss; default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        help="skip the first phase: polish a checkpoint that --save-every wrote at step "
        "--unet-steps (what the full run would polish)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip judging the result")
    parser.add_argument(
        "--tiny", action="store_true", help="much smaller models (a smoke test of the trainer)"
    )
    args = parser.parse_args(argv)
    for flag in ("threads", "unet_steps", "vae_batch", "unet_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    counts = ("vae_steps", "save_every", "polish_steps")
    weights = ("polish_min_snr", "noise_offset", "polish_noise_offset")
    for flag in counts + weights:
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative")
    if args.polish_lr <= 0:
        parser.error("--polish-lr must be positive")
    recipe = Recipe(
        seed=args.seed,
        threads=args.threads,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        vae_batch=args.vae_batch,
        unet_batch=args.unet_batch,
        save_every=args.save_every,
        polish_steps=args.polish_steps,
        polish_lr=args.polish_lr,
        polish_min_snr=args.polish_min_snr,
        noise_offset=args.noise_offset,
        polish_noise_offset=args.polish_noise_offset,
        warmup=min(defaults.warmup, max(args.unet_steps // 10, 1)),
        overrides=TINY if args.tiny else {},
    )

    begun = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - begun:5.0f} s] {message}", file=sys.stderr, flush=True)

    try:
        evaluate = not args.no_eval
        train(args.dest, recipe, name=args.name, evaluate=evaluate, log=log, resume=args.resume)
    except OSError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    return 0


TINY: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 32, 32],
        "attention_head_dim": 4,
        "cross_attention_dim": 16,
    },
    "vae": {"block_out_channels": [12, 12, 12, 12]},
    "text": {"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16},
}
"""Config changes for a smoke test: the same layout, a fraction of the width."""


if __name__ == "__main__":
    raise SystemExit(main())
