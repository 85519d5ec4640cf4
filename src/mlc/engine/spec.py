"""What one engine run is: a validated ``RunSpec``, its grid ``Axis`` list, and the limits and
defaults that the parser, the grid axes and the benchmark share (``Limits``: the most pixels,
steps and images one run may take).

Pure data and its value rules: no I/O, no environment, no torch. ``mlc.engine.options``
builds a RunSpec from a command line; ``run``, ``grid``, ``bench`` and the worker take one.

A grid axis's values are comma-separated; a list containing ``|`` is split on ``|`` instead
(for prompts with commas), and double quotes also protect commas:
``prompt="a cat, red","a dog"``. Each value is checked like its flag.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from mlc.engine import UsageError
from mlc.engine.samplers import get_sampler

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"
DEFAULT_CKPT = "stable-diffusion-v1-5-emaonly/v1-5-pruned-emaonly.ckpt"
DEFAULT_OUTDIR = "outputs/txt2img-samples"
DEFAULT_SAMPLER = "ddim"
DEFAULT_STEPS = 50
FAST_SAMPLER, FAST_STEPS = "dpmpp_2m_karras", 20  # --fast
MAX_SEED = 2**64 - 1

# The limits of one run (each overridable: --max_pixels/--max_steps/--max_images, MLC_MAX_*,
# --no_limits). Far above everyday SD v1 work, low enough that a typo is not hours of work.
MAX_PIXELS = 2048 * 2048  # 16x SD v1's native 512x512
MAX_STEPS = 500  # the training schedule has 1000 steps; samplers converge far below
MAX_IMAGES = 10_000  # per run (grid cells included)

AxisValue = str | int | float | tuple[int, int]
"""One value of a grid axis: a sampler or prompt, a number, or a (width, height) size."""

SpeedModes = dict[str, int | float | str]
"""The pixel-changing speed modes of a run, for the metadata (empty: exact)."""


def multiple_of_8(where: str, value: int) -> int:
    """VALUE when it is a multiple of 8 (at least 8); else a UsageError naming the neighbours
    (or, for 0 and below, saying that a size is positive).

    WHERE starts the message: ``--H`` (a flag) or ``--x size:`` (a grid axis)."""
    if value >= 8 and value % 8 == 0:
        return value
    if value <= 0:
        raise UsageError(f"{where} {value} must be a positive multiple of 8, e.g. 512")
    low = value // 8 * 8
    choices = f"{low} or {low + 8}" if low >= 8 else "8"
    raise UsageError(f"{where} {value} is not a multiple of 8; use {choices}")


def format_value(name: str, value: AxisValue) -> str:
    """An axis value as the user would type it (a size as ``WxH``)."""
    if name == "size" and isinstance(value, tuple):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def jsonable(value: AxisValue) -> str | int | float:
    """An axis value in JSON: sizes become ``"WxH"``."""
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else value


# -- the text of a grid axis (``--x AXIS=V1,V2``) --------------------------------------------

AXES = (
    "sampler",
    "steps",
    "scale",
    "seed",
    "size",
    "H",
    "W",
    "prompt",
    "negative_prompt",
    "eta",
    "deepcache",
    "tome",
)
ALIASES = {
    "cfg": "scale",
    "cfg_scale": "scale",
    "ddim_steps": "steps",
    "height": "H",
    "width": "W",
    "h": "H",
    "w": "W",
    "ddim_eta": "eta",
    "negative": "negative_prompt",
}
VALID = ", ".join(AXES)
N = TypeVar("N", int, float)


def split_values(text: str) -> list[str]:
    """``a,b,c``; ``a, b|c`` (``|`` wins when present); ``"a, b",c`` (double quotes)."""
    bar = "|" in text
    parts = text.split("|") if bar else next(csv.reader([text], skipinitialspace=True), [])
    return [p.strip() for p in parts]


def _number(where: str, raw: str, kind: type[N], low: float, high: float | None = None) -> N:
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{where}: {raw!r} is not {what}") from None
    if not value >= low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise UsageError(f"{where}: {raw} must be {bound}")
    return value


def parse_value(where: str, name: str, raw: str) -> AxisValue:
    """One axis value, checked like the matching flag; UsageError otherwise."""
    if raw == "" and name not in ("negative_prompt",):
        raise UsageError(f"{where}: empty value (values are separated by ',' or '|')")
    if name == "sampler":
        try:
            return get_sampler(raw.lower()).name
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
    if name == "steps":
        return _number(where, raw, int, 1)
    if name in ("scale", "eta"):
        return _number(where, raw, float, 0)
    if name == "seed":
        return _number(where, raw, int, 0, MAX_SEED)
    if name == "deepcache":  # 0 or 1: every step full (exact)
        return _number(where, raw, int, 0)
    if name == "tome":
        return _number(where, raw, float, 0, 0.99)
    if name in ("H", "W"):
        return multiple_of_8(f"{where}:", _number(where, raw, int, 1))
    if name == "size":
        parts = raw.lower().replace("×", "x").split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise UsageError(f"{where}: {raw!r} is not a size; use WIDTHxHEIGHT, e.g. 512x512")
        w, h = (multiple_of_8(f"{where}:", _number(where, p, int, 1)) for p in parts)
        return (w, h)
    return raw  # prompt, negative_prompt


@dataclass(frozen=True)
class Axis:
    """One grid axis (``--x/--y/--z``): its flag, what it varies, and its values."""

    flag: str  # "x", "y" or "z"
    name: str  # one of options.AXES
    values: tuple[AxisValue, ...]

    @property
    def labels(self) -> list[str]:
        """Display text of each value, e.g. ``steps: 20``."""
        return [f"{self.name}: {format_value(self.name, v)}" for v in self.values]

    def as_json(self) -> dict[str, object]:
        """The axis in the summary and the grid's metadata."""
        return {"flag": self.flag, "name": self.name, "values": [jsonable(v) for v in self.values]}

    @classmethod
    def parse(cls, flag: str, text: str) -> Axis:
        """``--x sampler=ddim,plms`` -> Axis("x", "sampler", ("ddim", "plms")); every value is
        checked like the matching flag (UsageError, one line)."""
        name, sep, rest = text.partition("=")
        key = name.strip()
        key = ALIASES.get(key.lower(), key if key in AXES else key.lower())
        if not sep or key not in AXES:
            what = (
                f"unknown axis {name.strip()!r}" if sep else f"expected AXIS=V1,V2,... not {text!r}"
            )
            raise UsageError(f"--{flag}: {what}; valid axes: {VALID}")
        where = f"--{flag} {key}"
        raws = split_values(rest)
        if not rest.strip() or not raws:
            raise UsageError(f"{where}: no values (e.g. --{flag} {key}=V1,V2)")
        return cls(flag, key, tuple(parse_value(where, key, r) for r in raws))


@dataclass
class RunSpec:
    """A validated run: what to make and where."""

    batches: list[list[str]]  # prompts, n_samples per batch
    sampler: str
    steps: int
    scale: float
    eta: float
    height: int
    width: int
    latent_channels: int | None  # --C; None: the model's
    factor: int | None  # --f; None: the model's VAE's
    n_iter: int
    n_samples: int
    n_rows: int
    seed: int
    fixed_code: bool
    negative_prompt: str
    outdir: Path
    skip_grid: bool
    skip_save: bool
    ckpt: str
    config: str | None
    precision: str  # "autocast" or "full"
    device: str  # "auto", "cuda", "cpu" or "mps"
    batched: bool
    json: bool  # the summary on stdout as JSON (progress stays on stderr)
    low_vram: bool = False
    compile: bool = False
    cuda_graphs: bool = True  # False: --no_cuda_graphs (every step eager)
    match: str | None = None  # --match: "diffusers" keeps latents in the model's dtype
    deepcache: int = 0
    tome: float = 0.0
    tiny_vae: str | None = None  # path of the TAESD weights
    notes: list[str] = field(default_factory=list)
    axes: list[Axis] = field(default_factory=list)  # --x, --y, --z
    quiet: bool = False  # no progress lines of its own (a grid cell: the grid's loop says them)
    # scale-out (mlc.engine.scale): devices to share the run, a Ray cluster, --resume
    devices: list[str] = field(default_factory=list)
    ray: str | None = None
    ray_workers: int | None = None
    resume: bool = False

    @property
    def scaled(self) -> bool:
        """Whether the run goes through ``mlc.engine.scale`` (devices, Ray or --resume)."""
        return bool(self.devices or self.ray or self.resume)

    @property
    def n_images(self) -> int:
        """Images in the whole run."""
        return self.n_iter * sum(len(b) for b in self.batches)

    @property
    def latents(self) -> str:
        """Where the latents and the sampler's math live (``generate.Settings.latents``):
        ``model`` (the model's dtype) with ``--match diffusers``, else ``float32``."""
        return "model" if self.match == "diffusers" else "float32"

    def speed_modes(self) -> SpeedModes:
        """The pixel-changing speed modes of this run (empty: exact)."""
        modes: SpeedModes = {}
        if self.deepcache > 1:
            modes["deepcache"] = self.deepcache
        if self.tome > 0:
            modes["tome"] = self.tome
        if self.tiny_vae is not None:
            modes["tiny_vae"] = Path(self.tiny_vae).name
        return modes

    def combos(self) -> list[tuple[int, ...]]:
        """Every grid cell as an index per axis, in axis order (empty axes: one cell)."""
        return list(itertools.product(*(range(len(a.values)) for a in self.axes)))

    def cell(self, combo: tuple[int, ...]) -> RunSpec:
        """The one-image run of the grid cell at COMBO (an index per axis)."""
        changes: dict[str, AxisValue] = {}
        prompt = self.batches[0][0] if self.batches and self.batches[0] else ""
        for axis, i in zip(self.axes, combo, strict=True):
            value = axis.values[i]
            if axis.name == "size" and isinstance(value, tuple):
                changes["width"], changes["height"] = value
            elif axis.name in ("H", "W"):
                changes["height" if axis.name == "H" else "width"] = value
            elif axis.name == "prompt":
                prompt = str(value)
            else:
                changes[axis.name] = value
        return replace(
            self,
            **changes,  # type: ignore[arg-type]
            batches=[[prompt]],
            n_iter=1,
            n_samples=1,
            n_rows=1,
            fixed_code=False,
            skip_grid=True,
            quiet=True,  # the cell loop prints its own progress
            notes=[],
            axes=[],
        )


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one run's work; None: no bound."""

    pixels: int | None = MAX_PIXELS
    steps: int | None = MAX_STEPS
    images: int | None = MAX_IMAGES

    def check(self, spec: RunSpec) -> None:
        """SPEC (and each of its grid cells) within the limits; else a UsageError, one line
        that says how to go over them."""
        cells = [spec.cell(c) for c in spec.combos()] if spec.axes else [spec]
        for run in cells:
            pixels = run.width * run.height
            cell = " (a grid cell)" if spec.axes else ""
            if self.pixels is not None and pixels > self.pixels:
                side = int(self.pixels**0.5)
                raise UsageError(
                    f"--W {run.width} --H {run.height}{cell} is {pixels / 1e6:.1f} megapixels, "
                    f"over the limit of {self.pixels / 1e6:.1f} megapixels ({side}x{side}); "
                    f"to run it anyway, pass --max_pixels {pixels} (or --no_limits)"
                )
            if self.steps is not None and run.steps > self.steps:
                raise UsageError(
                    f"--ddim_steps {run.steps}{cell} is over the limit of {self.steps} steps; "
                    f"to run it anyway, pass --max_steps {run.steps} (or --no_limits)"
                )
        count = len(cells) if spec.axes else spec.n_images
        if self.images is not None and count > self.images:
            if spec.axes:
                what = f"{count} grid cells"
            elif (prompts := sum(len(b) for b in spec.batches)) != spec.n_samples:
                what = f"{count} images ({prompts} prompts x --n_iter {spec.n_iter})"
            else:
                what = f"{count} images (--n_samples {spec.n_samples} x --n_iter {spec.n_iter})"
            raise UsageError(
                f"{what} in one run is over the limit of {self.images}; to run it anyway, "
                f"pass --max_images {count} (or --no_limits)"
            )
