"""Start an AutoencoderKL as a thumbnail autoencoder, so that training only has to sharpen it.

Trained from a random start, a small AutoencoderKL needs tens of thousands of images before
its colours are even right (the last GroupNorm of the encoder and of the decoder, with no
residual path around it, hides absolute levels). ``thumbnail_init`` sets the weights so that,
before any training, the encoder's latent is the image's 8x8 block mean colour (channels
0-2; channel 3 is free) and the decoder repeats each latent cell's colour over its 8x8
block: an autoencoder as good as a nearest-neighbour thumbnail. Everything else keeps a small
random start and is trained as usual.

How: a few channels of the residual stream are reserved all the way through both halves:
the 4 latent values (``ID``), their negatives (``ANTI``) and two constants +A and -A
(``ANCHOR``). Resnet and attention branches start at zero (identity blocks), down-sampling
convs average 2x2 blocks, up-sampling convs copy, and channel-changing shortcuts keep the
reserved channels. At the final GroupNorm (one group) the negatives cancel the latent
values' share of the mean and the large constants fix the spread, so the norm is close to a
fixed scale; its affine weights undo that scale and shift into SiLU's linear range, and the
output conv shifts back.
"""

from __future__ import annotations

from typing import Any

import torch

ID = (0, 1, 2, 3)
ANTI = (4, 5, 6, 7)
ANCHOR = (8, 9)
RESERVED = ID + ANTI + ANCHOR
A = 30.0  # the anchor constant: large against the colour values (|c| <= 1)
SHIFT = 8.0  # into SiLU's linear range (silu(x) = x within 0.003 for x >= 7)
SMALL = 0.05  # scale of the random start of everything not reserved
LOGVAR = -6.0  # initial posterior log-variance (std 0.05)
LOGVAR_EXACT = -14.0  # the exact encoder's (std 0.0009: the latent is the block means)


def _free(conv: torch.nn.Conv2d) -> None:
    """Shrink a conv's random start; free outputs never read the anchors."""
    conv.weight.mul_(SMALL)
    if conv.bias is not None:
        conv.bias.mul_(SMALL)
    if conv.in_channels > max(ANCHOR):
        conv.weight[:, list(ANCHOR)] = 0.0


def _keep(conv: torch.nn.Conv2d, taps: list[tuple[int, int]], weight: float = 1.0) -> None:
    """Reserved output channel c reads only input channel c, at ``taps``."""
    for c in RESERVED:
        conv.weight[c] = 0.0
        for i, j in taps:
            conv.weight[c, c, i, j] = weight
        if conv.bias is not None:
            conv.bias[c] = 0.0


def _centre(conv: torch.nn.Conv2d) -> tuple[int, int]:
    return conv.kernel_size[0] // 2, conv.kernel_size[1] // 2


def _zero(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.zero_()


def _blocks(part: Any) -> list[Any]:
    blocks = list(getattr(part, "down_blocks", None) or part.up_blocks)
    return [*blocks, part.mid_block]


def _identity_blocks(part: Any) -> None:
    """Residual blocks start as identities; convs on the stream keep the reserved channels."""
    for block in _blocks(part):
        for resnet in block.resnets:
            _zero(resnet.conv2)
            if resnet.conv_shortcut is not None:
                _free(resnet.conv_shortcut)
                _keep(resnet.conv_shortcut, [(0, 0)])
        for attention in getattr(block, "attentions", None) or []:
            if attention is not None:
                _zero(attention.to_out[0])
        for down in getattr(block, "downsamplers", None) or []:
            _free(down.conv)
            # Downsample2D pads right/bottom by one and convolves 3x3 with stride 2: the
            # top-left 2x2 taps average each 2x2 block
            _keep(down.conv, [(0, 0), (0, 1), (1, 0), (1, 1)], 0.25)
        for up in getattr(block, "upsamplers", None) or []:
            _free(up.conv)
            _keep(up.conv, [_centre(up.conv)])


def _stream_in(conv: torch.nn.Conv2d, sources: int, free: bool = True) -> None:
    """The first conv: ID channels copy the input's first channels (``sources`` of them;
    the rest of ID is a small random mix when ``free``, else zero), ANTI their negatives,
    ANCHOR the constants."""
    _free(conv)
    i, j = _centre(conv)
    free_rows = conv.weight[list(ID[sources:])].clone() * float(free)
    for c in RESERVED:
        conv.weight[c] = 0.0
        conv.bias[c] = 0.0
    for c in ID[:sources]:
        conv.weight[c, c, i, j] = 1.0
    for k, c in enumerate(ID[sources:]):
        conv.weight[c] = free_rows[k]
    for c, a in zip(ID, ANTI, strict=True):
        conv.weight[a] = -conv.weight[c]
    conv.bias[ANCHOR[0]], conv.bias[ANCHOR[1]] = A, -A


def _stream_out(norm: torch.nn.GroupNorm, conv: torch.nn.Conv2d, outputs: int, scale: float):
    """Final norm + SiLU + conv: output channel c (c < outputs) is ID channel c again."""
    norm.weight[list(ID)] = scale
    norm.bias[list(ID)] = SHIFT
    _free(conv)
    i, j = _centre(conv)
    for c in range(outputs):
        conv.weight[c, list(RESERVED)] = 0.0
        conv.weight[c, c, i, j] = 1.0
        conv.bias[c] = -SHIFT


def _spread(channels: int) -> float:
    """The final GroupNorm's standard deviation when the stream holds only reserved channels
    (anchors dominate; latent values of typical size 0.5 add a little)."""
    return float(((2 * A * A + 2 * len(ID) * 0.25) / channels) ** 0.5)


@torch.no_grad()
def thumbnail_init(vae: Any, *, exact_encoder: bool = False) -> Any:
    """Set ``vae``'s weights to the thumbnail autoencoder described above; returns ``vae``.

    With ``exact_encoder`` the encoder computes the block means and nothing else (latent
    channel 3 is zero): meant to stay fixed while only the decoder trains."""
    cfg = vae.config
    if cfg.norm_num_groups != 1:
        raise ValueError("thumbnail_init needs norm_num_groups=1 (one group per GroupNorm)")
    if cfg.latent_channels != len(ID) or min(cfg.block_out_channels) <= max(RESERVED):
        raise ValueError(
            f"thumbnail_init needs {len(ID)} latent channels and at least "
            f"{max(RESERVED) + 1} channels per level"
        )
    enc, dec = vae.encoder, vae.decoder
    # encoder: RGB in, block means out
    _stream_in(enc.conv_in, 3, free=not exact_encoder)
    _identity_blocks(enc)
    _stream_out(enc.conv_norm_out, enc.conv_out, len(ID), _spread(enc.conv_out.in_channels))
    enc.conv_out.bias[len(ID) :] = 0.0
    if exact_encoder:  # the latent reads the reserved channels only
        enc.conv_out.weight[: 2 * len(ID)] = 0.0
        for c in ID:
            i, j = _centre(enc.conv_out)
            enc.conv_out.weight[c, c, i, j] = 1.0
    vae.quant_conv.weight.zero_()
    vae.quant_conv.bias.zero_()
    for c in range(2 * len(ID)):
        vae.quant_conv.weight[c, c, 0, 0] = 1.0
    vae.quant_conv.bias[len(ID) :] = LOGVAR_EXACT if exact_encoder else LOGVAR
    # decoder: latent in, repeated colours out
    vae.post_quant_conv.weight.zero_()
    vae.post_quant_conv.bias.zero_()
    for c in range(len(ID)):
        vae.post_quant_conv.weight[c, c, 0, 0] = 1.0
    _stream_in(dec.conv_in, len(ID))
    _identity_blocks(dec)
    _stream_out(dec.conv_norm_out, dec.conv_out, 3, _spread(dec.conv_out.in_channels))
    return vae


def freeze_anchors(vae: Any) -> list[Any]:
    """Keep the anchor channels constant while training: no conv may learn to read them or
    to write into them (a weight on a constant of size A would move the colours A times as
    fast as anything else). Returns the gradient hooks (``.remove()`` them to undo)."""
    hooks = []
    anchors = list(ANCHOR)
    for module in vae.modules():
        if not isinstance(module, torch.nn.Conv2d) or not module.weight.requires_grad:
            continue
        mask = torch.ones_like(module.weight)
        if module.in_channels > max(ANCHOR):
            mask[:, anchors] = 0.0
        if module.out_channels > max(ANCHOR):
            mask[anchors] = 0.0
        hooks.append(module.weight.register_hook(lambda g, m=mask: g * m))
        if module.bias is not None and module.out_channels > max(ANCHOR):
            bias_mask = torch.ones_like(module.bias)
            bias_mask[anchors] = 0.0
            hooks.append(module.bias.register_hook(lambda g, m=bias_mask: g * m))
    return hooks
