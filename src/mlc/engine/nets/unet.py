"""SD v1's UNet in plain torch, from a diffusers ``UNet2DConditionModel`` config.

The module tree, the weights' names and the blocks' call signatures are those of diffusers'
class for SD v1 configs (``check_config`` says which), so the converted cache's weights load
as they are, and the engine's DeepCache and CUDA-graph steps drive it as they drive
diffusers'. What it leaves out is diffusers' machinery around the arithmetic (mixins for
LoRA, single-file and hub loading, attention processors, hooks), whose imports cost seconds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mlc.engine.nets.layers import (
    Config,
    Downsample,
    Net,
    Output,
    ResnetBlock,
    SpatialTransformer,
    Upsample,
)

UNET_DEFAULTS: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "use_linear_projection": False,
}
"""diffusers' defaults for the keys this class reads (a config may omit them; tested equal
to ``UNet2DConditionModel``'s)."""

SD_V1_ONLY: dict[str, Any] = {
    "act_fn": "silu",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "mid_block_scale_factor": 1,
    "use_linear_projection": False,
    "dual_cross_attention": False,
    "only_cross_attention": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "class_embeddings_concat": False,
    "attention_type": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "transformer_layers_per_block": 1,
}
"""Settings this class implements only in SD v1's form (a config may omit them; a list
setting must hold SD v1's value for every block)."""

MUST_BE_NONE = (
    "class_embed_type",
    "num_class_embeds",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "cross_attention_norm",
    "mid_block_only_cross_attention",
    "reverse_transformer_layers_per_block",
)
"""Settings SD v1 leaves unset."""

UP_KINDS = {"CrossAttnUpBlock2D", "UpBlock2D"}
DOWN_KINDS = {"CrossAttnDownBlock2D", "DownBlock2D"}


def check_config(config: dict[str, Any]) -> None:
    """ValueError naming the first setting of CONFIG this class does not implement."""
    cfg = {**UNET_DEFAULTS, **config}
    for key, want in SD_V1_ONLY.items():
        value = cfg.get(key, want)
        values = value if isinstance(value, list | tuple) else [value]
        if any(v != want for v in values):
            raise ValueError(f"UNet setting {key}={value!r} is not SD v1's ({want!r})")
    for key in MUST_BE_NONE:
        if cfg.get(key) is not None:
            raise ValueError(f"UNet setting {key}={cfg[key]!r} is not used by SD v1")
    if not set(cfg["down_block_types"]) <= DOWN_KINDS:
        raise ValueError(f"UNet down blocks {cfg['down_block_types']} are not SD v1's kinds")
    if not set(cfg["up_block_types"]) <= UP_KINDS:
        raise ValueError(f"UNet up blocks {cfg['up_block_types']} are not SD v1's kinds")
    n = len(cfg["block_out_channels"])
    if len(cfg["down_block_types"]) != n or len(cfg["up_block_types"]) != n:
        raise ValueError("UNet block types and block_out_channels differ in length")


def _per_block(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * n


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float
) -> torch.Tensor:
    """Sinusoidal embedding of TIMESTEPS (``[N]``) in fp32, as DDPM's and diffusers' are."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(
        start=0, end=half, dtype=torch.float32, device=timesteps.device
    )
    exponent = exponent / (half - shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    """The timestep's sinusoidal embedding (no weights)."""

    def __init__(self, channels: int, flip_sin_to_cos: bool, shift: float) -> None:
        super().__init__()
        self.num_channels, self.flip_sin_to_cos, self.shift = channels, flip_sin_to_cos, shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.shift)


class TimestepEmbedding(nn.Module):
    """Linear-SiLU-linear on the sinusoidal embedding."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, sample: torch.Tensor, condition: None = None) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class DownBlock(nn.Module):
    """Resnets (each followed by a transformer when HEADS), then a stride-2 conv unless last."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb: int,
        cfg: dict[str, Any],
        *,
        layers: int,
        heads: int | None,
        downsample: bool,
    ) -> None:
        super().__init__()
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.has_cross_attention = heads is not None
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb, groups, eps)
            for i in range(layers)
        )
        if heads is not None:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_channels, heads, cfg["cross_attention_dim"], groups)
                for _ in range(layers)
            )
        self.downsamplers = (
            nn.ModuleList([Downsample(out_channels, cfg["downsample_padding"])])
            if downsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            if self.has_cross_attention:
                hidden_states = self.attentions[i](hidden_states, encoder_hidden_states)[0]
            outputs += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class MidBlock(nn.Module):
    """Resnet, transformer, resnet at the lowest resolution."""

    def __init__(self, channels: int, temb: int, heads: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.has_cross_attention = True
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, temb, groups, eps) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [SpatialTransformer(channels, heads, cfg["cross_attention_dim"], groups)]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            hidden_states = attn(hidden_states, encoder_hidden_states)[0]
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class UpBlock(nn.Module):
    """Resnets on the input joined with the down path's skips (each followed by a
    transformer when HEADS), then a x2 upsample unless last."""

    def __init__(
        self,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        temb: int,
        cfg: dict[str, Any],
        *,
        layers: int,
        heads: int | None,
        upsample: bool,
    ) -> None:
        super().__init__()
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.has_cross_attention = heads is not None
        self.resnets = nn.ModuleList(
            ResnetBlock(
                (prev_channels if i == 0 else out_channels)
                + (in_channels if i == layers - 1 else out_channels),
                out_channels,
                temb,
                groups,
                eps,
            )
            for i in range(layers)
        )
        if heads is not None:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_channels, heads, cfg["cross_attention_dim"], groups)
                for _ in range(layers)
            )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        upsample_size: Any = None,
        **_: Any,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            skip = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
            if self.has_cross_attention:
                hidden_states = self.attentions[i](hidden_states, encoder_hidden_states)[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class UNet(Net):
    """SD v1's denoising UNet; ``forward`` as ``UNet2DConditionModel.forward`` with
    ``return_dict=False`` (a one-tuple) or True (an object with ``.sample``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        check_config(config)
        cfg = {**UNET_DEFAULTS, **config}
        self.config = Config(cfg)
        channels = list(cfg["block_out_channels"])
        n = len(channels)
        heads = _per_block(cfg["num_attention_heads"] or cfg["attention_head_dim"], n)
        layers = _per_block(cfg["layers_per_block"], n)
        temb = channels[0] * 4
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        self.time_embed_act = None

        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            block_in, out = out, channels[i]
            self.down_blocks.append(
                DownBlock(
                    block_in,
                    out,
                    temb,
                    cfg,
                    layers=layers[i],
                    heads=heads[i] if kind == "CrossAttnDownBlock2D" else None,
                    downsample=i < n - 1,
                )
            )
        self.mid_block = MidBlock(channels[-1], temb, heads[-1], cfg)

        self.up_blocks = nn.ModuleList()
        rev, rev_heads, rev_layers = channels[::-1], heads[::-1], layers[::-1]
        out = rev[0]
        self.num_upsamplers = 0
        for i, kind in enumerate(cfg["up_block_types"]):
            prev, out = out, rev[i]
            last = i == n - 1
            self.num_upsamplers += 0 if last else 1
            self.up_blocks.append(
                UpBlock(
                    rev[min(i + 1, n - 1)],
                    prev,
                    out,
                    temb,
                    cfg,
                    layers=rev_layers[i] + 1,
                    heads=rev_heads[i] if kind == "CrossAttnUpBlock2D" else None,
                    upsample=not last,
                )
            )
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels[0], eps=cfg["norm_eps"])
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cfg["out_channels"], kernel_size=3, padding=1)

    def get_time_embed(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int
    ) -> torch.Tensor:
        """The timestep's sinusoidal embedding, one row per sample, in the sample's dtype."""
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type in ("mps", "npu"):
                dtype = torch.float32 if dtype is torch.float64 else torch.int32
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        return self.time_proj(timesteps).to(dtype=sample.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        return_dict: bool = True,
        **unsupported: Any,
    ) -> Any:
        used = {k: v for k, v in unsupported.items() if v is not None}
        if used:
            raise NotImplementedError(f"UNet inputs not used by SD v1: {sorted(used)}")
        factor = 2**self.num_upsamplers
        resize = any(d % factor != 0 for d in sample.shape[-2:])
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.time_embedding(self.get_time_embed(sample=sample, timestep=timestep), None)
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            sample, out = block(sample, emb, encoder_hidden_states)
            skips += out
        sample = self.mid_block(sample, emb, encoder_hidden_states)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if resize and i < len(self.up_blocks) - 1 else None
            sample = block(sample, res, emb, encoder_hidden_states, upsample_size=size)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return Output(sample) if return_dict else (sample,)
