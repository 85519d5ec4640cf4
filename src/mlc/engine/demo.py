"""A tiny random-weight SD-v1-architecture model, for demos, tests and CI.

``build_demo_checkpoint(dest_dir)`` writes ``<name>.safetensors`` (or ``.ckpt``) in the
original single-file layout plus its sidecar config folder ``<name>.config/`` beside it,
so ``mlc-txt2img --ckpt DEST/<name>.safetensors`` runs with no ``--config``. The tokenizer
is the bundled CLIP one. The weights are random (the images are noise-like patterns),
deterministic from a fixed seed: the same call writes the same bytes.

``install_shapes(dest_dir)`` writes the trained demo model instead (``mlc.engine.shapes``:
a tiny model trained on synthetic shapes, shipped inside the package), in the same layout:
what ``mlc setup NAME demo`` installs.

CLI: ``python -m mlc.engine.demo DEST [--format safetensors|ckpt] [--name NAME] [--shapes]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from mlc.engine import CONFIG_DIR

DEMO_NAME = "mlc-demo-tiny"
DEMO_SEED = 20240601

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 32, 32, 32],  # four levels: downsamples by 8, like SD's
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "vocab_size": 49408,  # the real CLIP tokenizer
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def tiny_components(seed: int = DEMO_SEED) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder): tiny randomly initialised models, deterministic from ``seed``."""
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    for model in (unet, vae, text_encoder):
        model.eval().requires_grad_(False)
    return unet, vae, text_encoder


def write_config_folder(dest: Path, unet: Any, vae: Any, text_encoder: Any) -> Path:
    """A diffusers config folder (no weights) for these models; scheduler from the bundle."""
    dest.mkdir(parents=True, exist_ok=True)
    unet.save_config(dest / "unet")
    vae.save_config(dest / "vae")
    text_encoder.config.save_pretrained(dest / "text_encoder")
    shutil.copytree(CONFIG_DIR / "scheduler", dest / "scheduler", dirs_exist_ok=True)
    index = json.loads((CONFIG_DIR / "model_index.json").read_text(encoding="utf-8"))
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return dest


def sidecar_dir(checkpoint: Path) -> Path:
    """The config folder that belongs beside ``checkpoint``: ``<stem>.config/``."""
    return checkpoint.with_name(checkpoint.stem + ".config")


def build_demo_checkpoint(
    dest_dir: str | Path, *, name: str = DEMO_NAME, fmt: str = "safetensors", seed: int = DEMO_SEED
) -> Path:
    """Write the tiny model as ``dest_dir/<name>.<fmt>`` plus ``<name>.config/``; return the file.

    ``fmt`` is ``"safetensors"`` or ``"ckpt"``. Weights are stored in fp16 (about 4 MB) and
    load as fp32.
    """
    import torch

    from mlc.engine.export import save_checkpoint, to_original_state_dict

    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', not {fmt!r}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    unet, vae, text_encoder = tiny_components(seed)
    path = dest / f"{name}.{fmt}"
    write_config_folder(sidecar_dir(path), unet, vae, text_encoder)
    state = to_original_state_dict(unet, vae, text_encoder)
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    return save_checkpoint(state, path)


def install_shapes(
    dest_dir: str | Path, *, name: str = DEMO_NAME, fmt: str = "safetensors"
) -> Path:
    """Write the trained shapes model that ships with mlc (``mlc.engine.shapes``) as
    ``dest_dir/<name>.<fmt>`` plus ``<name>.config/``; return the file. Nothing is downloaded."""
    from mlc.engine.export import save_checkpoint
    from mlc.engine.shapes.model import shipped_checkpoint

    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', not {fmt!r}")
    source = shipped_checkpoint()
    if not source.is_file():
        raise OSError(f"the shipped shapes model is missing: {source}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.{fmt}"
    shutil.copytree(sidecar_dir(source), sidecar_dir(path), dirs_exist_ok=True)
    if fmt == "safetensors":
        shutil.copyfile(source, path)
        return path
    from safetensors.torch import load_file

    return save_checkpoint(load_file(str(source)), path)


def main(argv: list[str] | None = None) -> int:
    """``python -m mlc.engine.demo DEST``: write the tiny demo model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m mlc.engine.demo",
        description="Write the tiny random-weight model, or (--shapes) the trained demo model.",
    )
    parser.add_argument("dest", help="directory to write into")
    parser.add_argument("--format", choices=["safetensors", "ckpt"], default="safetensors")
    parser.add_argument("--name", default=DEMO_NAME, help="file stem (default: %(default)s)")
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="the trained shapes model shipped with mlc (draws the prompt's shape) instead",
    )
    args = parser.parse_args(argv)
    try:
        if args.shapes:
            path = install_shapes(args.dest, name=args.name, fmt=args.format)
        else:
            path = build_demo_checkpoint(args.dest, name=args.name, fmt=args.format)
    except OSError as err:
        print(f"mlc-demo: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
