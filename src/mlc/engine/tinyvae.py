"""Tiny VAE (TAESD): an opt-in, much faster decoder for the final latents.

TAESD (https://github.com/madebyollin/taesd, diffusers' ``AutoencoderTiny``) is a small
distilled autoencoder with the same latent space as SD v1's VAE. Decoding with it is much
cheaper than with the full ``AutoencoderKL``, at the cost of some pixel deviation.

Weights: the ``madebyollin/taesd`` repository layout (a folder with ``config.json`` and
``diffusion_pytorch_model.safetensors``) or that single ``.safetensors`` file, which then
uses the bundled config (``configs/taesd/config.json``). Files are read locally with
safetensors, never through the model hub, and no pickled code is ever run.

Scaling: diffusers' ``StableDiffusionPipeline`` decodes with
``vae.decode(latents / vae.config.scaling_factor)``, also when ``vae`` is an
``AutoencoderTiny``. TAESD's published ``scaling_factor`` is 1.0: it was trained on SD's
diffusion-space latents (already multiplied by 0.18215), so the denoise loop's latents go
in unchanged. ``decode`` follows the same formula, so a config with another factor works too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlc.engine import EngineError
from mlc.engine.checkpoint import first_line, read_safetensors
from mlc.engine.loading import assign_weights
from mlc.engine.modelimports import quiet_libraries

TAESD_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "taesd"
"""The bundled AutoencoderTiny config of SD v1's TAESD (no weights)."""

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "AutoencoderTiny"
_PREFIXES = ("encoder.", "decoder.")


class TinyVaeError(EngineError):
    """The tiny VAE's weights or config are missing, unreadable or not TAESD's."""


def _locate(path: Path) -> tuple[Path, Path]:
    """(weights file, config file) for a repo-layout folder or a single .safetensors file."""
    if not path.exists():
        raise TinyVaeError(f"tiny VAE not found: {path.resolve()}")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise TinyVaeError(
                f"{path} holds no {WEIGHTS_NAME} (expected the madebyollin/taesd layout: "
                f"config.json + {WEIGHTS_NAME})"
            )
        config = path / "config.json"
        return weights, config if config.is_file() else TAESD_CONFIG_DIR / "config.json"
    if path.suffix != ".safetensors":
        raise TinyVaeError(
            f"{path} is not a .safetensors file: pass TAESD's {WEIGHTS_NAME} or its folder"
        )
    return path, TAESD_CONFIG_DIR / "config.json"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TinyVaeError(f"cannot read tiny VAE config {path}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise TinyVaeError(f"tiny VAE config {path} is not a JSON object")
    kind = data.get("_class_name", CLASS_NAME)
    if kind != CLASS_NAME:
        raise TinyVaeError(f"{path} is a config for {kind}, not {CLASS_NAME} (TAESD)")
    return data


def _read_weights(path: Path) -> dict[str, Any]:
    state = read_safetensors(path, lambda why: TinyVaeError(f"cannot read tiny VAE {path}: {why}"))
    if not any(k.startswith(_PREFIXES) for k in state):
        sample = ", ".join(list(state)[:3]) or "none"
        what = (
            "a Stable Diffusion checkpoint"
            if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in state)
            else "a decoder-only or original-format TAESD file"
            if state and all(k.split(".", 1)[0].isdigit() for k in state)
            else "not TAESD weights"
        )
        raise TinyVaeError(
            f"{path} is {what}: no encoder.*/decoder.* weights of diffusers' {CLASS_NAME} "
            f"(keys start: {sample}); use madebyollin/taesd's {WEIGHTS_NAME}"
        )
    return state


def load_tiny_vae(path: str | Path, *, device: Any = "cpu", dtype: Any = None) -> Any:
    """TAESD as an ``AutoencoderTiny`` on ``device`` in ``dtype`` (default fp32), in eval mode.

    ``path`` is a folder in the madebyollin/taesd layout (``config.json`` +
    ``diffusion_pytorch_model.safetensors``; the bundled config when the folder has none) or
    a single ``.safetensors`` file (bundled config). TinyVaeError (an EngineError, one line)
    when the file is missing, unreadable or does not match the config.
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers.models import AutoencoderTiny

    quiet_libraries()
    dtype = dtype or torch.float32
    weights, config_file = _locate(Path(path).expanduser())
    config = _read_config(config_file)
    state = _read_weights(weights)
    try:
        with init_empty_weights():
            model = AutoencoderTiny.from_config(config)
    except (TypeError, ValueError) as err:
        raise TinyVaeError(f"invalid tiny VAE config {config_file}: {first_line(err)}") from None
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    mismatch = f"{weights} does not match the {CLASS_NAME} config {config_file}"
    assign_weights(model, tensors, lambda why: TinyVaeError(f"{mismatch}{why}"))
    model.eval().requires_grad_(False)
    if torch.device(device).type != "cpu":
        model.to(device)
    return model


def decode(tiny_vae: Any, latents: Any) -> Any:
    """SD diffusion-space latents ``[N, 4, h, w]`` -> images ``[N, 3, 8h, 8w]`` in [-1, 1].

    The same contract as ``AutoencoderKL.decode(latents / 0.18215).sample``: the result (in
    the tiny VAE's dtype, on its device) goes straight to ``generate.to_pil``.
    """
    import torch

    channels = int(tiny_vae.config.latent_channels)
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise TinyVaeError(
            f"the tiny VAE decodes [N, {channels}, h, w] latents, not {list(latents.shape)}"
        )
    with torch.no_grad():
        scaled = latents / tiny_vae.config.scaling_factor  # 1.0 for TAESD (as diffusers does)
        image = tiny_vae.decode(
            scaled.to(device=tiny_vae.device, dtype=tiny_vae.dtype), return_dict=False
        )[0]
        return image.clamp(-1.0, 1.0)


def build_random_tiny_vae(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight TAESD (the bundled config's real architecture); return its path.

    A ``path`` ending in ``.safetensors`` gets the single file (fp32, about 10 MB, like the
    published one); any other ``path`` becomes a folder in the madebyollin/taesd layout
    (``config.json`` + ``diffusion_pytorch_model.safetensors``). The same ``seed`` writes the
    same bytes; the global torch RNG is left as it was. For tests and benchmarks only: its
    images are noise.
    """
    import shutil

    import torch
    from diffusers.models import AutoencoderTiny
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    config = _read_config(TAESD_CONFIG_DIR / "config.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderTiny.from_config(config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        weights = path
    else:
        path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TAESD_CONFIG_DIR / "config.json", path / "config.json")
        weights = path / WEIGHTS_NAME
    weights.parent.mkdir(parents=True, exist_ok=True)
    partial = weights.with_name(weights.name + ".partial")
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.replace(weights)
    return path
