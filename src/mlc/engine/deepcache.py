"""DeepCache (Ma et al. 2023): reuse the UNet's slowly changing deep features across steps.

Every ``interval``-th call runs the whole UNet and keeps the hidden state that enters
``up_blocks[-(branch + 1)]`` from the deeper path; the calls in between run only the
shallow branch (``conv_in``, the first down blocks, the last up blocks, the output head)
on top of that cached feature. ``interval=1`` is exact: every call is a full one.
"""

from __future__ import annotations

from typing import Any

import torch


class DeepCache:
    """Wrap a UNet (diffusers' UNet2DConditionModel or the engine's own, mlc.engine.nets):
    full every `interval` calls, shallow otherwise."""

    def __init__(self, unet: Any, interval: int, branch: int = 0) -> None:
        from mlc.engine.nets.unet import UNet

        if not isinstance(unet, UNet) and not _is_diffusers_unet(unet):
            raise TypeError(f"DeepCache wraps a UNet2DConditionModel, not {type(unet).__name__}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"DeepCache interval must be an integer >= 1 (1 = every call full), "
                f"got {interval!r}"
            )
        n_up = len(unet.up_blocks)
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < n_up:
            raise ValueError(
                f"DeepCache branch must be an integer in 0..{n_up - 1} for this UNet "
                f"({n_up} up blocks), got {branch!r}"
            )
        _check_supported(unet)

        self.unet = unet
        self.interval = interval
        self.branch = branch
        self.full_calls = 0
        self.shallow_calls = 0
        self._first_up = n_up - 1 - branch  # first up block of the shallow branch
        # Skip features the shallow up blocks consume: the first `_n_res` of the full
        # path's list [conv_in output, down block outputs...]; find the down blocks making them.
        self._n_res = sum(len(b.resnets) for b in unet.up_blocks[self._first_up :])
        made, n_down = 1, 0
        while made < self._n_res and n_down < len(unet.down_blocks):
            made += _n_outputs(unet.down_blocks[n_down])
            n_down += 1
        if made < self._n_res:
            raise ValueError(
                f"DeepCache branch {branch}: up blocks need {self._n_res} skip features but "
                f"the down path makes only {made}; unsupported UNet layout"
            )
        self._n_down = n_down  # down blocks the shallow path runs
        self._calls = 0
        self._cache: torch.Tensor | None = None
        self._cache_shape: tuple[int, ...] | None = None

    # -- passthrough ------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The wrapped UNet's dtype."""
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        """The wrapped UNet's device."""
        return self.unet.device

    @property
    def config(self) -> Any:
        """The wrapped UNet's config."""
        return self.unet.config

    # -- cache control ----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the cached feature: the next call is a full one (counters are kept)."""
        self._calls = 0
        self._cache = None
        self._cache_shape = None

    def skipped_blocks(self) -> list[str]:
        """Names of the submodules a shallow call does not run."""
        names = [f"down_blocks.{i}" for i in range(self._n_down, len(self.unet.down_blocks))]
        if self.unet.mid_block is not None:
            names.append("mid_block")
        names += [f"up_blocks.{i}" for i in range(self._first_up)]
        return names

    # -- forward ----------------------------------------------------------------------
    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
    ) -> Any:
        """The UNet's noise prediction, as ``(sample,)`` (or UNet2DConditionOutput)."""
        full = self._calls % self.interval == 0
        if not full and (self._cache is None or tuple(sample.shape) != self._cache_shape):
            raise RuntimeError(
                f"DeepCache: shallow call with input shape {tuple(sample.shape)} but the "
                f"cached feature is for {self._cache_shape}; call reset() before a new image"
            )
        out = self._forward(sample, timestep, encoder_hidden_states, full)
        self._calls += 1
        if full:
            self.full_calls += 1
        else:
            self.shallow_calls += 1
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        full: bool,
    ) -> torch.Tensor:
        """UNet2DConditionModel.forward for SD v1 configs, optionally on the shallow branch."""
        unet = self.unet
        factor = 2**unet.num_upsamplers
        forward_upsample_size = any(d % factor != 0 for d in sample.shape[-2:])
        in_shape = tuple(sample.shape)

        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0

        # time embedding
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)

        # down path, keeping the skip features
        sample = unet.conv_in(sample)
        res: tuple[torch.Tensor, ...] = (sample,)
        down_blocks = unet.down_blocks if full else unet.down_blocks[: self._n_down]
        for block in down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, out = block(
                    hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states
                )
            else:
                sample, out = block(hidden_states=sample, temb=emb)
            res += out

        if full:
            if unet.mid_block is not None:
                if getattr(unet.mid_block, "has_cross_attention", False):
                    sample = unet.mid_block(
                        sample, emb, encoder_hidden_states=encoder_hidden_states
                    )
                else:
                    sample = unet.mid_block(sample, emb)
            first = 0
        else:
            res = res[: self._n_res]
            sample = self._cache
            first = self._first_up

        # up path
        n_up = len(unet.up_blocks)
        for i in range(first, n_up):
            if i == self._first_up and full and self.interval > 1:
                self._cache = sample.detach()
                self._cache_shape = in_shape
            block = unet.up_blocks[i]
            n = len(block.resnets)
            skips, res = res[-n:], res[:-n]
            upsample_size = None
            if i != n_up - 1 and forward_upsample_size:
                upsample_size = res[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=skips,
                    encoder_hidden_states=encoder_hidden_states,
                    upsample_size=upsample_size,
                )
            else:
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=skips,
                    upsample_size=upsample_size,
                )

        # output head
        if unet.conv_norm_out is not None:
            sample = unet.conv_norm_out(sample)
            sample = unet.conv_act(sample)
        return unet.conv_out(sample)


def _is_diffusers_unet(unet: Any) -> bool:
    from diffusers.models import UNet2DConditionModel

    return isinstance(unet, UNet2DConditionModel)


def _n_outputs(block: Any) -> int:
    """How many skip features a down block returns (its resnets plus its downsamplers)."""
    downsamplers = getattr(block, "downsamplers", None)
    return len(block.resnets) + (len(downsamplers) if downsamplers is not None else 0)


def _check_supported(unet: Any) -> None:
    """ValueError for UNet features this re-implemented forward does not cover."""
    cfg = unet.config
    problems = []
    if getattr(unet, "class_embedding", None) is not None or cfg.get("class_embed_type"):
        problems.append("class embeddings")
    if cfg.get("num_class_embeds") is not None and "class embeddings" not in problems:
        problems.append("class embeddings")
    if getattr(unet, "add_embedding", None) is not None or cfg.get("addition_embed_type"):
        problems.append(f"addition embeddings ({cfg.get('addition_embed_type')})")
    if getattr(unet, "encoder_hid_proj", None) is not None or cfg.get("encoder_hid_dim_type"):
        problems.append(f"encoder_hid_proj ({cfg.get('encoder_hid_dim_type')})")
    if cfg.get("attention_type", "default") != "default" or hasattr(unet, "position_net"):
        problems.append(f"GLIGEN attention ({cfg.get('attention_type')})")
    if problems:
        raise ValueError(
            "DeepCache supports SD v1-style UNets only; this one uses: " + ", ".join(problems)
        )
