"""The three SD v1 models of the engine's own (``mlc.engine.nets``), built from their configs
on the meta device, ready to take a state dict's tensors as their own."""

from __future__ import annotations

from typing import Any

import torch

from mlc.engine.nets.clip import TextEncoder
from mlc.engine.nets.unet import UNet
from mlc.engine.nets.vae import VAE


def build(configs: dict[str, dict[str, Any]]) -> tuple[UNet, VAE, TextEncoder]:
    """(unet, vae, text_encoder) for CONFIGS (diffusers' UNet and VAE configs, transformers'
    CLIP text config, keyed ``unet``, ``vae``, ``text_encoder``) on the meta device: no
    memory, no initialisation. ValueError naming the first setting they do not implement."""
    with torch.device("meta"):
        return (
            UNet(configs["unet"]),
            VAE(configs["vae"]),
            TextEncoder(configs["text_encoder"]),
        )
