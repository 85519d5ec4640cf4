"""Device tuning that keeps the pixels (within float rounding): memory format and compile, and
the report of what the speed machinery did.

The UNet and VAE keep PyTorch's default memory format everywhere. ``channels_last`` (the
layout cuDNN's tensor-core convolutions want) measured slower for the SD v1 UNet on an H200
(one fp16 CFG-pair call: 34.3 ms against 25.5 ms, 2026-11-30) and on this project's CPUs;
the default format is also what diffusers' pipeline runs, so the engine's kernels are its
kernels (``tune(..., channels_last=True)`` keeps the old layout for measurements;
tests/support/gpu_probe.py times both). ``--compile``
wraps the UNet's forward in ``torch.compile`` (``dynamic=False``: one static graph per shape)
inside ``compilecache.CompiledUNet``: the compiled kernels go to a persistent cache beside the
converted weights (``$MLC_CACHE_DIR/inductor``) and, as one portable file per GPU, torch
version, dtype, architecture and shape, to ``$MLC_CACHE_DIR/compiled``; only the first run
anywhere pays the compile time.

Compile and CUDA graphs combine as "compile + our own graphs", not ``mode="reduce-overhead"``:
the compiled UNet is called inside ``cudagraphs.guided_eps`` and captured with the CFG pair and
the guidance combine in one graph (reduce-overhead's graph trees would cover the UNet alone,
and keep a second graph pool, warm-up policy and recapture logic beside ours). One mechanism,
one key, one fallback, for the exact and the compiled engine.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mlc.engine.compilecache import ARTIFACTS, ArtifactStore, CompiledUNet
from mlc.engine.cudagraphs import steps_for
from mlc.engine.env import cache_root


def tune(
    components: Any, device: str, *, compile: bool = False, channels_last: bool = False
) -> None:
    """Prepare loaded COMPONENTS for DEVICE (in place): ``channels_last`` (CUDA only, off by
    default: see above) and ``--compile``."""
    if channels_last and torch.device(device).type == "cuda":
        components.unet.to(memory_format=torch.channels_last)
        components.vae.to(memory_format=torch.channels_last)
    if compile:
        compile_unet(components)


def compile_unet(components: Any) -> CompiledUNet:
    """``torch.compile`` the UNet's forward, with the kernel caches made persistent."""
    root = cache_root()
    if root is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    unet = components.unet
    if not isinstance(unet.forward, CompiledUNet):
        from mlc.engine.modelimports import real_dynamo

        real_dynamo()  # the registrations the lean imports deferred, before dynamo traces
        compiled = torch.compile(unet.forward, dynamic=False)
        store = ArtifactStore(root / ARTIFACTS if root is not None else None)
        unet.forward = CompiledUNet(unet, compiled, store)
    return unet.forward


def report(unet: Any) -> dict[str, Any]:
    """What the speed machinery did for UNET so far: ``graphs`` (cudagraphs: captures and
    their seconds, replays, eager steps and why) and, with --compile, ``compile``
    (compilecache: first-call seconds and cache hits per shape)."""
    out: dict[str, Any] = {"graphs": steps_for(unet).report()}
    forward = getattr(unet, "forward", None)
    if isinstance(forward, CompiledUNet):
        out["compile"] = forward.report()
    return out
