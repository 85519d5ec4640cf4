"""The benchmark's baseline: plain diffusers, as a user would write it, in its own process.

``python -m mlc.engine.baseline CONFIG.json RESULT.json`` (started by ``mlc.engine.bench``)
imports torch and diffusers, loads the checkpoint with
``StableDiffusionPipeline.from_single_file(ckpt, config=<bundled config folder>)``
(diffusers' defaults otherwise), sets the same scheduler the engine uses, and makes each
image with ``generator=torch.Generator("cpu").manual_seed(seed + k)``. It records wall-clock
times (``time.time()``, comparable with the parent's launch time), the start and end of every
UNet call (forward hooks: the first one is "the first denoising step"), and peak memory.
Nothing from mlc is imported besides this light module and ``mlc.engine`` (environment only).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


class StepClock:
    """Wall-clock start and end of every denoising step: of every call of MODULE (the UNet),
    or, without one, of whatever calls ``pre()`` and ``post()`` (the engine's graphed step,
    whose replays run no UNet hook)."""

    def __init__(self, module: Any = None, *, sync: Any = None) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sync = sync  # called before an end is read (torch.cuda.synchronize on a GPU)
        if module is not None:
            module.register_forward_pre_hook(lambda *_: self.pre())
            module.register_forward_hook(lambda *_: self.post())

    def pre(self) -> None:
        self.starts.append(time.time())

    def post(self) -> None:
        if self.sync is not None:
            self.sync()
        self.ends.append(time.time())


def peak_memory(device: str) -> tuple[int, int | None]:
    """(peak host RSS in bytes, peak device memory allocated in bytes or None)."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    dev = None
    if device.startswith("cuda"):
        import torch

        dev = int(torch.cuda.max_memory_allocated())
    return host, dev


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The baseline's whole run; returns the raw timings (see ``mlc.engine.bench``)."""
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    t_imported = time.time()
    device = "cuda" if torch.cuda.is_available() and cfg["device"] in ("auto", "cuda") else "cpu"
    dtype = torch.float16 if device != "cpu" and cfg["precision"] == "autocast" else torch.float32
    pipe = StableDiffusionPipeline.from_single_file(
        cfg["ckpt"], config=cfg["config_dir"], torch_dtype=dtype, local_files_only=True
    )
    pipe.scheduler = getattr(diffusers, cfg["scheduler_class"])(**cfg["scheduler_kwargs"])
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    t_loaded = time.time()
    cpu_loaded = time.process_time()  # CPU seconds of all threads since launch: the load's work
    clock = StepClock(pipe.unet)
    outdir = Path(cfg["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(cfg["n_images"]):
        generator = torch.Generator("cpu").manual_seed(cfg["seed"] + k)
        start = time.time()
        image = pipe(
            cfg["prompt"],
            height=cfg["height"],
            width=cfg["width"],
            num_inference_steps=cfg["steps"],
            guidance_scale=cfg["scale"],
            negative_prompt=cfg["negative_prompt"] or None,
            generator=generator,
        ).images[0]
        seconds = time.time() - start
        path = outdir / f"{k:05d}.png"
        image.save(path)
        images.append({"seed": cfg["seed"] + k, "seconds": seconds, "file": str(path)})
    host, dev = peak_memory(device)
    return {
        "t_imported": t_imported,
        "t_loaded": t_loaded,
        "cpu_loaded": cpu_loaded,
        "unet_starts": clock.starts,
        "unet_ends": clock.ends,
        "images": images,
        "peak_host_bytes": host,
        "peak_device_bytes": dev,
        "device": device,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "t_end": time.time(),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m mlc.engine.baseline CONFIG.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    result = run(cfg)
    Path(args[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":  # importing mlc.engine has switched the hub off (offline())
    raise SystemExit(main())
