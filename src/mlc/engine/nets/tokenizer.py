"""CLIP's BPE tokenizer on the `tokenizers` library, ids equal to transformers 5's CLIPTokenizer.

The same pipeline transformers 5 builds for CLIP: NFC, whitespace runs to one space and
lower case; split on CLIP's word pattern, byte-level mapping; BPE with ``</w>`` ending each
word; the special tokens matched whole in the text. ``<bos> ids <eos>``, truncated and padded
here. Reads vocab.json, merges.txt and tokenizer_config.json (its ``added_tokens_decoder`` too;
special_tokens_map.json as a fallback). Folders it cannot match are refused with ValueError:
a tokenizer.json or added_tokens.json (transformers reads those instead or on top), or added
tokens outside the vocabulary. Imports nothing from transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

WORDS = (  # CLIP's word pattern, as transformers 5's CLIPTokenizer splits
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
SPECIALS = {  # CLIPTokenizer's defaults
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}
DEFAULT_MAX_LENGTH = 77  # CLIP's context; used when tokenizer_config.json names none


@dataclass
class Encoded:
    """What a call returns: ids and the matching attention mask (tensors or lists)."""

    input_ids: Any
    attention_mask: Any

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def _added(spec: str | dict[str, Any], special: bool = True) -> AddedToken:
    """An added token from its config form: a string or an AddedToken dict."""
    if isinstance(spec, str):
        return AddedToken(spec, special=special, normalized=False)
    flags = ("single_word", "lstrip", "rstrip", "normalized")
    special = bool(spec.get("special", special))
    return AddedToken(
        spec["content"], special=special, **{k: bool(spec[k]) for k in flags if k in spec}
    )


def _content(spec: str | dict[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec["content"])


class ClipTokenizer:
    """``tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")``."""

    def __init__(
        self,
        vocab: Path,
        merges: Path,
        specials: dict[str, Any],
        model_max_length: int,
        added: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.model_max_length = model_max_length
        names = {k: _content(v) for k, v in specials.items()}
        self.bos_token, self.eos_token = names["bos_token"], names["eos_token"]
        self.pad_token, self.unk_token = names["pad_token"], names["unk_token"]
        try:
            model = BPE.from_file(
                str(vocab),
                str(merges),
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=self.unk_token,
            )
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise ValueError(f"tokenizer: cannot read {vocab} / {merges}: {exc}") from exc
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        self.backend = tok
        # added_tokens_decoder's flags first; a special token it lacks is added after, and a
        # later one overrides an earlier one's flags, as transformers 5 ends up with them
        for index, spec in sorted((added or {}).items()):
            if tok.token_to_id(spec["content"]) != index:
                raise ValueError(f"tokenizer: added token {spec['content']!r} is not in vocab.json")
            tok.add_special_tokens([_added(spec)])
        known = {spec["content"] for spec in (added or {}).values()}
        order = ("unk_token", "bos_token", "eos_token", "pad_token")
        tok.add_special_tokens([_added(specials[k]) for k in order if names[k] not in known])
        self.bos_token_id = self._id(self.bos_token)
        self.eos_token_id = self._id(self.eos_token)
        self.pad_token_id = self._id(self.pad_token)

    def _id(self, token: str) -> int:
        found = self.backend.token_to_id(token)
        if found is None:
            raise ValueError(f"tokenizer: {token!r} is not in the vocabulary")
        return found

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipTokenizer:
        """Load from a diffusers ``tokenizer`` folder (vocab.json, merges.txt, configs)."""
        root = Path(folder)
        vocab, merges = root / "vocab.json", root / "merges.txt"
        for need in (vocab, merges):
            if not need.is_file():
                raise FileNotFoundError(f"tokenizer: {need} is missing")
        for other in ("tokenizer.json", "added_tokens.json"):
            if (root / other).exists():
                raise ValueError(f"tokenizer: {root / other} is not read here")
        config = _read_json(root / "tokenizer_config.json")
        added = {int(k): v for k, v in (config.get("added_tokens_decoder") or {}).items()}
        fallback = _read_json(root / "special_tokens_map.json")
        specials = {k: config.get(k) or fallback.get(k) or v for k, v in SPECIALS.items()}
        most = config.get("model_max_length") or DEFAULT_MAX_LENGTH
        return cls(vocab, merges, specials, int(min(most, 1 << 30)), added)

    def encode(self, text: str) -> list[int]:
        """The text's ids, without BOS/EOS."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool | str = False,
        return_tensors: str | None = None,
    ) -> Encoded:
        """Tokenize like transformers' tokenizer call for these arguments (one sequence each)."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        limit = max_length if max_length is not None else self.model_max_length
        if padding not in (False, True, "do_not_pad", "longest", "max_length"):
            raise ValueError(f"tokenizer: padding={padding!r} is not supported")
        if truncation not in (False, True, "do_not_truncate", "longest_first", "only_first"):
            raise ValueError(f"tokenizer: truncation={truncation!r} is not supported")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"tokenizer: return_tensors={return_tensors!r} is not supported")
        cut = truncation not in (False, "do_not_truncate")
        rows = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids[: max(limit - 2, 0)] if cut else enc.ids
            rows.append([self.bos_token_id, *ids, self.eos_token_id])
        if padding == "max_length":
            width = limit
        elif padding in (True, "longest"):
            width = max(len(r) for r in rows)
        else:
            width = 0
        masks = [[1] * len(r) + [0] * max(width - len(r), 0) for r in rows]
        for row in rows:
            row.extend([self.pad_token_id] * max(width - len(row), 0))
        if return_tensors == "pt":
            if len({len(r) for r in rows}) > 1:
                raise ValueError("tokenizer: rows differ in length; pad or truncate them")
            return Encoded(torch.tensor(rows, dtype=torch.long), torch.tensor(masks))
        if single:
            return Encoded(rows[0], masks[0])
        return Encoded(rows, masks)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else {}
