"""Past one device: a run's images sharded over several devices of this machine
(``--devices cpu,cpu`` / ``cuda:0,cuda:1`` / ``all``) or over a Ray cluster (``--ray``).

``run_scaled`` picks the back end and hands the run to ``dispatch.run``. Modules: ``flags``
(the command-line flags), ``plan`` (every image's file, fixed up front; ``--resume``),
``shard`` (one device's model, one image per call), ``pool`` (a process per device),
``rayrun`` (an actor per GPU or CPU slot; imports Ray, and only it does), ``dispatch`` (the
queue, progress and summary). docs/scale-out.md is the user's guide.
"""

from __future__ import annotations

from typing import Any

from mlc.engine import UsageError
from mlc.engine.spec import RunSpec


def expand_devices(devices: list[str], cuda_count: int | None = None) -> list[str]:
    """``all`` as every CUDA GPU this process sees (``cuda:0`` ...), ``cuda`` as ``cuda:0``;
    CUDA_COUNT: how many there are (default: ask torch)."""
    out: list[str] = []
    for device in devices:
        if device == "all":
            if cuda_count is None:
                import torch

                cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if not cuda_count:
                raise UsageError("--devices all: no CUDA GPU is visible here")
            out += [f"cuda:{i}" for i in range(cuda_count)]
        else:
            out.append("cuda:0" if device == "cuda" else device)
    return out


def run_scaled(spec: RunSpec) -> dict[str, Any]:
    """SPEC over its devices (or its Ray cluster); the run's summary."""
    from mlc.engine import loading
    from mlc.engine.scale.dispatch import run

    loading.resolve(spec.ckpt, spec.config)  # a missing file fails before any device starts
    if spec.ray:
        from mlc.engine.scale.rayrun import RayPool

        backend: Any = RayPool(spec)
    else:
        from mlc.engine.scale.pool import Pool

        backend = Pool(spec, expand_devices(spec.devices or [spec.device]))
    return run(spec, backend)
