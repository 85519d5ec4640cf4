"""Device tuning that keeps the pixels (within float rounding): memory format and compile.

On CUDA the UNet and VAE run in ``channels_last`` (the layout cuDNN's fast convolutions
want; on this project's CPUs it measured slower, so CPUs keep the default). ``--compile``
wraps the UNet's forward in ``torch.compile``; the compiled kernels go to a persistent
cache beside the converted weights (``$MLC_CACHE_DIR/inductor``), so only the first run
in a container pays the compile time.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mlc.engine.options import cache_root


def tune(components: Any, device: str, *, compile: bool = False) -> None:
    """Prepare loaded COMPONENTS for DEVICE (in place)."""
    if torch.device(device).type == "cuda":
        components.unet.to(memory_format=torch.channels_last)
        components.vae.to(memory_format=torch.channels_last)
    if compile:
        compile_unet(components)


def compile_unet(components: Any) -> None:
    """``torch.compile`` the UNet's forward, with the kernel cache made persistent."""
    root = cache_root()
    if root is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    unet = components.unet
    if not getattr(unet, "_mlc_compiled", False):
        unet.forward = torch.compile(unet.forward)
        unet._mlc_compiled = True
