"""The graphed denoising step (mlc.engine.cudagraphs) on the CPU: shape keys, when a graph is
captured, reused or dropped, why a step runs eagerly, and that every path gives the eager
engine's numbers bit for bit.

No GPU here: the capture bookkeeping runs against ``Recorder``, a stand-in for
``torch.cuda.CUDAGraph`` that records what it is asked to do and replays by recomputing the
captured function from the same static buffers (and leaves the capture's own output as NaN, as
a real capture computes nothing). The real backend is measured by tests/support/gpu-check.sh.
"""

from __future__ import annotations

import gc
import inspect
from typing import Any

import pytest
import torch

from mlc.engine.cudagraphs import (
    CAPACITY,
    GraphedStep,
    StepKey,
    guided_eps,
    step_key,
    steps_for,
    unsupported,
)
from mlc.engine.generate import ImageSpec, Renderer, Settings, initial_noise
from mlc.engine.schedulers import make_scheduler

from .conftest import SIZE


class FakeGraph:
    def __init__(self, fn, out):
        self.fn, self.out = fn, out


class Recorder:
    """A graph backend that records its calls; replay recomputes into the static output."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def new_pool(self) -> object:
        self.calls.append("pool")
        return object()

    def warm_up(self, fn, calls: int) -> None:
        self.calls.append(f"warm_up {calls}")
        for _ in range(calls):
            fn()

    def capture(self, fn, pool):
        self.calls.append("capture")
        if self.fail:
            raise RuntimeError(self.fail + "\nsecond line of the message")
        out = fn()
        out.fill_(float("nan"))  # a capture records the kernels, it does not run them
        return FakeGraph(fn, out), out

    def replay(self, graph: FakeGraph) -> None:
        self.calls.append("replay")
        graph.out.copy_(graph.fn())

    def synchronize(self) -> None:
        pass

    def count(self, what: str) -> int:
        return sum(1 for c in self.calls if c.startswith(what))


def settings(sampler: str = "plms", steps: int = 3, size: int = SIZE, **kw: Any) -> Settings:
    return Settings(sampler, steps, 7.5, 0.0, size, size, **kw)


def image(seed: int = 7, prompt: str = "a red cube") -> list[ImageSpec]:
    return [ImageSpec(0, prompt, "", seed)]


def denoise(renderer: Renderer, s: Settings, specs: list[ImageSpec] | None = None):
    specs = specs or image()
    gens = [torch.Generator("cpu").manual_seed(x.seed) for x in specs]
    return renderer.denoise(specs, s, gens)


def graphed(components, backend: Recorder | None = None, **kw: Any) -> tuple[Renderer, Recorder]:
    """A renderer whose steps go through the recording backend (as if on CUDA)."""
    backend = backend or Recorder()
    notes: list[str] = kw.pop("notes", [])
    steps = GraphedStep(backend, note=notes.append, **kw)
    return Renderer(components, steps=steps), backend


# -- the eager path is the engine's old loop, bit for bit -----------------------------------------


@torch.no_grad()
def old_loop(renderer: Renderer, s: Settings, spec: ImageSpec) -> torch.Tensor:
    """The denoise loop as the engine ran it before the step was factored out (reference)."""
    scheduler = make_scheduler(s.sampler, renderer.c.schedule)
    scheduler.set_timesteps(s.steps, device=renderer.device)
    gen = torch.Generator("cpu").manual_seed(spec.seed)
    latents = initial_noise(spec.seed, renderer.latent_shape(s), gen) * scheduler.init_noise_sigma
    cond = renderer.encode(spec.prompt)
    cfg = s.scale != 1.0
    if cfg:
        cond = torch.cat([renderer.encode(spec.negative_prompt), cond])
    extra: dict[str, Any] = {}
    accepted = set(inspect.signature(scheduler.step).parameters)
    if "eta" in accepted:
        extra["eta"] = s.eta
    if "generator" in accepted:
        extra["generator"] = [gen]
    unet = renderer.c.unet
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        eps = unet(model_input.to(renderer.dtype), t, encoder_hidden_states=cond, return_dict=False)
        eps = eps[0].to(latents.dtype)
        if cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + s.scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
    return latents


@pytest.mark.parametrize(
    ("sampler", "scale"),
    [("plms", 7.5), ("euler", 7.5), ("euler_a", 5.0), ("ddim", 1.0)],
)
def test_cpu_steps_equal_the_old_eager_loop_bit_for_bit(components, sampler, scale):
    """On the CPU the step is guided_eps itself: the same numbers as the loop it replaced,
    also where scale_model_input is not the identity (Euler) and without CFG (scale 1)."""
    renderer = Renderer(components, steps=GraphedStep())
    s = Settings(sampler, 3, scale, 0.0, SIZE, SIZE)
    spec = image()[0]
    assert torch.equal(denoise(renderer, s, [spec]), old_loop(renderer, s, spec))
    stats = renderer.steps.stats
    assert stats.replays == 0 and stats.captures == []
    assert stats.reasons == {"no CUDA device": stats.eager_steps} and stats.eager_steps >= 3


def test_a_renderer_uses_its_unets_own_graphed_step(components):
    """Without STEPS a renderer takes the UNet's GraphedStep: one per loaded model, shared by
    its runs (a worker pays a capture once per shape)."""
    a, b = Renderer(components), Renderer(components)
    denoise(a, settings(steps=1))
    assert a.steps is b._graphed() is steps_for(components.unet)
    other = torch.nn.Linear(1, 1)
    assert steps_for(other) is not steps_for(components.unet)


def test_a_graphed_step_lives_as_long_as_its_unet():
    import weakref

    unet = torch.nn.Linear(1, 1)
    steps_for(unet).stats.replays = 5
    assert steps_for(unet).stats.replays == 5
    unet_ref, step_ref = weakref.ref(unet), weakref.ref(steps_for(unet))
    del unet
    gc.collect()
    assert unet_ref() is None and step_ref() is None  # nothing keeps either alive


# -- graphed: the same numbers, captured once per key ---------------------------------------------


def test_graphed_steps_give_the_eager_numbers_and_capture_once(components):
    eager = denoise(Renderer(components, steps=GraphedStep()), settings())
    renderer, rec = graphed(components)
    out = denoise(renderer, settings())
    assert torch.equal(out, eager)
    # PLMS with 3 steps makes 4 UNet calls: the first captures (warm-up, capture) then replays
    assert rec.calls == ["pool", "warm_up 3", "capture"] + ["replay"] * 4
    stats = renderer.steps.stats
    assert stats.replays == 4 and stats.eager_steps == 0
    assert len(stats.captures) == 1 and stats.captures[0].capture_s >= 0


def test_same_key_reuses_the_graph_and_takes_the_new_prompts(components):
    """A second image of the same shape replays the first one's graph, with its own prompt and
    seed copied into the static buffers (the result equals an eager render of it)."""
    renderer, rec = graphed(components)
    denoise(renderer, settings(), image(seed=1, prompt="a red cube"))
    second = image(seed=2, prompt="a blue sphere")
    out = denoise(renderer, settings(), second)
    assert rec.count("capture") == 1 and rec.count("replay") == 8
    assert torch.equal(out, denoise(Renderer(components, steps=GraphedStep()), settings(), second))


@pytest.mark.parametrize(
    ("change", "recaptures"),
    [
        ({"size": 2 * SIZE}, True),  # another latent size
        ({"sampler": "euler"}, True),  # float timesteps (PLMS's are int64)
        ({"sampler": "ddim"}, False),  # int64 timesteps, like PLMS: same kernels, same graph
        ({"scale": 3.0}, True),  # the guidance scale is a constant of the graph
        ({"scale": 1.0}, True),  # no CFG: batch 1 through the UNet, no combine
        ({"batched": True, "n": 2}, True),  # two images per UNet call
    ],
)
def test_what_makes_a_new_graph(components, change, recaptures):
    renderer, rec = graphed(components)
    denoise(renderer, settings())
    n = change.pop("n", 1)
    s = settings(
        change.pop("sampler", "plms"),
        size=change.pop("size", SIZE),
        batched=change.pop("batched", False),
    )
    if "scale" in change:
        s = Settings(s.sampler, s.steps, change.pop("scale"), 0.0, s.height, s.width)
    specs = [ImageSpec(i, "a red cube", "", 10 + i) for i in range(n)]
    out = denoise(renderer, s, specs)
    assert rec.count("capture") == (2 if recaptures else 1)
    assert torch.equal(out, denoise(Renderer(components, steps=GraphedStep()), s, specs))


def test_step_keys():
    unet = torch.nn.Identity()
    x = torch.zeros(1, 4, 8, 6)
    cond = torch.zeros(2, 77, 16, dtype=torch.float16)
    t = torch.tensor(981)
    key = step_key(unet, x, t, cond, scale=7.5, cfg=True, dtype=torch.float16, device="cpu")
    assert (key.batch, key.channels, key.height, key.width) == (1, 4, 8, 6)
    assert (key.cfg, key.scale, key.text) == (True, 7.5, (77, 16))
    assert (key.dtype, key.latents, key.timestep, key.device) == (
        "float16",
        "float32",
        "int64",
        "cpu",
    )
    assert key.label() == "6x8 latents, batch 1, CFG 7.5, float16"
    same = step_key(unet, x.clone(), t + 1, cond, scale=7.5, cfg=True, dtype=torch.float16,
                    device="cpu")  # fmt: skip
    assert same == key and hash(same) == hash(key)
    # without CFG the scale does not matter; a float timestep (Euler) is another key
    a = step_key(unet, x, t, cond[:1], scale=7.5, cfg=False, dtype=torch.float16, device="cpu")
    b = step_key(unet, x, t, cond[:1], scale=3.0, cfg=False, dtype=torch.float16, device="cpu")
    assert a == b and a.scale == 1.0 and a != key
    c = step_key(unet, x, t.float(), cond, scale=7.5, cfg=True, dtype=torch.float16, device="cpu")
    assert c != key and c.timestep == "float32"
    d = step_key(torch.nn.Identity(), x, t, cond, scale=7.5, cfg=True, dtype=torch.float16,
                 device="cpu")  # fmt: skip
    assert d != key  # another model
    assert isinstance(key, StepKey)


def test_least_recently_used_graphs_are_dropped(components):
    renderer, rec = graphed(components, capacity=2)
    for size in (SIZE, 2 * SIZE, SIZE, 3 * SIZE, 2 * SIZE):
        denoise(renderer, settings(steps=1, size=size))
    # 32: capture, 64: capture, 32: reuse, 96: capture (drops 64), 64: capture again (drops 32)
    assert rec.count("capture") == 4
    assert renderer.steps.stats.evictions == 2
    assert [k.height for k in renderer.steps.graphs] == [3 * SIZE // 8, 2 * SIZE // 8]
    assert CAPACITY >= 2


# -- eager fallbacks ------------------------------------------------------------------------------


def test_unsupported_modes():
    assert unsupported() is None
    assert "--deepcache" in unsupported(deepcache=3)
    assert unsupported(deepcache=1) is None  # every step full: exact, graphable
    assert "--tome" in unsupported(tome=0.5)
    assert "--low_vram" in unsupported(low_vram=True)


@pytest.mark.parametrize(
    ("mode", "flag"),
    [({"deepcache": 2}, "--deepcache"), ({"tome": 0.5}, "--tome")],
)
def test_speed_modes_run_eagerly_with_one_note(components, mode, flag):
    notes: list[str] = []
    renderer, rec = graphed(components, notes=notes)
    denoise(renderer, settings(**mode))
    denoise(renderer, settings(**mode), image(seed=3))
    assert rec.calls == []  # nothing captured
    assert len(notes) == 1 and flag in notes[0] and notes[0].startswith("CUDA graphs off")
    assert renderer.steps.stats.eager_steps == 8
    # the same renderer then graphs an exact run
    denoise(renderer, settings())
    assert rec.count("capture") == 1


def test_low_vram_runs_eagerly(components):
    from mlc.engine.lowvram import Offload

    notes: list[str] = []
    steps = GraphedStep(Recorder(), note=notes.append)
    renderer = Renderer(components, offload=Offload("cpu"), steps=steps)
    denoise(renderer, settings(steps=1))
    assert steps.stats.replays == 0 and steps.stats.eager_steps >= 1
    assert len(notes) == 1 and "--low_vram" in notes[0]


def test_cpu_without_a_backend_is_eager_and_silent(components):
    notes: list[str] = []
    steps = GraphedStep(note=notes.append)
    denoise(Renderer(components, steps=steps), settings())
    assert notes == [] and steps.backend is None
    assert steps.report()["eager_reasons"] == {"no CUDA device": 4}


def test_off_is_eager_and_silent(components):
    notes: list[str] = []
    rec = Recorder()
    steps = GraphedStep(rec, enabled=False, note=notes.append)
    denoise(Renderer(components, steps=steps), settings())
    assert rec.calls == [] and notes == [] and steps.stats.reasons == {"off": 4}
    # a run can say so too (Settings.cuda_graphs: the --no_cuda_graphs flag)
    steps = GraphedStep(rec, note=notes.append)
    denoise(Renderer(components, steps=steps), settings(cuda_graphs=False))
    assert rec.calls == [] and notes == [] and steps.stats.reasons == {"off": 4}


def test_a_failed_capture_runs_eagerly_with_one_note_and_is_not_retried(components):
    notes: list[str] = []
    renderer, rec = graphed(components, Recorder(fail="operation not permitted"), notes=notes)
    out = denoise(renderer, settings())
    again = denoise(renderer, settings(), image(seed=9))
    assert torch.equal(out, denoise(Renderer(components, steps=GraphedStep()), settings()))
    assert rec.count("capture") == 1  # the same key is not tried again
    assert again.shape == out.shape
    assert len(notes) == 1
    assert notes[0].startswith("CUDA graphs off for these steps: capture failed for 4x4 latents")
    assert "RuntimeError: operation not permitted" in notes[0] and "second line" not in notes[0]
    assert renderer.steps.stats.eager_steps == 8 and renderer.steps.stats.replays == 0
    # another shape is tried (and fails) on its own: a second note, naming it
    denoise(renderer, settings(size=2 * SIZE))
    assert rec.count("capture") == 2 and len(notes) == 2 and "8x8 latents" in notes[1]


def test_capture_cost_is_reported(components):
    notes: list[str] = []
    renderer, _ = graphed(components, notes=notes)
    denoise(renderer, settings())
    report = renderer.steps.report()
    assert len(report["captures"]) == 1
    cap = report["captures"][0]
    assert cap["label"] == "4x4 latents, batch 1, CFG 7.5, float32"
    assert cap["key"]["height"] == 4 and cap["warmup_s"] >= 0 and cap["capture_s"] >= 0
    assert report["replays"] == 4 and report["eager_steps"] == 0
    assert len(notes) == 1 and notes[0].startswith("CUDA graph for 4x4 latents")


def test_step_clocks_tick_once_per_step_on_every_path(components):
    """Replays fire no UNet hook: the benchmark clocks the step instead, once per step
    (warm-up and capture calls do not count)."""
    renderer, rec = graphed(components)
    ticks = rec.calls  # one timeline: the clock's ticks among the backend's calls
    renderer.steps.clocks.append((lambda: ticks.append("pre"), lambda: ticks.append("post")))
    denoise(renderer, settings())  # graphed
    # the first step's time includes its warm-up and capture (cold start: the step began)
    assert ticks[:6] == ["pre", "pool", "warm_up 3", "capture", "replay", "post"]
    assert ticks[6:] == ["pre", "replay", "post"] * 3
    del ticks[:]
    denoise(renderer, settings(deepcache=2))  # eager
    assert ticks == ["pre", "post"] * 4


def test_guided_eps_is_the_cfg_combine():
    class Doubler(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states, return_dict):
            return (x * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1),)

    x = torch.randn(1, 4, 2, 2)
    cond = torch.stack([torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)])
    eps = guided_eps(Doubler(), x, torch.tensor(1), cond, scale=3.0, cfg=True, dtype=x.dtype)
    assert torch.allclose(eps, x * 1.0 + 3.0 * (x * 2.0 - x * 1.0))
    plain = guided_eps(Doubler(), x, torch.tensor(1), cond[1:], scale=3.0, cfg=False, dtype=x.dtype)
    assert torch.equal(plain, x * 2.0)
