"""CUDA graphs for the denoising step: the UNet call with its CFG pair and guidance combine,
captured once per shape and replayed at every step (on CUDA; everywhere else the plain eager
step, unchanged).

What a step is: ``guided_eps`` (concatenate the CFG pair, cast to the model's dtype, call the
UNet, cast back, split, ``uncond + scale * (cond - uncond)``). The eager engine calls it; the
graph captures that very function, so the replay runs the same kernels on the same data and
gives the same numbers. On a GPU an eager SD v1 UNet step is bound by the CPU launching ~1,000
small kernels (25.5 ms eager against 11.9 ms replayed on an H200: docs/benchmarks.md).

What stays eager, outside the graph: ``scheduler.scale_model_input`` and ``scheduler.step``.
diffusers' schedulers keep Python state (PLMS's history of model outputs, step indices) and
compute each step's coefficients on the host as CPU scalars; captured, those would be frozen at
the first step's values. A static update with per-step coefficients as device tensors is
possible for the linear samplers, but it runs other kernels than the scheduler's (CUDA divides
by a CPU scalar as a multiplication by its reciprocal, by a device tensor as a true division),
so it would not be pixel-identical to the eager engine without a GPU to prove it (see
docs/benchmarks.md, "CUDA graphs").

One graph per ``StepKey``: what the captured kernels depend on (batch, latent size, channels,
CFG and its scale, the prompt embedding's shape, model dtype, the timestep's dtype, device and
the UNet). A new key captures (the old graphs stay, up to ``capacity``, least recently used
dropped first, all in one memory pool: one step runs at a time); a known key replays. The
capture is paid once per key and per ``GraphedStep``, which lives as long as its UNet
(``steps_for``), so a warm worker pays it once per shape. Where a graph cannot be used the step
runs eagerly: on CPU and MPS (silently: nothing to gain there), with the speed modes that change
the UNet between calls (DeepCache, ToMe), with ``--low_vram`` (the UNet's weights move between
images) and when the capture fails (each with one note line, once).

The capture follows PyTorch's recipe: warm-up calls on a side stream (lazy initialisation,
cuDNN/cuBLAS heuristics, a ``--compile`` of this shape), then the capture, then a replay for the
step at hand. The graph backend is an interface (``GraphBackend``): ``CudaGraphs`` is the real
one; tests drive the bookkeeping with a recording stand-in.

Why one module of ~480 lines: the step, its key, the capture and the replay share one memory
pool and one set of invariants (what a graph may depend on); split, each part would need the
others' internals.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from mlc.engine import say

WARMUP_CALLS = 3  # PyTorch's docs warm up "a few" iterations before capturing
CAPACITY = 4  # graphs kept per UNet (one memory pool: about one graph's activations)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A denoising step's model part: (scaled latents, timestep) -> guided noise prediction."""


def guided_eps(
    unet: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    *,
    scale: float,
    cfg: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The UNet's noise prediction for LATENTS at timestep T with classifier-free guidance:
    the CFG pair ``[uncond, cond]`` in one call, then ``uncond + scale * (cond - uncond)``.

    LATENTS are the scheduler's scaled model input for the images (not doubled); the result has
    their dtype. COND is ``[uncond..., cond...]`` with CFG, else the prompts' embeddings."""
    model_input = torch.cat([latents] * 2) if cfg else latents
    eps = unet(model_input.to(dtype), t, encoder_hidden_states=cond, return_dict=False)[0]
    eps = eps.to(latents.dtype)
    if cfg:
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + scale * (eps_cond - eps_uncond)
    return eps


@dataclass(frozen=True)
class StepKey:
    """What a captured step depends on: a new key captures a new graph."""

    batch: int  # images per UNet call (the CFG pair not counted)
    channels: int  # latent channels
    height: int  # latent height (pixels / 8 for SD)
    width: int
    cfg: bool
    scale: float  # the guidance scale is a constant of the captured kernels (1.0 without CFG)
    text: tuple[int, ...]  # the prompt embedding per image: (tokens, width)
    dtype: str  # the model's dtype
    latents: str  # the latents' dtype (the scheduler's)
    timestep: str  # the timestep's dtype (the sampler's: int64 for DDIM/PLMS, float for Euler)
    device: str
    model: str  # which UNet (its class and identity)

    def label(self) -> str:
        """Short text for notes: ``64x64 latents, batch 1, CFG 7.5, float16``."""
        guidance = f"CFG {self.scale:g}" if self.cfg else "no CFG"
        return f"{self.width}x{self.height} latents, batch {self.batch}, {guidance}, {self.dtype}"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def step_key(
    unet: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    *,
    scale: float,
    cfg: bool,
    dtype: torch.dtype,
    device: torch.device | str,
) -> StepKey:
    """The key of one denoising step's inputs (LATENTS: the images' latents, not doubled)."""
    batch, channels, height, width = latents.shape
    return StepKey(
        batch=batch,
        channels=channels,
        height=height,
        width=width,
        cfg=cfg,
        scale=float(scale) if cfg else 1.0,
        text=tuple(cond.shape[1:]),
        dtype=_name(dtype),
        latents=_name(latents.dtype),
        timestep=_name(t.dtype),
        device=str(torch.device(device)),
        model=f"{type(unet).__name__}@{id(unet):x}",
    )


# -- why a step runs eagerly -----------------------------------------------------------------------

QUIET = ("no CUDA device", "off")
"""Reasons recorded but not announced: nothing to gain (CPU, MPS) or the user's own choice."""


def unsupported(*, deepcache: int = 0, tome: float = 0.0, low_vram: bool = False) -> str | None:
    """Why a run's speed or memory modes keep its steps eager (None: nothing does)."""
    if deepcache > 1:
        return "--deepcache runs a different part of the UNet at every step"
    if tome > 0:
        return "--tome merges tokens by data-dependent matching"
    if low_vram:
        return "--low_vram moves the UNet's weights between images"
    return None


# -- the graph backend -----------------------------------------------------------------------------


class GraphBackend(Protocol):
    """What GraphedStep needs from a graph implementation (``CudaGraphs``, or a test's)."""

    def new_pool(self) -> Any:
        """A memory pool handle that captures can share."""

    def warm_up(self, fn: Callable[[], Any], calls: int) -> None:
        """Call FN CALLS times on a side stream, then wait for it."""

    def capture(self, fn: Callable[[], torch.Tensor], pool: Any) -> tuple[Any, torch.Tensor]:
        """Capture FN into a graph using POOL; the graph and FN's (static) output tensor."""

    def replay(self, graph: Any) -> None:
        """Run the captured work again on the current inputs."""

    def synchronize(self) -> None:
        """Wait for the device (for honest timings of warm-up and capture)."""


class CudaGraphs:
    """The real backend: ``torch.cuda.CUDAGraph`` as PyTorch's docs describe it."""

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def warm_up(self, fn: Callable[[], Any], calls: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(calls):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn: Callable[[], torch.Tensor], pool: Any) -> tuple[Any, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        return graph, out

    def replay(self, graph: Any) -> None:
        graph.replay()

    def synchronize(self) -> None:
        torch.cuda.synchronize()


# -- the graphed step ------------------------------------------------------------------------------


@dataclass
class _Graph:
    """One captured step: the graph and its static buffers."""

    graph: Any
    latents: torch.Tensor  # static inputs, copied into before each replay
    t: torch.Tensor
    cond: torch.Tensor
    out: torch.Tensor  # static output, copied out after each replay


@dataclass
class Capture:
    """What one capture cost (seconds) and for which key."""

    key: StepKey
    warmup_s: float  # the warm-up calls (a --compile of this shape happens here)
    capture_s: float  # recording the graph


@dataclass
class GraphStats:
    """What a GraphedStep did: captures (with their cost), replays, eager steps and why."""

    captures: list[Capture] = field(default_factory=list)
    replays: int = 0
    eager_steps: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why eager -> steps run eagerly
    evictions: int = 0

    def as_json(self) -> dict[str, Any]:
        """For the run's summary and the benchmark's JSON."""
        return {
            "captures": [
                {
                    "key": asdict(c.key),
                    "label": c.key.label(),
                    "warmup_s": round(c.warmup_s, 4),
                    "capture_s": round(c.capture_s, 4),
                }
                for c in self.captures
            ],
            "capture_s": round(sum(c.capture_s for c in self.captures), 4),
            "replays": self.replays,
            "eager_steps": self.eager_steps,
            "eager_reasons": dict(self.reasons),
            "evictions": self.evictions,
        }


Clock = tuple[Callable[[], None], Callable[[], None]]
"""Called before and after every denoising step's model part (eager or replayed)."""


class GraphedStep:
    """The model part of the denoising step, graphed per ``StepKey`` on CUDA, eager elsewhere.

    ``bind(...)`` once per image (or batch) gives the step function for its loop; calling it
    with the scaled latents and the timestep returns the guided noise prediction (a fresh
    tensor: schedulers keep references to past outputs)."""

    def __init__(
        self,
        backend: GraphBackend | None = None,
        *,
        enabled: bool = True,
        capacity: int = CAPACITY,
        warmup: int = WARMUP_CALLS,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend  # None: CudaGraphs, made when first needed
        self.enabled = enabled
        self.capacity = max(1, capacity)
        self.warmup = warmup
        self.note = note or (lambda text: say(f"note: {text}"))
        self.graphs: OrderedDict[StepKey, _Graph] = OrderedDict()
        self.failed: dict[StepKey, str] = {}  # keys whose capture failed: eager from then on
        self.stats = GraphStats()
        self.clocks: list[Clock] = []  # the benchmark's step clock (replays run no UNet hook)
        self._pool: Any = None
        self._noted: set[str] = set()

    # -- the interface the denoise loop uses ----------------------------------------------------
    def bind(
        self,
        unet: Any,
        cond: torch.Tensor,
        *,
        scale: float,
        cfg: bool,
        dtype: torch.dtype,
        device: torch.device | str,
        why_eager: str | None = None,
    ) -> EpsFn:
        """The step function for one image's (or batch's) loop: graphed when it can be,
        otherwise ``guided_eps`` itself. WHY_EAGER: the run's reason not to graph (see
        ``unsupported``), None when nothing in the run prevents it."""
        reason = why_eager
        if reason is None and not self.enabled:
            reason = "off"
        if reason is None and torch.device(device).type != "cuda" and self.backend is None:
            reason = "no CUDA device"
        if reason is not None:
            step = self._eager(unet, cond, scale=scale, cfg=cfg, dtype=dtype, reason=reason)
        else:
            step = _Bound(self, unet, cond, scale=scale, cfg=cfg, dtype=dtype, device=device)
        return self._clocked(step)

    def begin_run(self) -> None:
        """A new run: its fallback notes are said again (once each)."""
        self._noted.clear()

    def report(self) -> dict[str, Any]:
        """The stats as JSON (capture seconds per key, replays, eager steps and why)."""
        return self.stats.as_json()

    # -- internals -------------------------------------------------------------------------
    def _eager(self, unet: Any, cond: torch.Tensor, *, reason: str, **kw: Any) -> EpsFn:
        self._explain(reason)

        def step(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self._tick(reason)
            return guided_eps(unet, latents, t, cond, **kw)

        return step

    def _clocked(self, step: EpsFn) -> EpsFn:
        """STEP with the clocks around it (a first step's time includes its capture)."""
        if not self.clocks:
            return step
        clocks = list(self.clocks)

        def timed(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            for pre, _ in clocks:
                pre()
            eps = step(latents, t)
            for _, post in clocks:
                post()
            return eps

        return timed

    def _tick(self, reason: str) -> None:
        self.stats.eager_steps += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1

    def _explain(self, reason: str) -> None:
        if reason in QUIET or reason in self._noted:
            return
        self._noted.add(reason)
        self.note(f"CUDA graphs off for these steps: {reason} (eager steps, same pixels)")

    def _backend(self) -> GraphBackend:
        if self.backend is None:
            self.backend = CudaGraphs()
        return self.backend

    def _capture(
        self,
        key: StepKey,
        make: Callable[[torch.Tensor], EpsFn],
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
    ) -> _Graph:
        """Warm up and capture the step for KEY on static copies of its first inputs."""
        backend = self._backend()
        if self._pool is None:  # shared by this UNet's graphs: a graph's intermediates may
            # reuse another's, which is safe because steps never overlap and each output is
            # copied out right after its replay; the static inputs live outside the pool
            self._pool = backend.new_pool()
        x, ts, c = latents.clone(), t.to(latents.device, copy=True), cond.clone()
        eps = make(c)

        def call() -> torch.Tensor:
            return eps(x, ts)

        start = time.perf_counter()
        backend.warm_up(call, self.warmup)
        backend.synchronize()
        warmed = time.perf_counter()
        graph, out = backend.capture(call, self._pool)
        backend.synchronize()
        self.stats.captures.append(Capture(key, warmed - start, time.perf_counter() - warmed))
        return _Graph(graph, x, ts, c, out)

    def _graph_for(
        self,
        key: StepKey,
        make: Callable[[torch.Tensor], EpsFn],
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
    ) -> _Graph | None:
        """The graph of KEY: known, newly captured, or None (capture failed: eager)."""
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return self.graphs[key]
        if key in self.failed:
            return None
        try:
            graph = self._capture(key, make, latents, t, cond)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self.failed[key] = f"capture failed for {key.label()}: {type(exc).__name__}: {first}"
            return None
        while len(self.graphs) >= self.capacity:
            self.graphs.popitem(last=False)
            self.stats.evictions += 1
        self.graphs[key] = graph
        cost = self.stats.captures[-1]
        self.note(
            f"CUDA graph for {key.label()}: warm-up {cost.warmup_s:.2f} s, capture "
            f"{cost.capture_s:.2f} s (once per shape while the model stays loaded)"
        )
        return graph


class _Bound:
    """GraphedStep.bind's step function for one loop: captures (or finds) its graph at the
    first call, replays it at every call."""

    def __init__(self, owner: GraphedStep, unet: Any, cond: torch.Tensor, **kw: Any) -> None:
        self.owner = owner
        self.unet = unet
        self.cond = cond
        self.device = kw.pop("device")
        self.kw = kw  # scale, cfg, dtype
        self.graph: _Graph | None = None
        self.eager: EpsFn | None = None

    def make(self, cond: torch.Tensor) -> EpsFn:
        """The eager step on COND (what the graph captures)."""
        unet, kw = self.unet, self.kw

        def eps(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return guided_eps(unet, latents, t, cond, **kw)

        return eps

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.eager is not None:
            return self.eager(latents, t)
        owner = self.owner
        if self.graph is None:
            if not isinstance(t, torch.Tensor):
                return self._run_eagerly("the timestep is not a tensor", latents, t)
            key = step_key(self.unet, latents, t, self.cond, device=self.device, **self.kw)
            graph = owner._graph_for(key, self.make, latents, t, self.cond)
            if graph is None:
                return self._run_eagerly(owner.failed[key], latents, t)
            graph.cond.copy_(self.cond)  # this loop's prompts (a known graph had others)
            self.graph = graph
        graph = self.graph
        graph.latents.copy_(latents)
        graph.t.copy_(t)
        owner._backend().replay(graph.graph)
        owner.stats.replays += 1
        return graph.out.clone()  # the next replay overwrites graph.out

    def _run_eagerly(self, reason: str, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.eager = self.owner._eager(self.unet, self.cond, reason=reason, **self.kw)
        return self.eager(latents, t)


_STEPS: weakref.WeakKeyDictionary[Any, GraphedStep] = weakref.WeakKeyDictionary()


def steps_for(unet: Any) -> GraphedStep:
    """The GraphedStep of a loaded UNet, made on first use and kept as long as the UNet lives
    (so a session, a warm worker or a benchmark pays each capture once per shape)."""
    step = _STEPS.get(unet)
    if step is None:
        step = _STEPS[unet] = GraphedStep()
    return step
