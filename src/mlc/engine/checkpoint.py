"""Checkpoint files: find the weights and their configuration, and read them safely.

Accepts original single-file checkpoints (``.ckpt``, ``.safetensors``: the layout of
``v1-5-pruned-emaonly.ckpt``) and diffusers model folders. The configuration comes from,
in this order: ``--config`` (an original inference YAML or a diffusers config folder), a
sidecar beside the checkpoint (``<stem>.config/`` folder, then ``<stem>.yaml``), else the
bundled SD v1 folder. Missing parts of a config folder (tokenizer, scheduler) come from
the bundle. Pickles are read without executing code; no model hub is ever contacted.
``resolve`` is cheap (no torch): a missing file fails before anything heavy is imported.
Building the models from what is read is ``mlc.engine.loading``'s.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc.engine import CONFIG_DIR, V1_INFERENCE_YAML, EngineError

if TYPE_CHECKING:
    import torch

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
        sd = read_safetensors(path, lambda why: CheckpointError(f"cannot read {path}: {why}"))
    else:
        try:
            mmap = {"mmap": _is_zip(path)} if accepts(torch.load, "mmap") else {}  # torch >= 2.1
            sd = torch.load(path, map_location="cpu", weights_only=True, **mmap)
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


def read_safetensors(path: Path, error: Callable[[str], Exception]) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, on the CPU; ``error(why)`` is raised when it is not one
    (WHY: ``not a valid safetensors file (<first line of the reason>)``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise error(f"not a valid safetensors file ({first_line(err)})") from None


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether FN takes a parameter NAME (a feature test: torch 2.0 has no ``torch.load(mmap=)``
    and no ``load_state_dict(assign=)``, added in 2.1)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def load_state(model: torch.nn.Module, weights: dict[str, Any], *, strict: bool = True) -> None:
    """``model.load_state_dict(weights, strict=strict, assign=True)``: the tensors of WEIGHTS
    become the model's own (MODEL may be built on the meta device), their dtype kept. Where
    ``assign`` is missing (torch 2.0), each tensor is put in place by hand the same way; a
    size mismatch or an unknown key is a RuntimeError worded as torch words it."""
    import torch

    if accepts(model.load_state_dict, "assign"):
        model.load_state_dict(weights, strict=strict, assign=True)
        return
    expected = dict(model.state_dict(keep_vars=True))
    errors = [f'Unexpected key(s) in state_dict: "{k}". ' for k in weights if k not in expected]
    if strict:
        errors += [f'Missing key(s) in state_dict: "{k}". ' for k in expected if k not in weights]
    for key, value in weights.items():
        old = expected.get(key)
        if old is not None and tuple(old.shape) != tuple(value.shape):
            errors.append(
                f"size mismatch for {key}: copying a param with shape {value.shape} from "
                f"checkpoint, the shape in current model is {old.shape}."
            )
    if errors:
        name = type(model).__name__
        raise RuntimeError(f"Error(s) in loading state_dict for {name}:\n\t" + "\n\t".join(errors))
    for key, value in weights.items():
        path, _, leaf = key.rpartition(".")
        module = model.get_submodule(path)
        if leaf in module._parameters:
            old = module._parameters[leaf]
            grad = bool(old is not None and old.requires_grad)
            module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=grad)
        else:
            module._buffers[leaf] = value


def text_weights(sd: dict[str, Any]) -> dict[str, Any]:
    """A single file's CLIP text encoder weights, named without ``TEXT_PREFIX`` (the
    ``position_ids`` buffer left out: the models make their own)."""
    return {
        k[len(TEXT_PREFIX) :]: v
        for k, v in sd.items()
        if k.startswith(TEXT_PREFIX) and not k.endswith("position_ids")
    }


def text_keys_for(model: torch.nn.Module, weights: dict[str, Any]) -> dict[str, Any]:
    """A text encoder's WEIGHTS named as MODEL names them: transformers 4's CLIPTextModel
    puts them under ``text_model.``, transformers 5's and the engine's own do not."""
    want = any(k.startswith("text_model.") for k in model.state_dict())
    has = any(k.startswith("text_model.") for k in weights)
    if want == has:
        return weights
    if want:
        return {f"text_model.{k}": v for k, v in weights.items()}
    return {k.removeprefix("text_model."): v for k, v in weights.items()}


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


def _own_config(source: ModelSource) -> bool:
    """Whether SOURCE has a config folder of its own (not the bundled SD v1 one, no YAML)."""
    return source.yaml is None and source.config_dir != CONFIG_DIR


CLASSIC_SIZE = 512
"""SD v1's image side in pixels: the default --H/--W for a model whose config names none."""


def native_size(source: ModelSource) -> int:
    """The side in pixels a model was trained at: its own config folder's UNet
    ``sample_size`` times its VAE's downsampling factor; CLASSIC_SIZE for the bundled SD v1
    config, an original YAML, or a config folder without those fields."""
    if not _own_config(source):
        return CLASSIC_SIZE
    try:
        unet = json.loads((source.config_dir / "unet" / "config.json").read_text("utf-8"))
        vae = json.loads((source.config_dir / "vae" / "config.json").read_text("utf-8"))
        size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return CLASSIC_SIZE
    return size if size > 0 else CLASSIC_SIZE


CLASSIC_SCALE = 7.5
"""The classic guidance scale: the default --scale for a model whose config names none."""
DEFAULTS_FILE = "defaults.json"
"""In a model's own config folder: what it recommends where the user gives nothing
(``{"scale": 2.5}``); the engine reads only the keys it knows."""


def recommended_scale(source: ModelSource) -> float:
    """The guidance scale a model's own config folder recommends (``defaults.json``'s
    ``scale``), else CLASSIC_SCALE (SD v1's bundled config, an original YAML, none given)."""
    if not _own_config(source):
        return CLASSIC_SCALE
    try:
        data = json.loads((source.config_dir / DEFAULTS_FILE).read_text("utf-8"))
        scale = float(data["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return CLASSIC_SCALE
    return scale if scale >= 0 else CLASSIC_SCALE


def first_line(err: BaseException, *, skip_header: bool = False) -> str:
    """The first non-blank line of an error (SKIP_HEADER: of its details, for torch's
    "Error(s) in loading state_dict ...:" header line)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if skip_header and len(lines) > 1:
        lines = lines[1:]
    return lines[0] if lines else type(err).__name__
