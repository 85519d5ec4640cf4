"""SD v1's VAE (``AutoencoderKL``) in plain torch, from a diffusers config.

Weights' names, ``decode(z)`` and ``encode(x).latent_dist`` (mean, std, mode, sample) are
diffusers'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlc.engine.nets.layers import (
    Attention,
    Config,
    Downsample,
    Net,
    Output,
    ResnetBlock,
    Upsample,
)

VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [64],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
}
"""diffusers' defaults for the keys this class reads (a config may omit them; tested equal
to ``AutoencoderKL``'s)."""

SD_V1_ONLY: dict[str, Any] = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "force_upcast": True,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}
"""Settings this class implements only in SD v1's form (a config may omit them)."""

EPS = 1e-6


def check_config(config: dict[str, Any]) -> None:
    """ValueError naming the first setting of CONFIG this class does not implement."""
    cfg = {**VAE_DEFAULTS, **config}
    for key, want in SD_V1_ONLY.items():
        if key == "force_upcast":
            continue  # a hint for pipelines; the engine decides its own upcasting
        if cfg.get(key, want) != want:
            raise ValueError(f"VAE setting {key}={cfg[key]!r} is not SD v1's ({want!r})")
    if set(cfg["down_block_types"]) != {"DownEncoderBlock2D"}:
        raise ValueError(f"VAE down blocks {cfg['down_block_types']} are not SD v1's kinds")
    if set(cfg["up_block_types"]) != {"UpDecoderBlock2D"}:
        raise ValueError(f"VAE up blocks {cfg['up_block_types']} are not SD v1's kinds")
    n = len(cfg["block_out_channels"])
    if len(cfg["down_block_types"]) != n or len(cfg["up_block_types"]) != n:
        raise ValueError("VAE block types and block_out_channels differ in length")


class MidBlock(nn.Module):
    """Resnet, single-head spatial attention, resnet."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, None, groups, EPS) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [Attention(channels, 1, channels, bias=True, groups=groups, eps=EPS)]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, None)
        hidden_states = self.attentions[0](hidden_states)
        return self.resnets[1](hidden_states, None)


class CoderBlock(nn.Module):
    """Resnets, then a stride-2 conv (RESAMPLE "down", the encoder's) or a x2 upsample
    ("up", the decoder's), or neither (the last level)."""

    def __init__(
        self, in_ch: int, out_ch: int, layers: int, groups: int, resample: str | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, None, groups, EPS)
            for i in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch, 0)]) if resample == "down" else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if resample == "up" else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        for sampler in self.downsamplers or self.upsamplers or ():
            hidden_states = sampler(hidden_states)
        return hidden_states


class Encoder(nn.Module):
    """Image -> the latent distribution's moments (before ``quant_conv``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        channels, groups = list(cfg["block_out_channels"]), cfg["norm_num_groups"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            CoderBlock(
                channels[max(i - 1, 0)],
                ch,
                cfg["layers_per_block"],
                groups,
                "down" if i < len(channels) - 1 else None,
            )
            for i, ch in enumerate(channels)
        )
        self.mid_block = MidBlock(channels[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """Latents (after ``post_quant_conv``) -> image in [-1, 1] (roughly)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        channels, groups = list(cfg["block_out_channels"]), cfg["norm_num_groups"]
        rev = channels[::-1]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], rev[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock(rev[0], groups)
        self.up_blocks = nn.ModuleList(
            CoderBlock(
                rev[max(i - 1, 0)],
                ch,
                cfg["layers_per_block"] + 1,
                groups,
                "up" if i < len(rev) - 1 else None,
            )
            for i, ch in enumerate(rev)
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cfg["out_channels"], 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.mid_block(self.conv_in(sample))
        for block in self.up_blocks:
            sample = block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class VAE(Net):
    """SD v1's autoencoder; ``decode`` as ``AutoencoderKL.decode``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        check_config(config)
        cfg = {**VAE_DEFAULTS, **config}
        self.config = Config(cfg)
        latent = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)

    def encode(self, sample: torch.Tensor, return_dict: bool = True) -> Any:
        """Image -> the latent distribution, as ``AutoencoderKL.encode``: ``.latent_dist``
        (or a one-tuple of it without RETURN_DICT)."""
        dist = LatentDistribution(self.quant_conv(self.encoder(sample)))
        return _Encoded(dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        """Latents (already divided by the scaling factor) -> image."""
        image = self.decoder(self.post_quant_conv(z))
        return (image,) if not return_dict else Output(image)


class LatentDistribution:
    """A diagonal Gaussian over the latents from the encoder's moments (diffusers'
    ``DiagonalGaussianDistribution``: log-variance clamped to [-30, 20])."""

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely latents: the mean."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents drawn from the distribution (the noise from GENERATOR's device, as
        diffusers draws it for one generator)."""
        device = generator.device if generator is not None else self.parameters.device
        noise = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.parameters.dtype
        )
        return self.mean + self.std * noise.to(self.parameters.device)


class _Encoded:
    """``encode``'s result: ``.latent_dist``."""

    def __init__(self, latent_dist: LatentDistribution) -> None:
        self.latent_dist = latent_dist
