"""An original (CompVis/LDM) single-file state dict -> the engine's own models.

The same weights diffusers' single-file converter gives its classes, without it: each
model is built on the meta device from its config folder, and each of its weights is
looked up under the original name that ``mlc.engine.export`` (which writes that layout)
gives it; the VAE's attention projections, 1x1 convolutions there, become linear weights.
Anything that does not fit (a missing or misshapen weight, a config beyond SD v1's) gives
None, and the loader converts with diffusers as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlc.engine.checkpoint import TEXT_PREFIX, load_state, text_keys_for, text_weights
from mlc.engine.export import unet_to_ldm, vae_to_ldm
from mlc.engine.nets.models import build


def read_configs(folders: dict[str, Path]) -> dict[str, dict[str, Any]] | None:
    """Each part's ``config.json`` (``unet``, ``vae``, ``text_encoder``), or None when one
    is missing or unreadable."""
    configs = {}
    for name, folder in folders.items():
        try:
            configs[name] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return configs


def from_original(
    sd: dict[str, torch.Tensor], configs: dict[str, dict[str, Any]], dtype: torch.dtype
) -> tuple[Any, Any, Any] | None:
    """(unet, vae, text_encoder) holding SD's weights in DTYPE, or None when they do not
    fit the models CONFIGS describe (the caller then converts with diffusers)."""
    try:
        unet, vae, text_encoder = build(configs)
    except ValueError:
        return None
    unet_names = _names(unet, lambda d: unet_to_ldm(d, dict(unet.config)))
    vae_names = _names(vae, lambda d: vae_to_ldm(d, dict(vae.config)))
    originals = {name: TEXT_PREFIX + name for name in text_weights(sd)}  # ours -> the file's
    renamed = text_keys_for(text_encoder, originals)
    text_names = {key: renamed.get(key, "") for key in text_encoder.state_dict()}
    for model, names in ((unet, unet_names), (vae, vae_names), (text_encoder, text_names)):
        weights = _gather(sd, names, model.state_dict(), dtype)
        if weights is None:
            return None
        load_state(model, weights, strict=True)
    return unet, vae, text_encoder


def _names(model: torch.nn.Module, to_ldm: Callable[[dict[str, Any]], dict[str, Any]]) -> dict:
    """Each weight's name in the model -> its original name."""
    return {key: next(iter(to_ldm({key: meta}))) for key, meta in model.state_dict().items()}


def _gather(
    sd: dict[str, torch.Tensor],
    names: dict[str, str],
    shapes: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> dict[str, torch.Tensor] | None:
    weights = {}
    for key, original in names.items():
        tensor = sd.get(original)
        if tensor is None:
            return None
        want = shapes[key]
        if tensor.ndim == 4 and want.ndim == 2:  # a 1x1 convolution's weight as a linear one
            tensor = tensor[:, :, 0, 0]
        if tuple(tensor.shape) != tuple(want.shape):
            return None
        weights[key] = tensor.to(dtype)
    return weights
