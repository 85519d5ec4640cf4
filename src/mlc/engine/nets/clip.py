"""SD v1's CLIP text encoder in plain torch, bit for bit transformers' ``CLIPTextModel``.

Same module tree and state-dict keys as transformers 5's ``CLIPTextModel`` (``embeddings.*``,
``encoder.layers.N.*``, ``final_layer_norm.*``; no persistent buffers), the same torch calls in
the same order (attention through ``scaled_dot_product_attention`` with ``is_causal=True`` when
nothing is padded, as transformers' default "sdpa" path does), so outputs are ``torch.equal``.
Imports nothing from transformers or diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlc.engine.nets.layers import Config, Net

DEFAULTS: dict[str, Any] = {  # CLIPTextConfig's defaults
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "eos_token_id": 49407,
}
ACTIVATIONS = ("quick_gelu", "gelu")
OLD_PREFIX = "text_model."  # transformers 4's key prefix, still found in saved checkpoints


def check_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the first setting of CONFIG this encoder does not implement."""
    cfg = Config({**DEFAULTS, **config})
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"CLIP text config: hidden_act {cfg.hidden_act!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"CLIP text config: hidden_size {cfg.hidden_size} is not a multiple of "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    if not isinstance(cfg.eos_token_id, int):
        raise ValueError(f"CLIP text config: eos_token_id {cfg.eos_token_id!r} is not one int")
    if not cfg.get("is_causal", True):
        raise ValueError("CLIP text config: is_causal=False (bidirectional) is not supported")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


def embedding(count: int, dim: int) -> nn.Embedding:
    """``nn.Embedding(count, dim)``, its random init skipped on the meta device: ``normal_``
    there goes through torch's refs, which import ``torch._dynamo`` (over 1 s)."""
    weight = torch.empty(count, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(count, dim, _weight=weight)


class Embeddings(nn.Module):
    """Token plus learned position embeddings."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.token_embedding = embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length, most = input_ids.shape[-1], self.position_embedding.weight.shape[0]
        if length > most:
            raise ValueError(f"{length} tokens is more than max_position_embeddings ({most})")
        # weight[:length] holds the rows position_ids 0..length-1 would gather; no buffer needed
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class Attention(nn.Module):
    """Multi-head self-attention (causal, optionally with a padding mask)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.head_dim = dim // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = float(cfg.attention_dropout)
        self.k_proj = nn.Linear(dim, dim)  # this order keeps CLIPTextModel's key order
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length = x.shape[:-1]
        shape = (batch, length, -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and length > 1,
            scale=self.scale,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    """fc1, activation, fc2."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.act = quick_gelu if cfg.hidden_act == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """The stack of blocks."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def sdpa_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Causal boolean mask ``[batch, 1, L, L]`` with padding applied, or None (plain causal)
    when nothing is padded, as transformers builds it for "sdpa"."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        raise ValueError("attention_mask must be 2-D [batch, length]")
    keep = attention_mask.to(torch.bool)
    if bool(keep.all()):
        return None
    pos = torch.arange(length, device=keep.device)
    causal = pos[:, None] >= pos[None, :]
    return causal[None, None] & keep[:, None, None, :]


class TextEncoder(Net):
    """CLIP text transformer: ``forward(ids)`` -> ``(last_hidden_state, pooled_output)``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        check_config(config)
        self.config = Config({**DEFAULTS, **config})
        self.eos_token_id: int = self.config.eos_token_id
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        self.final_layer_norm = nn.LayerNorm(
            self.config.hidden_size, eps=self.config.layer_norm_eps
        )
        self.register_load_state_dict_pre_hook(_old_keys)
        self.eval()  # as transformers' models come

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the final layer norm, and each row's state at its EOS token."""
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        hidden = self.embeddings(input_ids)
        if attention_mask is not None:
            attention_mask = attention_mask.to(hidden.device)
        mask = sdpa_mask(attention_mask, input_ids.shape[-1])
        hidden = self.final_layer_norm(self.encoder(hidden, mask))
        ids = input_ids.to(dtype=torch.int, device=hidden.device)
        if self.eos_token_id == 2:  # old configs: EOS is the highest id in each row
            where = ids.argmax(dim=-1)
        else:  # the first EOS in each row
            where = (ids == self.eos_token_id).int().argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), where]
        return hidden, pooled


def _old_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load hook: accept ``text_model.``-prefixed keys and drop the old ``position_ids``."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.startswith(OLD_PREFIX):
            name = name[len(OLD_PREFIX) :]
        if name == "embeddings.position_ids":
            del state_dict[key]
        elif prefix + name != key:
            state_dict[prefix + name] = state_dict.pop(key)
