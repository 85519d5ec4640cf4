"""A full-size SD v1.5 checkpoint with random weights, for benchmarks without real weights.

The architecture is the real one (the bundled ``CONFIG_DIR`` configs: UNet 859.5 M, VAE
83.7 M, text encoder 123.1 M parameters), written in the seed's format, an original
single-file ``.ckpt`` (fp32, ``{"state_dict": ...}``, 4.3 GB), so loading and sampling
cost what they cost with the real file. Built once (about 30 s + 15 s to save) and cached
under ``$MLC_BENCH_DIR`` (default ``~/.cache/mlc/bench/``); a complete file is reused.

CLI: ``python -m mlc.engine.fullsize [--dir DIR] [--format ckpt|safetensors]`` prints the path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from mlc.engine import CONFIG_DIR
from mlc.engine.env import bench_dir

NAME = "sd15-random"
SEED = 1234
MIN_BYTES = 4_000_000_000  # a complete fp32 file is 4.27 GB; anything smaller is partial


def build_fullsize(dest: Path, fmt: str = "ckpt", *, seed: int = SEED) -> Path:
    """Write ``dest/sd15-random.<fmt>`` unless a complete one is there; return its path."""
    path = Path(dest) / f"{NAME}.{fmt}"
    if path.is_file() and path.stat().st_size >= MIN_BYTES:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < 5 * 10**9:
        raise OSError(f"{path.parent}: {free / 1e9:.1f} GB free, the checkpoint needs 4.3 GB")
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mlc.engine.export import export_checkpoint

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIG_DIR / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(CONFIG_DIR / "text_encoder")))
    return export_checkpoint(unet, vae, text_encoder, path)


def main(argv: list[str] | None = None) -> int:
    """Build (once) and print the path of the full-size random checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m mlc.engine.fullsize",
        description="Build and cache a full-size SD v1.5 checkpoint with random weights.",
    )
    parser.add_argument(
        "--dir", default=None, help="where (default: $MLC_BENCH_DIR or ~/.cache/mlc/bench)"
    )
    parser.add_argument("--format", choices=["ckpt", "safetensors"], default="ckpt")
    args = parser.parse_args(argv)
    dest = Path(args.dir).expanduser() if args.dir else bench_dir()
    start = time.perf_counter()
    try:
        existed = (dest / f"{NAME}.{args.format}").is_file()
        path = build_fullsize(dest, args.format)
    except OSError as err:
        print(f"mlc-fullsize: error: {err}", file=sys.stderr)
        return 1
    if not existed:
        print(f"built {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
