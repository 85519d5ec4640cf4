"""Checkpoint -> components, offline, without executing pickled code.

Accepts original single-file checkpoints (``.ckpt``, ``.safetensors``: the layout of
``v1-5-pruned-emaonly.ckpt``) and diffusers model folders. The configuration comes from,
in this order: ``--config`` (an original inference YAML or a diffusers config folder), a
sidecar beside the checkpoint (``<stem>.config/`` folder, then ``<stem>.yaml``), else the
bundled SD v1 folder. Missing parts of a config folder (tokenizer, scheduler) come from
the bundle. No model hub is ever contacted.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlc.engine import CONFIG_DIR, V1_INFERENCE_YAML, EngineError, offline

offline()

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
SETUP_HINT = "get it with `mlc setup NAME stable-diffusion-v1-5` on the host, or pass --ckpt PATH"
CLASSIC_CONFIG = "configs/stable-diffusion/v1-inference.yaml"
SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


class CheckpointError(EngineError):
    """The checkpoint is missing, unsafe, corrupt or not an SD v1 model."""


def convert_hint(path: Path) -> str:
    """How to turn a pickle that needs code execution into safetensors, once, if trusted."""
    out = path.with_suffix(".safetensors")
    return (
        'if you trust this file, convert it once to safetensors: python -c "import torch; '
        "from safetensors.torch import save_file; "
        f"sd = torch.load('{path}', map_location='cpu', weights_only=False); "
        "sd = sd.get('state_dict', sd); "
        "save_file({k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
        f"'{out}')\" and pass --ckpt {out}"
    )


@dataclass
class ModelSource:
    """Where the weights and the configuration come from."""

    path: Path  # the checkpoint file or diffusers model folder
    is_folder: bool
    config_dir: Path  # diffusers config folder (parts may fall back to the bundle)
    yaml: dict[str, Any] | None = None  # original inference config, when one is used
    config_label: str = "bundled sd-v1"

    def part(self, name: str) -> Path:
        """The folder for one component: the model's own, else the bundled one."""
        own = self.config_dir / name
        return own if own.is_dir() else CONFIG_DIR / name


@dataclass
class Components:
    """Everything generation needs, on one device and dtype."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    schedule: dict[str, Any]  # training schedule for samplers.scheduler_config
    name: str  # model name for metadata (file stem)
    model_hash: str | None  # A1111 "Model hash" (legacy 8-hex form)
    source: ModelSource
    load_seconds: float = 0.0

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD v1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Latent channels (4 for SD v1)."""
        return int(self.unet.config.in_channels)


def sidecar_config(ckpt: Path) -> Path | None:
    """The A1111-style config beside a checkpoint: ``<stem>.config/`` or ``<stem>.yaml``."""
    folder = ckpt.with_name(ckpt.stem + ".config")
    if folder.is_dir():
        return folder
    yaml_file = ckpt.with_suffix(".yaml")
    return yaml_file if yaml_file.is_file() else None


def resolve(ckpt: str | Path, config: str | Path | None = None) -> ModelSource:
    """Find the weights and the configuration; cheap (no torch), raises CheckpointError."""
    path = Path(ckpt).expanduser()
    if not path.exists():
        other = [path.with_suffix(s) for s in (".safetensors", ".ckpt") if s != path.suffix]
        found = [p for p in other if p.is_file()]
        if path.suffix in SUFFIXES and found:
            path = found[0]
        else:
            raise CheckpointError(f"checkpoint not found: {path.resolve()}", hint=SETUP_HINT)
    is_folder = path.is_dir()
    if is_folder and not ((path / "unet").is_dir() or (path / "model_index.json").is_file()):
        raise CheckpointError(
            f"{path} is a directory but not a diffusers model folder (no unet/ or model_index.json)"
        )
    if config is not None:
        cfg = Path(config).expanduser()
        if not cfg.exists() and cfg.as_posix().endswith(CLASSIC_CONFIG):
            cfg = V1_INFERENCE_YAML  # the classic default path: use the bundled copy
        if not cfg.exists():
            raise CheckpointError(f"config not found: {cfg.resolve()}")
    elif is_folder:
        cfg = path
    else:
        cfg = sidecar_config(path) or CONFIG_DIR
    if cfg.is_dir():
        label = "bundled sd-v1" if cfg == CONFIG_DIR else str(cfg)
        return ModelSource(path, is_folder, cfg, None, label)
    return ModelSource(path, is_folder, CONFIG_DIR, read_yaml(cfg), str(cfg))


def read_yaml(path: Path) -> dict[str, Any]:
    """An original inference YAML (safe_load); CheckpointError when it is not one."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read config {path}: {err}") from None
    try:
        params = data["model"]["params"]
        params["unet_config"]["params"]
        params["first_stage_config"]["params"]["ddconfig"]
    except (TypeError, KeyError):
        raise CheckpointError(
            f"{path} is not an original inference config (no model.params.unet_config / "
            "first_stage_config): pass an SD v1 YAML like v1-inference.yaml or a diffusers "
            "config folder"
        ) from None
    return data


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A single-file state dict, read without executing code; CheckpointError otherwise."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"cannot read {path}: not a valid safetensors file ({err})"
            ) from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            if not found:
                raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint") from None
            raise CheckpointError(
                f"refusing to load {path}: unpickling it would run code ({found.group(1)}), "
                "and checkpoints are read without code execution",
                hint=convert_hint(path),
            ) from None
        except OSError as err:
            raise CheckpointError(f"cannot read {path}: {err}") from None
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise CheckpointError(
                f"cannot read {path}: not a PyTorch checkpoint ({type(err).__name__})"
            ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"{path} holds no state dict")
    return sd


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def check_sd_v1(sd: dict[str, Any], path: Path) -> None:
    """CheckpointError unless ``sd`` has the three SD v1 parts."""
    if any(k.startswith("cond_stage_model.model.") or k.startswith("conditioner.") for k in sd):
        raise CheckpointError(
            f"{path} is an SD 2.x/XL checkpoint (OpenCLIP text encoder); this engine runs SD v1"
        )
    missing = [
        what
        for prefix, what in (
            (UNET_PREFIX, "UNet (model.diffusion_model.*)"),
            (VAE_PREFIX, "VAE (first_stage_model.*)"),
            (TEXT_PREFIX, "text encoder (cond_stage_model.transformer.*)"),
        )
        if not any(k.startswith(prefix) for k in sd)
    ]
    if missing:
        sample = ", ".join(list(sd)[:3]) or "none"
        raise CheckpointError(
            f"{path} is not a Stable Diffusion v1 checkpoint: no {' or '.join(missing)} "
            f"weights (keys start: {sample})"
        )


def legacy_model_hash(path: Path) -> str | None:
    """A1111's original 'Model hash': sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    try:
        with path.open("rb") as fh:
            fh.seek(0x100000)
            return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    except OSError:
        return None


def schedule_of(source: ModelSource) -> dict[str, Any]:
    """The model's training schedule (betas, steps, prediction type)."""
    if source.yaml is not None:
        params = source.yaml["model"]["params"]
        prediction = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
        return {
            "num_train_timesteps": int(params.get("timesteps", 1000)),
            "beta_start": float(params.get("linear_start", 0.00085)),
            "beta_end": float(params.get("linear_end", 0.012)),
            "beta_schedule": "scaled_linear",
            "prediction_type": prediction,
        }
    cfg_file = source.part("scheduler") / "scheduler_config.json"
    data = json.loads(cfg_file.read_text(encoding="utf-8"))
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    return {k: data[k] for k in keys if k in data}


def load_tokenizer(source: ModelSource) -> Any:
    """The CLIP tokenizer from local files only."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(source.part("tokenizer")), local_files_only=True)


def yaml_text_config(source: ModelSource) -> dict[str, Any]:
    """CLIP text config overrides from an original YAML (an mlc extension, usually empty).

    ``model.params.cond_stage_config.params.text_config`` may hold CLIPTextConfig values
    (e.g. ``hidden_size``) for non-ViT-L/14 encoders; the bundled ViT-L/14 config is the base.
    """
    if source.yaml is None:
        return {}
    cond = source.yaml["model"]["params"].get("cond_stage_config") or {}
    extra = (cond.get("params") or {}).get("text_config") or {}
    return dict(extra) if isinstance(extra, dict) else {}


def _text_encoder_from_state(
    sd: dict[str, Any], config_dir: Path, dtype: Any, overrides: dict[str, Any] | None = None
) -> Any:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(
        str(config_dir), local_files_only=True, **(overrides or {})
    )
    with init_empty_weights():
        model = CLIPTextModel(config)
    want_prefix = any(k.startswith("text_model.") for k in model.state_dict())
    weights = {}
    for key, value in sd.items():
        if not key.startswith(TEXT_PREFIX) or key.endswith("position_ids"):
            continue
        name = key[len(TEXT_PREFIX) :]
        has_prefix = name.startswith("text_model.")
        if has_prefix and not want_prefix:
            name = name[len("text_model.") :]
        elif want_prefix and not has_prefix:
            name = "text_model." + name
        weights[name] = value.to(dtype)
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            "the checkpoint's text encoder does not match its config "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    try:
        model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"text encoder does not match its config: {_first_line(err)}"
        ) from None
    return model


def _first_line(err: BaseException, *, skip_header: bool = False) -> str:
    """The first non-blank line of an error (SKIP_HEADER: of its details, for torch's
    "Error(s) in loading state_dict ...:" header line)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if skip_header and len(lines) > 1:
        lines = lines[1:]
    return lines[0] if lines else type(err).__name__


def load(
    ckpt: str | Path,
    config: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: Any = None,
) -> Components:
    """Load UNet, VAE, text encoder and tokenizer for ``ckpt`` onto ``device`` in ``dtype``."""
    import time

    import torch

    start = time.perf_counter()
    quiet_libraries()
    dtype = dtype or torch.float32
    source = resolve(ckpt, config)
    tokenizer = _Background(load_tokenizer, source)  # overlaps the weights (thread)
    if source.is_folder:
        unet, vae, text_encoder = _load_folder(source, dtype)
        model_hash = legacy_model_hash(_first_weights(source.path / "unet"))
    else:
        model_hash = legacy_model_hash(source.path)
        cached = converted_cache(source, dtype, model_hash)
        loaded = cached.load() if cached is not None else None
        if loaded is None:
            loaded = _load_single_file(source, dtype)
            if cached is not None:
                cached.save(*loaded)
        unet, vae, text_encoder = loaded
    for model in (unet, vae, text_encoder):
        if torch.device(device).type != "cpu":
            model.to(device)
        model.eval().requires_grad_(False)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer.result(),
        schedule=schedule_of(source),
        name=source.path.stem if not source.is_folder else source.path.name,
        model_hash=model_hash,
        source=source,
        load_seconds=time.perf_counter() - start,
    )


def quiet_libraries() -> None:
    """Keep diffusers/transformers from printing warnings meant for library developers."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def _first_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return folder / "missing"


def _load_single_file(source: ModelSource, dtype: Any) -> tuple[Any, Any, Any]:
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

    sd = read_checkpoint(source.path)
    check_sd_v1(sd, source.path)
    parts = []
    for cls, name in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        if source.yaml is not None:
            kwargs: dict[str, Any] = {"original_config": source.yaml}
        else:
            kwargs = {"config": str(source.part(name).parent), "subfolder": source.part(name).name}
        try:
            parts.append(
                cls.from_single_file(sd, local_files_only=True, torch_dtype=dtype, **kwargs)
            )
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{source.path} does not match config {source.config_label} ({name}): "
                f"{_first_line(err)}"
            ) from None
    parts.append(
        _text_encoder_from_state(sd, source.part("text_encoder"), dtype, yaml_text_config(source))
    )
    return parts[0], parts[1], parts[2]


def _load_folder(source: ModelSource, dtype: Any) -> tuple[Any, Any, Any]:
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = str(source.path)
    try:
        unet = UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", local_files_only=True, torch_dtype=dtype
        )
        vae = AutoencoderKL.from_pretrained(
            root, subfolder="vae", local_files_only=True, torch_dtype=dtype
        )
        text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load diffusers folder {root}: {_first_line(err)}") from None
    return unet, vae, text_encoder


class _Background:
    """Run ``fn(*args)`` in a daemon thread; ``result()`` waits and re-raises its error."""

    def __init__(self, fn: Any, *args: Any) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the caller in result()
            self._error = err

    def result(self) -> Any:
        """The function's value (or its exception, raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


# -- converted cache ----------------------------------------------------------------------
# A single-file checkpoint is converted (original -> diffusers key names, target dtype) on
# every load. The first load of a large file also writes the converted weights, with each
# model's config, to one safetensors file in a cache folder; later loads memory-map that file
# and assign its tensors straight into models built on the meta device (no random init, no
# key conversion, no torch.load, no single-file machinery). The entry is keyed by the
# checkpoint's resolved path, size, mtime, A1111 hash, config and dtype: any change makes it
# stale, and a stale entry is rebuilt, never used.

CACHE_VERSION = "1"
CACHE_MIN_BYTES = 256 * 2**20  # smaller checkpoints load fast anyway: not worth the disk


def cache_root() -> Path | None:
    """``$MLC_CACHE_DIR`` (``off`` disables), else ``~/.cache/mlc/converted``."""
    env = os.environ.get("MLC_CACHE_DIR", "")
    if env.lower() in ("0", "off", "no", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlc" / "converted"


def _cache_min_bytes() -> int:
    try:
        return int(os.environ.get("MLC_CACHE_MIN_BYTES", CACHE_MIN_BYTES))
    except ValueError:
        return CACHE_MIN_BYTES


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

    def load(self) -> tuple[Any, Any, Any] | None:
        """(unet, vae, text_encoder) from the entry, or None when missing, stale or unreadable."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("mlc_key") != self.key:
                    return None  # stale: the checkpoint, its config or the dtype changed
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            configs = json.loads(meta["configs"])
            return _models_from_state(state, configs)
        except Exception:  # noqa: BLE001 - a broken entry is rebuilt from the checkpoint
            return None

    def save(self, unet: Any, vae: Any, text_encoder: Any) -> None:
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
                "text_encoder": text_encoder.config.to_dict(),
            }
            meta = {"format": "pt", "mlc_key": self.key, "configs": json.dumps(configs)}
            save_file(state, str(tmp), metadata=meta)
            tmp.replace(self.path)
        except (OSError, ValueError, RuntimeError):
            tmp.unlink(missing_ok=True)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=list))


def converted_cache(
    source: ModelSource, dtype: Any, model_hash: str | None = None
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
    if st.st_size < _cache_min_bytes():
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
    state: dict[str, Any], configs: dict[str, dict[str, Any]]
) -> tuple[Any, Any, Any]:
    """Build the three models on the meta device and assign the (memory-mapped) tensors."""
    from accelerate import init_empty_weights
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for key, value in state.items():
        prefix, _, name = key.partition(".")
        parts[prefix][name] = value
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
    for model, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        model.load_state_dict(parts[name], strict=True, assign=True)
        if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
            raise ValueError(f"{name}: incomplete cache entry")
    return unet, vae, text_encoder
