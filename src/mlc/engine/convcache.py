"""The converted cache: a single-file checkpoint's models, converted once, memory-mapped after.

A single-file checkpoint is converted (original -> diffusers key names, target dtype) on
every load. The first load of a large file also writes the converted weights, with each
model's config, to one safetensors file in a cache folder (``env.cache_root()``:
``$MLC_CACHE_DIR``); later loads memory-map that file and assign its tensors straight into
models built on the meta device (no random init, no key conversion, no torch.load, no
single-file machinery). The entry is keyed by the checkpoint's resolved path, size, mtime,
A1111 hash, config and dtype: any change makes it stale, and a stale entry is rebuilt,
never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc.engine.checkpoint import ModelSource, legacy_model_hash, load_state, text_keys_for
from mlc.engine.env import cache_min_bytes, cache_root

if TYPE_CHECKING:
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    Models = tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]
    """(unet, vae, text_encoder)."""
    Weights = tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]
    """(tensors by prefixed name, configs by model): a cache entry as read."""

CACHE_VERSION = "1"


def _config_fingerprint(source: ModelSource) -> str:
    digest = hashlib.sha256()
    if source.yaml is not None:
        digest.update(json.dumps(source.yaml, sort_keys=True, default=str).encode())
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        cfg = source.part(name)
        for f in sorted(cfg.glob("*.json")) if cfg.is_dir() else ():
            digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class ConvertedCache:
    """One cache entry: ``path`` holds the converted weights when its key matches ``key``."""

    path: Path
    key: str
    size: int  # bytes of the source checkpoint (for the free-space check)

    def valid(self) -> bool:
        """Whether the entry exists and was made from this very checkpoint, config and dtype."""
        if not self.path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                return (fh.metadata() or {}).get("mlc_key") == self.key
        except Exception:  # noqa: BLE001 - unreadable: not valid
            return False

    def read(self, device: str = "cpu") -> Weights | None:
        """The entry's tensors, put straight onto DEVICE in the dtype they were saved in (the
        key's), and the models' configs; None when missing, stale or unreadable. Needs no
        model code: it can run in a thread while the model classes are imported."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device=device) as fh:
                meta = fh.metadata() or {}
                if meta.get("mlc_key") != self.key:
                    return None  # stale: the checkpoint, its config or the dtype changed
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            return state, json.loads(meta["configs"])
        except Exception:  # noqa: BLE001 - a broken entry is rebuilt from the checkpoint
            return None

    def load(
        self, device: str = "cpu", weights: Weights | None = None, *, native: bool = True
    ) -> Models | None:
        """(unet, vae, text_encoder) on DEVICE from the entry (or from WEIGHTS, what ``read``
        returned), or None when missing, stale or unreadable. NATIVE: the engine's own
        models where their configs allow (``mlc.engine.nets``), else the libraries'."""
        weights = weights if weights is not None else self.read(device)
        if weights is None:
            return None
        try:
            return _models_from_state(*weights, native=native)
        except Exception:  # noqa: BLE001 - a broken entry is rebuilt from the checkpoint
            return None

    def save(
        self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
    ) -> None:
        """Write the entry (atomically); a failure (disk full, read-only) only skips it."""
        from safetensors.torch import save_file

        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.path.parent).free < self.size * 1.2 + 2**30:
                return
            state: dict[str, Any] = {}
            for prefix, model in (("unet.", unet), ("vae.", vae), ("text_encoder.", text_encoder)):
                for k, v in model.state_dict().items():
                    state[prefix + k] = v.detach().to("cpu").contiguous()
            configs = {
                "unet": _plain(dict(unet.config)),
                "vae": _plain(dict(vae.config)),
                "text_encoder": _text_config(text_encoder),
            }
            meta = {"format": "pt", "mlc_key": self.key, "configs": json.dumps(configs)}
            save_file(state, str(tmp), metadata=meta)
            tmp.replace(self.path)
        except (OSError, ValueError, RuntimeError):
            tmp.unlink(missing_ok=True)


def _text_config(text_encoder: Any) -> dict[str, Any]:
    """The text encoder's config as a dict: transformers' ``to_dict()``, or ours (a dict)."""
    config = text_encoder.config
    return config.to_dict() if hasattr(config, "to_dict") else _plain(dict(config))


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=list))


def converted_cache(
    source: ModelSource, dtype: torch.dtype, model_hash: str | None = None
) -> ConvertedCache | None:
    """The cache entry for a single-file checkpoint, or None (disabled, small file, folder)."""
    root = cache_root()
    if root is None or source.is_folder:
        return None
    try:
        real = source.path.resolve()
        st = real.stat()
    except OSError:
        return None
    if st.st_size < cache_min_bytes():
        return None
    ident = [
        CACHE_VERSION,
        str(real),
        st.st_size,
        st.st_mtime_ns,
        model_hash or legacy_model_hash(real),
        _config_fingerprint(source),
        str(dtype),
    ]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    name = hashlib.sha256(f"{real}|{dtype}".encode()).hexdigest()[:20]
    return ConvertedCache(root / f"{real.stem}-{name}.safetensors", key, st.st_size)


def _models_from_state(
    state: dict[str, torch.Tensor], configs: dict[str, dict[str, Any]], *, native: bool = True
) -> Models:
    """Build the three models on the meta device (no memory, no random init) and make the
    tensors their own (no copy: their device and dtype are the models'). The engine's own
    models (``mlc.engine.nets``) when their configs are ones they implement, else
    diffusers' and transformers' classes."""
    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for key, value in state.items():
        prefix, _, name = key.partition(".")
        parts[prefix][name] = value
    models = _native_models(configs) if native else None
    if models is None:
        models = _library_models(configs)
    parts["text_encoder"] = text_keys_for(models[2], parts["text_encoder"])
    device = next(iter(state.values())).device if state else None
    for model, name in zip(models, ("unet", "vae", "text_encoder"), strict=True):
        load_state(model, parts[name], strict=True)
        if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
            raise ValueError(f"{name}: incomplete cache entry")
        if device is not None:
            model.to(device)  # the buffers the entry does not hold (position_ids); no copy else
    return models


def _native_models(configs: dict[str, dict[str, Any]]) -> Models | None:
    """The engine's own models for CONFIGS, or None when a config needs the libraries'."""
    from mlc.engine.nets.models import build

    try:
        return build(configs)
    except ValueError:
        return None


def _library_models(configs: dict[str, dict[str, Any]]) -> Models:
    """diffusers' UNet and VAE and transformers' CLIP text model for CONFIGS."""
    from accelerate import init_empty_weights

    from mlc.engine.modelimports import model_classes, no_init_weights, quiet_libraries

    unet_cls, vae_cls, text_cls, text_config_cls = model_classes()
    quiet_libraries()
    with init_empty_weights(), no_init_weights():
        unet = unet_cls.from_config(configs["unet"])
        vae = vae_cls.from_config(configs["vae"])
        text_encoder = text_cls(text_config_cls.from_dict(configs["text_encoder"]))
    return unet, vae, text_encoder
