"""The engine's own models (``mlc.engine.nets``) against diffusers' and transformers' classes
on one device and dtype, from one converted-cache entry (docs/benchmarks.md, issue 11).

``python tests/support/native_vs_library.py CKPT [--device D] [--dtype float16] [--json OUT]
[--size 64]``: loads CKPT's cached weights into both sets of classes, feeds each the same
inputs (a prompt's token ids; a latent, a timestep and a text embedding; a latent to
decode) and prints one JSON object: whether each output is bit-identical and its largest
difference, and each UNet call's time (median of 5, after one warm-up). On CUDA the
kernels either set picks are the same calls, so the outputs should be identical there too;
this is where that is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def _load(ckpt: str, device: str, dtype: Any, native: bool) -> Any:
    from mlc.engine.loading import load

    os.environ["MLC_NATIVE_MODELS"] = "1" if native else "0"
    return load(ckpt, device=device, dtype=dtype)


def _timed(fn: Any, sync: Any) -> tuple[Any, float]:
    out = fn()  # warm-up
    times = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    os.environ.setdefault("MLC_CACHE_MIN_BYTES", "0")  # the native path reads the cache
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    _load(args.ckpt, "cpu", dtype, native=False)  # makes sure the cache entry exists
    sets = {
        name: _load(args.ckpt, args.device, dtype, name == "native")
        for name in ("native", "library")
    }
    kinds = {name: type(c.unet).__module__ for name, c in sets.items()}
    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    latent = torch.randn(2, 4, side, side, generator=gen).to(args.device, dtype)
    decode_in = torch.randn(1, 4, side, side, generator=gen).to(args.device, dtype)
    outputs: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    with torch.no_grad():
        for name, c in sets.items():
            ids = c.tokenizer(
                ["a photograph of an astronaut riding a horse", ""],
                padding="max_length",
                max_length=c.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(args.device)
            text = c.text_encoder(ids, attention_mask=None)[0]
            t = torch.tensor(500, device=args.device)
            eps, times[name] = _timed(
                lambda c=c, text=text, t=t: c.unet(
                    latent, t, encoder_hidden_states=text, return_dict=False
                )[0],
                sync,
            )
            image = c.vae.decode(decode_in, return_dict=False)[0]
            outputs[name] = {"ids": ids, "text": text, "eps": eps, "image": image}
    result: dict[str, Any] = {
        "ckpt": args.ckpt,
        "device": args.device,
        "dtype": args.dtype,
        "classes": kinds,
        "unet_call_s": times,
    }
    for part in ("ids", "text", "eps", "image"):
        a, b = outputs["native"][part], outputs["library"][part]
        result[f"{part}_identical"] = bool(torch.equal(a, b))
        result[f"{part}_max_diff"] = float((a.double() - b.double()).abs().max())
    result["native_used"] = kinds["native"].startswith("mlc.engine.nets")
    result["identical"] = result["native_used"] and all(
        result[f"{p}_identical"] for p in ("ids", "text", "eps", "image")
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
