"""The building blocks SD v1's UNet and VAE share, in plain torch.

Each block computes what diffusers' block of the same role computes for SD v1's settings,
with the same torch calls in the same order (so the numbers are the same, bit for bit, on the
same device), and holds its weights under the same names, so a state dict in diffusers' layout
loads as it is. Settings SD v1 never uses (scale-shift norms, FreeU, GLIGEN, LoRA scales,
attention masks, ...) are left out; ``mlc.engine.nets.unet.check_config`` refuses configs
that need them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Config(dict):
    """A model's config: a plain dict (``dict(model.config)``) with attribute access
    (``model.config.in_channels``), as diffusers' configs offer."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Net(nn.Module):
    """A model with a config and diffusers' ``dtype``/``device`` properties."""

    config: Config

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return next(self.parameters()).device


class Output(tuple):
    """A model's result as diffusers returns it with ``return_dict=True``: ``.sample``, and
    ``[0]`` as with ``return_dict=False``."""

    def __new__(cls, sample: torch.Tensor) -> Output:
        return super().__new__(cls, (sample,))

    @property
    def sample(self) -> torch.Tensor:
        """The model's output."""
        return self[0]


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, and a skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else None
        )
        self.output_scale_factor = 1.0

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + h) / self.output_scale_factor


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` (diffusers'
    ``AttnProcessor2_0``); with GROUPS it is the VAE's single-head spatial attention (group
    norm first, biased projections, residual added)."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        *,
        bias: bool = False,
        groups: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, query_dim, eps=eps, affine=True) if groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=True), nn.Dropout(0.0)])
        self.residual_connection = groups is not None
        self.rescale_output_factor = 1.0

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not used by SD v1")
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = self.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = self.to_k(context), self.to_v(context)
        head_dim = key.shape[-1] // self.heads
        query = query.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * head_dim).to(query.dtype)
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor


class GEGLU(nn.Module):
    """A projection to twice the width, one half gating the other through GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden_states * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU, then a projection back (``net.0``, ``net.2`` as diffusers names them)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text, feed-forward; each pre-normed, each
    added back. The attributes after the modules are those of diffusers' block that token
    merging (``mlc.engine.tome``) reads."""

    norm_type = "layer_norm"
    pos_embed = None
    only_cross_attention = False
    _chunk_size: int | None = None
    _chunk_dim = 0

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.ff = FeedForward(dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        hidden_states = self.attn1(self.norm1(hidden_states), attention_mask=attention_mask) + (
            hidden_states
        )
        hidden_states = (
            self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states)
            + hidden_states
        )
        return self.ff(self.norm3(hidden_states)) + hidden_states


class SpatialTransformer(nn.Module):
    """Feature map -> tokens (group norm, 1x1 conv) -> transformer blocks -> feature map,
    added to the input (diffusers' ``Transformer2DModel`` with conv projections)."""

    def __init__(
        self, channels: int, heads: int, cross_attention_dim: int, groups: int, layers: int = 1
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, channels // heads, cross_attention_dim)
            for _ in range(layers)
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, **_: Any
    ) -> tuple[torch.Tensor]:
        batch, _c, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.proj_in(self.norm(hidden_states))
        inner = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
        hidden_states = hidden_states.reshape(batch, height, width, inner).permute(0, 3, 1, 2)
        hidden_states = self.proj_out(hidden_states.contiguous())
        return (hidden_states + residual,)


class Downsample(nn.Module):
    """A stride-2 3x3 conv; PADDING 0 pads right and bottom by one first (the VAE's)."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to OUTPUT_SIZE), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        if hidden_states.shape[0] >= 64:
            hidden_states = hidden_states.contiguous()
        scale = (
            2
            if output_size is None
            else max(f / s for f, s in zip(output_size, hidden_states.shape[-2:], strict=True))
        )
        if hidden_states.numel() * scale > 2**31:
            hidden_states = hidden_states.contiguous()
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return self.conv(hidden_states)
