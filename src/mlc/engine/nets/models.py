"""The three SD v1 models of the engine's own (``mlc.engine.nets``), built from their configs
on the meta device, ready to take a state dict's tensors as their own."""

from __future__ import annotations

from typing import Any

import torch

from mlc.engine.nets.clip import TextEncoder
from mlc.engine.nets.unet import UNet
from mlc.engine.nets.vae import VAE


def available() -> bool:
    """Whether this torch has what the models use (torch 2.1 or later: the ``scale`` of
    ``scaled_dot_product_attention``, load-state pre-hooks); older ones (the AIME 2.0.1
    image) get the libraries' classes."""
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 1) and hasattr(
        torch.nn.Module, "register_load_state_dict_pre_hook"
    )


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
