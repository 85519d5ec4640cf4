"""``--compile``'s kernels kept across processes and containers, and what the compile cost.

``torch.compile`` spends most of a first run's minute on inductor: generating and compiling
Triton (GPU) or C++ (CPU) kernels. Two caches keep that work:

- the inductor cache folder (``TORCHINDUCTOR_CACHE_DIR``, set by ``mlc.engine.accel`` to
  ``$MLC_CACHE_DIR/inductor``): FX graphs, AOTAutograd graphs and kernels, reused by any
  later process that sees the same folder;
- torch's cache artefacts (``torch.compiler.save_cache_artifacts`` /
  ``load_cache_artifacts``, torch 2.7 and later): the same entries of one process in one
  portable file. Here: ``$MLC_CACHE_DIR/compiled/<key>.bin``, one per ``CompileKey`` (torch
  and CUDA version, GPU, dtype, UNet architecture, input shape), loaded before the first
  compiled call of a shape, written after a first call that compiled anything. A file can
  be copied into another container or baked into an image; a fresh cache folder then hits.

A fresh process still traces the model with dynamo (seconds, not a minute); the kernels and
graphs come from the caches. Each shape's first call is timed and its cache hits and misses
counted (inductor's FX-graph cache and AOTAutograd's cache counters), for the run's report and
the benchmark's JSON (``CompiledUNet.report``).

The model part of the key is the UNet's architecture (its config), not its weights: the
compiled code takes the weights as inputs, so fine-tunes of one architecture share kernels.
The UNet is compiled with ``dynamic=False``: one static graph per shape (the best kernels, and
what a CUDA graph needs); a new shape compiles once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ARTIFACTS = "compiled"  # the artefact files' folder under $MLC_CACHE_DIR

COUNTERS = {  # (counter group, name) -> our field
    ("inductor", "fxgraph_cache_hit"): "fxgraph_hits",
    ("inductor", "fxgraph_cache_miss"): "fxgraph_misses",
    ("aot_autograd", "autograd_cache_hit"): "aot_hits",
    ("aot_autograd", "autograd_cache_miss"): "aot_misses",
}


@dataclass(frozen=True)
class CompileKey:
    """What compiled kernels depend on: a file per key."""

    torch: str  # torch.__version__
    cuda: str | None  # torch.version.cuda (None: a CPU build)
    device: str  # the GPU's name and compute capability, or "cpu"
    dtype: str
    model: str  # hash of the UNet's architecture (its config)
    shape: tuple[int, ...]  # the UNet's input: (batch with the CFG pair, channels, h, w)
    mode: str = "default"  # torch.compile's mode

    def digest(self) -> str:
        """16 hex digits of a hash of every field."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def filename(self) -> str:
        """``unet-2x4x64x64-float16-<digest>.bin``: readable, unique per key."""
        shape = "x".join(str(n) for n in self.shape)
        return f"unet-{shape}-{self.dtype}-{self.digest()}.bin"


def device_name(device: torch.device | str) -> str:
    """The GPU's name and compute capability (``NVIDIA H200 sm90``), or the device type."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"


def model_id(module: Any) -> str:
    """A hash of a model's class and config (its architecture): diffusers' UNet and the
    engine's own (``mlc.engine.nets``) share configs, not compiled code."""
    config = getattr(module, "config", None)
    data = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    if config is not None:
        data["config"] = dict(config)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compile_key(
    module: Any, sample: torch.Tensor, *, mode: str = "default", device_label: str | None = None
) -> CompileKey:
    """The key of compiling MODULE for input SAMPLE (its shape, dtype and device)."""
    return CompileKey(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=device_label or device_name(sample.device),
        dtype=str(sample.dtype).replace("torch.", ""),
        model=model_id(module),
        shape=tuple(sample.shape),
        mode=mode,
    )


class ArtifactStore:
    """The artefact files under ROOT (None: off)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def path(self, key: CompileKey) -> Path | None:
        """Where KEY's file is (or would be); None when the store is off."""
        return None if self.root is None else self.root / key.filename()

    def load(self, key: CompileKey) -> str:
        """Hot-load KEY's artefacts into torch's caches: ``hit``, ``miss`` (no file), ``off``
        or ``unreadable: ...`` (a broken file is ignored; the compile then runs)."""
        path = self.path(key)
        if path is None:
            return "off"
        if not path.is_file():
            return "miss"
        try:
            info = torch.compiler.load_cache_artifacts(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the run
            return f"unreadable: {type(exc).__name__}: {str(exc)[:120]}"
        return "hit" if info is not None else f"unreadable: torch did not accept {path.name}"

    def save(self, key: CompileKey) -> Path | None:
        """Write this process's compile artefacts as KEY's file (atomically); its path, or None
        when off or there is nothing to save."""
        path = self.path(key)
        if path is None:
            return None
        saved = torch.compiler.save_cache_artifacts()
        if not saved:
            return None
        data, _info = saved
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path


def counters() -> dict[str, int]:
    """The compile caches' hit and miss counters so far in this process (zeros if torch
    keeps none under these names)."""
    try:
        from torch._dynamo.utils import counters as dynamo_counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return dict.fromkeys(COUNTERS.values(), 0)
    return {ours: int(dynamo_counters[group][name]) for (group, name), ours in COUNTERS.items()}


@dataclass
class CompileRecord:
    """One shape's first compiled call."""

    shape: tuple[int, ...]
    artifacts: str  # hit, miss, off or unreadable: ... (see ArtifactStore.load)
    compile_s: float  # the first call: trace + compile (or cache load) + one run
    counts: dict[str, int] = field(default_factory=dict)  # COUNTERS' fields, this call's share
    saved: str | None = None  # the artefact file written after it

    @property
    def reused(self) -> bool:
        """Whether the kernels came from a cache (no FX graph compiled anew)."""
        return self.counts.get("fxgraph_misses", 0) == 0 and self.counts.get("fxgraph_hits", 0) > 0

    def as_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "artifacts": self.artifacts,
            "compile_s": round(self.compile_s, 3),
            "reused": self.reused,
            **self.counts,
            "saved": self.saved,
        }


class CompiledUNet:
    """A UNet's compiled forward with the artefact cache around each shape's first call.

    Installed as ``unet.forward`` (``mlc.engine.accel``). A known shape goes straight to the
    compiled function (nothing else: it may be running under a CUDA graph capture)."""

    def __init__(
        self,
        module: Any,
        compiled: Callable[..., Any],
        store: ArtifactStore,
        *,
        mode: str = "default",
        device_label: str | None = None,
    ) -> None:
        self.compiled = compiled
        self.store = store
        self.mode = mode
        self.device_label = device_label  # tests: the device part of the key
        self.model = model_id(module)
        self.records: dict[tuple[int, ...], CompileRecord] = {}
        self._module = module

    def __call__(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shape = tuple(sample.shape)
        if shape in self.records:
            return self.compiled(sample, *args, **kwargs)
        key = compile_key(self._module, sample, mode=self.mode, device_label=self.device_label)
        loaded = self.store.load(key)
        before = counters()
        start = time.perf_counter()
        out = self.compiled(sample, *args, **kwargs)
        if sample.device.type == "cuda":
            torch.cuda.synchronize(sample.device)
        seconds = time.perf_counter() - start
        after = counters()
        counts = {k: after[k] - before[k] for k in after}
        record = CompileRecord(shape, loaded, seconds, counts)
        if loaded != "hit" or counts["fxgraph_misses"] or counts["aot_misses"]:
            with contextlib.suppress(OSError):
                path = self.store.save(key)
                record.saved = str(path) if path else None
        self.records[shape] = record
        return out

    def report(self) -> dict[str, Any]:
        """Per shape: artefacts hit/miss, first-call seconds, cache counters, file written."""
        records = [r.as_json() for r in self.records.values()]
        return {
            "compile_s": round(sum(r.compile_s for r in self.records.values()), 3),
            "compile_cache": _overall([r.artifacts for r in self.records.values()]),
            "shapes": records,
        }


def _overall(states: list[str]) -> str:
    """One word for the run: hit (every shape), miss (any shape), off, or none (no call)."""
    if not states:
        return "none"
    if all(s == "hit" for s in states):
        return "hit"
    if all(s == "off" for s in states):
        return "off"
    return "miss"
