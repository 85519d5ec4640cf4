"""diffusers components -> an original (CompVis/LDM) single-file state dict.

The inverse of diffusers' single-file converters, for any SD-v1-shaped UNet/VAE
(any number of levels and layers), so tests, ``mlc setup demo`` and the benchmark
can write ``.ckpt`` / ``.safetensors`` files in the layout of
``v1-5-pruned-emaonly.ckpt``: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP = {"conv_norm_out": "norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
_VAE_ATTN = [
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
]


def _rename(rest: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unet_key(key: str, layers: int) -> str:
    """One diffusers UNet key -> its LDM name (without prefix)."""
    parts = key.split(".")
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> .0.op.*
            idx = 1 + level * (layers + 1) + layers
            return f"input_blocks.{idx}.0.op." + ".".join(parts[5:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        idx = 1 + level * (layers + 1) + j
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_rename(rest, _UNET_RESNET)}"
        return f"input_blocks.{idx}.1.{rest}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_rename(rest, _UNET_RESNET)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        raise KeyError(key)  # handled by _unet_up_key, which needs the block's shape
    raise KeyError(f"unexpected UNet key {key!r}")


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict -> LDM keys under ``model.diffusion_model.``."""
    layers = int(config["layers_per_block"])
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # the last layer of the level holds the upsampler
                idx = level * (layers + 1) + layers
                slot = 2 if up_has_attn[level] else 1
                new = f"output_blocks.{idx}.{slot}.conv." + ".".join(parts[5:])
            else:
                j, rest = int(parts[3]), ".".join(parts[4:])
                idx = level * (layers + 1) + j
                if kind == "resnets":
                    new = f"output_blocks.{idx}.0.{_rename(rest, _UNET_RESNET)}"
                else:
                    new = f"output_blocks.{idx}.1.{rest}"
        else:
            new = _unet_key(key, layers)
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict -> LDM keys under ``first_stage_model.``."""
    n_up = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            new = key
        else:
            side, sub = parts[0], parts[1]
            rest = ".".join(parts[2:])
            if sub in _VAE_TOP:
                new = f"{side}.{_VAE_TOP[sub]}.{rest}"
            elif sub in ("down_blocks", "up_blocks"):
                level, kind = int(parts[2]), parts[3]
                name, lvl = ("down", level) if sub == "down_blocks" else ("up", n_up - 1 - level)
                if kind == "resnets":
                    j, tail = parts[4], ".".join(parts[5:])
                    tail = tail.replace("conv_shortcut", "nin_shortcut")
                    new = f"{side}.{name}.{lvl}.block.{j}.{tail}"
                else:  # downsamplers.0.conv / upsamplers.0.conv
                    op = "downsample" if kind == "downsamplers" else "upsample"
                    new = f"{side}.{name}.{lvl}.{op}." + ".".join(parts[5:])
            elif sub == "mid_block":
                kind, j = parts[2], int(parts[3])
                tail = ".".join(parts[4:])
                if kind == "resnets":
                    tail = tail.replace("conv_shortcut", "nin_shortcut")
                    new = f"{side}.mid.block_{j + 1}.{tail}"
                else:
                    new = f"{side}.mid.attn_1.{_rename(tail, _VAE_ATTN)}"
                    if value.ndim == 2:  # linear -> 1x1 conv, as in the original
                        value = value[:, :, None, None]
            else:
                raise KeyError(f"unexpected VAE key {key!r}")
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A transformers CLIPTextModel state dict -> ``cond_stage_model.transformer.text_model.*``."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else "text_model." + key
        out[TEXT_PREFIX + name] = value
    return out


def to_original_state_dict(unet: Any, vae: Any, text_encoder: Any) -> dict[str, torch.Tensor]:
    """The three diffusers/transformers models -> one original single-file state dict."""
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    sd.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    sd.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state_dict`` as ``.safetensors`` (flat) or ``.ckpt`` (``{"state_dict": ...}``).

    The file is written beside its destination and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(tmp), metadata={"format": "pt"})
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": state_dict}, tmp)
    else:
        raise ValueError(f"unknown checkpoint suffix {path.suffix!r} (use .ckpt or .safetensors)")
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def export_checkpoint(unet: Any, vae: Any, text_encoder: Any, path: str | Path) -> Path:
    """Export three models to one original-format single-file checkpoint at ``path``."""
    return save_checkpoint(to_original_state_dict(unet, vae, text_encoder), path)
