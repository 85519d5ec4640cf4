"""The shapes model's architecture: SD v1's three parts, much narrower.

A UNet2DConditionModel with cross-attention in SD v1's block layout (cross-attention down
blocks, then a plain one; the mirror image going up), an AutoencoderKL with 4 latent
channels that downsamples by 8 like SD's, and a CLIPTextModel over the full CLIP vocabulary
(the bundled tokenizer, 77 tokens). The native size is ``NATIVE_SIZE`` pixels: the UNet's
``sample_size`` times the VAE's factor, both written into the sidecar config.
"""

from __future__ import annotations

from typing import Any

from mlc.engine import offline

offline()

NAME = "mlc-shapes"
"""File stem of the shipped weights: ``weights/mlc-shapes.safetensors`` + ``.config/``."""

VAE_FACTOR = 8
NATIVE_SIZE = 128
"""Pixels per side the model was trained at (UNet sample_size 16 x VAE factor 8)."""
GUIDANCE = 2.5
"""The guidance scale it is judged at and recommends (its config's ``defaults.json``: the
engine's --scale when given none). Higher scales oversaturate it, PLMS first."""

UNET_CONFIG: dict[str, Any] = {
    "sample_size": NATIVE_SIZE // VAE_FACTOR,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    # cross-attention at 8x8 and 4x4 latents (SD v1 also has it at the highest level;
    # here that would double the cost for nothing the prompts need)
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": NATIVE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 16, 32, 32],  # four levels: downsamples by 8, like SD's
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 1,  # one group per norm: see thumbnail.py
    "scaling_factor": 1.0,  # set after training: 1 / std of the latents
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "vocab_size": 49408,  # the real CLIP tokenizer
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
"""Like the random demo's (``mlc.engine.demo``, which imports this module to install the
shipped weights, so the table is not shared) with a wider MLP."""


def build(seed: int, **overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder), freshly initialised from ``seed``, in training mode.

    ``overrides`` may hold ``unet``, ``vae`` or ``text`` dicts that update the configs
    (the trainer's smoke test uses smaller ones).
    """
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**UNET_CONFIG, **overrides.get("unet", {})})
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**{**VAE_CONFIG, **overrides.get("vae", {})})
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, **overrides.get("text", {})}))
    return unet, vae, text_encoder


def native_size(unet: Any, vae: Any) -> int:
    """Pixels per side: the UNet's sample_size times the VAE's downsampling factor."""
    return int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)


def weights_dir() -> Any:
    """The folder that holds the shipped weights (a ``pathlib.Path``)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "weights"


def shipped_checkpoint() -> Any:
    """The shipped single-file checkpoint (a ``pathlib.Path``; its sidecar is beside it)."""
    return weights_dir() / f"{NAME}.safetensors"
