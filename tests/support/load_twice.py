"""First against second ``loading.load`` in one process (docs/benchmarks.md, issue 11).

``python tests/support/load_twice.py CKPT [--device D] [--dtype float16] [--json OUT]``:
times ``import torch``, the model classes' imports (what the one-shot path imports: the
engine's own models, ``mlc.engine.nets``; with ``MLC_NATIVE_MODELS=0`` diffusers' and
transformers' through ``modelimports``), then ``loading.load(CKPT)`` twice in the same
process, and prints one JSON object (also written to OUT). On CUDA each load ends with
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import torch

    t_torch = time.perf_counter()
    from mlc.engine.env import native_models
    from mlc.engine.loading import load

    if native_models():
        import mlc.engine.nets.models
        import mlc.engine.nets.tokenizer  # noqa: F401
    else:
        from mlc.engine.modelimports import model_classes, quiet_libraries, tokenizer_class

        quiet_libraries()
        model_classes()
        tokenizer_class()
    t_imports = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        components = load(args.ckpt, device=args.device, dtype=dtype)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        classes = type(components.unet).__module__ + "." + type(components.unet).__name__
        del components
    result = {
        "ckpt": args.ckpt,
        "device": args.device,
        "dtype": args.dtype,
        "unet_class": classes,
        "import_torch_s": t_torch - t0,
        "import_models_s": t_imports - t_torch,
        "first_load_s": times[0],
        "second_load_s": times[1],
        "first_over_second": times[0] / times[1],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
