"""Token merging for Stable Diffusion (ToMe for SD, Bolya & Hoffman 2023): an opt-in speed mode.

In the transformer blocks of the UNet's highest-resolution levels, a fraction ``ratio`` of
the tokens is merged away before self-attention (``attn1``), which then runs on the
reduced set; its output is copied back to every merged token ("unmerge") before the
residual add. Cross-attention and the feed-forward stay on all tokens (the paper's and
tomesd's defaults: merge_attn on, merge_crossattn and merge_mlp off). This is not exact:
images change a little, more with a bigger ratio.

The merge is bipartite soft matching on the latent grid:

* destinations: one token per 2x2 window of the block's ``h x w`` token grid; sources: all
  the others (with an odd ``h`` or ``w`` the last row/column has no window, and its tokens
  are sources);
* similarity: cosine of the block's normed hidden states (the input of ``attn1``);
* each source's best destination is its most similar one; the ``r = int(N * ratio)``
  sources with the highest best-similarity (at most all of them) are merged into their
  best destinations by averaging (a destination becomes the mean of itself and every
  source merged into it); the other sources are kept as they are.

Which token of a 2x2 window is the destination is a fixed function of (window index,
timestep): a 32-bit integer hash with a fixed seed, evaluated on the device. The paper
picks it at random per call, which works better than a fixed corner; hashing keeps that
variation from step to step while staying reproducible: no random generator (global or
otherwise) is touched, and the choice does not depend on what ran before, so a seed gives
the same image whatever its place in a run. Both halves of the CFG pair (and every image
of a batched call) share the windows' choice; the matching itself is per image. Ties in
the ranking are broken by position (stable sort), and the averaging is a matrix product,
not an atomic scatter, so GPU runs are repeatable too.

A level is a UNet resolution: the blocks patched are those of the levels downsampled by
at most ``max_downsample`` (a linear factor, as in tomesd): 1 = only the full-resolution
level (64x64 = 4096 tokens at 512x512), 2 adds the level at half resolution, and so on.
The blocks need the latent's height and width to find their 2x2 windows: forward
pre-hooks on the UNet's ``conv_in`` (the latent) and ``time_proj`` (the timestep) record
them at every call, and a block derives its ``h x w`` from its token count by halving
(rounding up, like the UNet's stride-2 convs). A block that cannot derive its grid (no
recorded latent, or a token count that does not fit it), or that gets a self-attention
mask, runs unmerged for that call.

Only diffusers' ``BasicTransformerBlock`` in SD v1's configuration is supported (layer
norm, no positional embedding, no ``only_cross_attention``, no GLIGEN fuser); anything
else is a ValueError from :func:`apply`. The patched forward replicates diffusers'
``BasicTransformerBlock.forward`` for that configuration (it is bit-identical when no
token is merged), except that it does not log diffusers' deprecation warning for a
``scale`` in ``cross_attention_kwargs``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: E402

__all__ = ["apply", "is_applied", "remove"]

_STATE_ATTR = "_mlc_tome"
_HASH_SEED = 0x746F6D65  # fixed: the destination choice must be reproducible
_M32 = 0xFFFFFFFF


@dataclass
class _State:
    """What a patched UNet carries: settings, patched blocks, hooks, per-call data."""

    ratio: float
    max_downsample: int
    blocks: list[Any] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    latent_hw: tuple[int, int] | None = None  # the current UNet call's latent size
    timestep: Any = None  # the current UNet call's timestep (tensor, maybe on the GPU)
    want_timestep: bool = True  # the next time_proj call is the timestep's
    plans: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


# -- public API ---------------------------------------------------------------------------
def apply(unet: Any, ratio: float, *, max_downsample: int = 1) -> int:
    """Patch ``unet`` in place for token merging; return the number of blocks patched.

    ``ratio`` (0 < ratio < 1) is the fraction of a block's tokens merged away before
    self-attention; ``max_downsample`` (a power of two) picks the levels (see the module
    docstring). Applying again replaces the previous settings (never patches twice).
    When no block qualifies, nothing is patched and 0 is returned.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"token merging ratio must be a number in (0, 1), got {ratio!r}")
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:  # also rejects NaN
        raise ValueError(f"token merging ratio must be in (0, 1) (exclusive), got {ratio!r}")
    if (
        isinstance(max_downsample, bool)
        or not isinstance(max_downsample, int)
        or max_downsample < 1
        or max_downsample & (max_downsample - 1)
    ):
        raise ValueError(
            f"token merging max_downsample must be a power of two >= 1 (1, 2, 4, 8), "
            f"got {max_downsample!r}"
        )
    for attr in ("conv_in", "time_proj"):
        if not isinstance(getattr(unet, attr, None), torch.nn.Module):
            raise ValueError(
                f"token merging needs a diffusers UNet2DConditionModel (no {attr} on "
                f"{type(unet).__name__})"
            )
    targets = _targets(unet, max_downsample)  # validates every block before changing anything

    remove(unet)
    if not targets:
        return 0
    state = _State(ratio=ratio, max_downsample=max_downsample)
    state.handles = [
        unet.time_proj.register_forward_pre_hook(functools.partial(_on_time_proj, state)),
        unet.conv_in.register_forward_pre_hook(functools.partial(_on_conv_in, state)),
    ]
    for block in targets:
        block.forward = functools.partial(_tome_forward, block, state)
        state.blocks.append(block)
    unet.__dict__[_STATE_ATTR] = state
    return len(targets)


def remove(unet: Any) -> None:
    """Undo :func:`apply`: every patched block gets its original forward back (idempotent)."""
    state = unet.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return
    for handle in state.handles:
        handle.remove()
    for block in state.blocks:
        if _is_ours(block.__dict__.get("forward")):
            del block.__dict__["forward"]
    state.blocks.clear()
    state.handles.clear()
    state.plans.clear()


def is_applied(unet: Any) -> bool:
    """Whether ``unet`` is currently patched by :func:`apply`."""
    return unet.__dict__.get(_STATE_ATTR) is not None


# -- which blocks -------------------------------------------------------------------------
def _levels(unet: Any) -> list[tuple[int, str, Any]]:
    """(linear downsample factor, name, module) for each UNet level block."""
    try:
        down, up, mid = unet.down_blocks, unet.up_blocks, unet.mid_block
    except AttributeError as exc:
        raise ValueError(
            f"token merging needs a diffusers UNet2DConditionModel, not {type(unet).__name__}"
        ) from exc
    # Down block i works at 1/2**i (its downsampler comes after its attentions); the mid
    # block at the deepest level; up block j at 1/2**(n-1-j) (upsampler after attentions).
    n = len(down)
    levels = [(2**i, f"down_blocks.{i}", b) for i, b in enumerate(down)]
    if mid is not None:
        levels.append((2 ** (n - 1), "mid_block", mid))
    levels += [(2 ** (n - 1 - j), f"up_blocks.{j}", b) for j, b in enumerate(up)]
    return levels


def _targets(unet: Any, max_downsample: int) -> list[Any]:
    """The transformer blocks of the qualifying levels (ValueError for unsupported ones)."""
    from mlc.engine.nets.layers import TransformerBlock
    from mlc.engine.nets.unet import UNet

    if isinstance(unet, UNet):  # the engine's own UNet (mlc.engine.nets)
        BasicTransformerBlock = TransformerBlock  # noqa: N806 - diffusers' name, our class
    else:
        from diffusers.models.attention import BasicTransformerBlock

    blocks = []
    for factor, prefix, level in _levels(unet):
        if factor > max_downsample:
            continue
        for name, module in level.named_modules(prefix=prefix):
            if isinstance(module, BasicTransformerBlock):
                _check_block(name, module, BasicTransformerBlock)
                blocks.append(module)
    return blocks


def _check_block(name: str, block: Any, base: type) -> None:
    problems = []
    if type(block).forward is not base.forward:
        problems.append(f"{type(block).__name__} has its own forward")
    if getattr(block, "norm_type", None) != "layer_norm":
        problems.append(f"norm_type {getattr(block, 'norm_type', None)!r} (only 'layer_norm')")
    if getattr(block, "pos_embed", None) is not None:
        problems.append("positional embeddings")
    if getattr(block, "only_cross_attention", False):
        problems.append("only_cross_attention")
    if hasattr(block, "fuser"):
        problems.append("gated (GLIGEN) attention")
    forward = block.__dict__.get("forward")
    if forward is not None and not _is_ours(forward):
        problems.append("its forward is already replaced by something else")
    if problems:
        raise ValueError(
            f"token merging does not support the transformer block {name}: " + "; ".join(problems)
        )


def _is_ours(forward: Any) -> bool:
    return isinstance(forward, functools.partial) and forward.func is _tome_forward


# -- hooks: the latent size and timestep of the current UNet call ------------------------
def _on_time_proj(state: _State, module: Any, args: tuple[Any, ...]) -> None:
    # The first time_proj call of a UNet call embeds the timestep (a later one may embed
    # class labels); conv_in comes after both.
    if state.want_timestep and args:
        state.timestep = args[0]
        state.want_timestep = False


def _on_conv_in(state: _State, module: Any, args: tuple[Any, ...]) -> None:
    sample = args[0]
    state.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
    state.want_timestep = True
    state.plans.clear()


def _grid(state: _State, n: int) -> tuple[int, int] | None:
    """The ``h x w`` token grid of a block with ``n`` tokens, or None when unknown."""
    if state.latent_hw is None:
        return None
    h, w = state.latent_hw
    while h * w > n and h * w > 1:
        h, w = (h + 1) // 2, (w + 1) // 2
    return (h, w) if h * w == n else None


# -- the partition: which tokens are destinations -----------------------------------------
def _timestep_key(timestep: Any, device: torch.device) -> torch.Tensor:
    """An int64 scalar from the timestep, on ``device`` (no host sync)."""
    if timestep is None:
        return torch.zeros((), dtype=torch.int64, device=device)
    t = torch.as_tensor(timestep).reshape(-1)[0]
    return (t.to(device=device, dtype=torch.float32) * 16).round().to(torch.int64)


def _window_offsets(n: int, key: torch.Tensor, device: torch.device) -> torch.Tensor:
    """For each of ``n`` windows, which of its 4 tokens is the destination (0..3).

    A fixed integer hash of (window index, key): every product stays below 2**63.
    """
    x = torch.arange(n, dtype=torch.int64, device=device)
    x = (x * 0x61C88647 + key * 0x27D4EB2F + _HASH_SEED) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    x = x ^ (x >> 16)
    return x & 3


def _partition(
    h: int, w: int, timestep: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(source positions ascending, destination positions in window order) of an h x w grid."""
    hh, ww = h // 2, w // 2
    n_dst = hh * ww
    offset = _window_offsets(n_dst, _timestep_key(timestep, device), device)
    row = torch.arange(hh, device=device).repeat_interleave(ww)
    col = torch.arange(ww, device=device).repeat(hh)
    dst_pos = (2 * row + offset // 2) * w + 2 * col + offset % 2
    is_dst = torch.zeros(h * w, dtype=torch.int32, device=device)
    is_dst[dst_pos] = 1
    # Stable sort: sources (0) first, in position order; no nonzero() (a GPU sync).
    src_pos = torch.sort(is_dst, stable=True).indices[: h * w - n_dst]
    return src_pos, dst_pos


def _plan(state: _State, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    key = (h, w, str(device))
    plan = state.plans.get(key)
    if plan is None:
        plan = state.plans[key] = _partition(h, w, state.timestep, device)
    return plan


# -- merge / unmerge ------------------------------------------------------------------------
def _merge(
    x: torch.Tensor, src_pos: torch.Tensor, dst_pos: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching: ``x`` [B, N, C] -> (reduced [B, N - r, C], rows [B, N]).

    ``rows[b, i]`` is the row of the reduced set that stands for token ``i``: unmerging is
    ``reduced_out.gather(1, rows)``. Kept sources come first, then the destinations.
    """
    batch, n, channels = x.shape
    n_dst = dst_pos.numel()
    n_src = n - n_dst
    metric = F.normalize(x, dim=-1)
    scores = metric[:, src_pos] @ metric[:, dst_pos].transpose(1, 2)  # [B, n_src, n_dst]
    best, best_dst = scores.max(dim=-1)  # ties: the first destination
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    merged, kept = order[:, :r], order[:, r:]
    into = best_dst.gather(1, merged)  # [B, r]: each merged source's destination

    src, dst = x[:, src_pos], x[:, dst_pos]
    kept_x = src.gather(1, kept.unsqueeze(-1).expand(-1, -1, channels))
    merged_x = src.gather(1, merged.unsqueeze(-1).expand(-1, -1, channels))
    # Sum per destination as a product with a one-hot matrix: no atomic scatter, so the
    # float sum is the same on every run (GPU included). Counts are exact integers.
    onehot = F.one_hot(into, n_dst).to(x.dtype)  # [B, r, n_dst]
    sums = onehot.transpose(1, 2) @ merged_x  # [B, n_dst, C]
    counts = torch.zeros(batch, n_dst, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, into, torch.ones(into.shape, dtype=torch.float32, device=x.device))
    dst = ((dst.float() + sums.float()) / (1.0 + counts).unsqueeze(-1)).to(x.dtype)
    reduced = torch.cat([kept_x, dst], dim=1)

    n_kept = n_src - r
    src_rows = torch.empty(batch, n_src, dtype=torch.int64, device=x.device)
    src_rows.scatter_(1, kept, torch.arange(n_kept, device=x.device).expand(batch, -1))
    src_rows.scatter_(1, merged, into + n_kept)
    rows = torch.empty(batch, n, dtype=torch.int64, device=x.device)
    rows.scatter_(1, src_pos.expand(batch, -1), src_rows)
    rows.scatter_(
        1,
        dst_pos.expand(batch, -1),
        (n_kept + torch.arange(n_dst, device=x.device)).expand(batch, -1),
    )
    return reduced, rows


def _unmerge(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Every token gets the output of the row that stood for it."""
    return out.gather(1, rows.unsqueeze(-1).expand(-1, -1, out.shape[-1]))


def _self_attention(
    block: Any,
    state: _State,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """``attn1`` on ``x``, merged when this block and call allow it."""
    if attention_mask is None and x.ndim == 3:
        n = x.shape[1]
        grid = _grid(state, n)
        if grid is not None:
            h, w = grid
            n_dst = (h // 2) * (w // 2)
            r = min(int(n * state.ratio), n - n_dst)
            if n_dst > 0 and r > 0:
                src_pos, dst_pos = _plan(state, h, w, x.device)
                reduced, rows = _merge(x, src_pos, dst_pos, r)
                out = block.attn1(
                    reduced, encoder_hidden_states=None, attention_mask=None, **kwargs
                )
                return _unmerge(out, rows)
    return block.attn1(x, encoder_hidden_states=None, attention_mask=attention_mask, **kwargs)


# -- the patched forward --------------------------------------------------------------------
def _tome_forward(
    block: Any,
    state: _State,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    timestep: torch.LongTensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    class_labels: torch.LongTensor | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """diffusers' BasicTransformerBlock.forward for norm_type "layer_norm", with ToMe on attn1."""
    # 1. Self-attention (merged)
    norm_hidden_states = block.norm1(hidden_states)
    kwargs = dict(cross_attention_kwargs) if cross_attention_kwargs is not None else {}
    if kwargs.pop("gligen", None) is not None:
        raise ValueError("token merging does not support GLIGEN inputs (cross_attention_kwargs)")
    attn_output = _self_attention(block, state, norm_hidden_states, attention_mask, kwargs)
    hidden_states = attn_output + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)

    # 2. Cross-attention (all tokens)
    if block.attn2 is not None:
        norm_hidden_states = block.norm2(hidden_states)
        attn_output = block.attn2(
            norm_hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=encoder_attention_mask,
            **kwargs,
        )
        hidden_states = attn_output + hidden_states

    # 3. Feed-forward (all tokens)
    norm_hidden_states = block.norm3(hidden_states)
    if block._chunk_size is not None:
        ff_output = _chunked_feed_forward(
            block.ff, norm_hidden_states, block._chunk_dim, block._chunk_size
        )
    else:
        ff_output = block.ff(norm_hidden_states)
    hidden_states = ff_output + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    return hidden_states


def _chunked_feed_forward(ff: Any, x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """As diffusers' ``_chunked_feed_forward`` (``unet.enable_forward_chunking``)."""
    if x.shape[dim] % size != 0:
        raise ValueError(
            f"`hidden_states` dimension to be chunked: {x.shape[dim]} has to be divisible by "
            f"chunk size: {size}. Make sure to set an appropriate `chunk_size` when calling "
            "`unet.enable_forward_chunking`."
        )
    return torch.cat([ff(part) for part in x.chunk(x.shape[dim] // size, dim=dim)], dim=dim)
