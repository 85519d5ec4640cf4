"""What one engine run is: a validated ``RunSpec``, its grid ``Axis`` list, and the limits and
defaults that the parser, the grid axes and the benchmark share.

Pure data: no I/O, no environment, no torch. ``mlc.engine.options`` builds a RunSpec from a
command line; ``run``, ``grid``, ``bench`` and the worker take one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlc.engine import UsageError

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"
DEFAULT_CKPT = "stable-diffusion-v1-5-emaonly/v1-5-pruned-emaonly.ckpt"
DEFAULT_OUTDIR = "outputs/txt2img-samples"
DEFAULT_SAMPLER = "ddim"
DEFAULT_STEPS = 50
FAST_SAMPLER, FAST_STEPS = "dpmpp_2m_karras", 20  # --fast
MAX_SEED = 2**64 - 1

AxisValue = str | int | float | tuple[int, int]
"""One value of a grid axis: a sampler or prompt, a number, or a (width, height) size."""

SpeedModes = dict[str, int | float | str]
"""The pixel-changing speed modes of a run, for the metadata (empty: exact)."""


def multiple_of_8(where: str, value: int) -> int:
    """VALUE when it is a multiple of 8 (at least 8); else a UsageError naming the neighbours.

    WHERE starts the message: ``--H`` (a flag) or ``--x size:`` (a grid axis)."""
    if value >= 8 and value % 8 == 0:
        return value
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
    latent_channels: int
    factor: int
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
    json: bool
    low_vram: bool = False
    compile: bool = False
    deepcache: int = 0
    tome: float = 0.0
    tiny_vae: str | None = None  # path of the TAESD weights
    notes: list[str] = field(default_factory=list)
    axes: list[Axis] = field(default_factory=list)  # --x, --y, --z

    @property
    def n_images(self) -> int:
        """Images in the whole run."""
        return self.n_iter * sum(len(b) for b in self.batches)

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
            json=True,  # the cell loop prints its own progress
            notes=[],
            axes=[],
        )
