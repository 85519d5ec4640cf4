"""Grid axes: ``--x/--y/--z AXIS=V1,V2,...`` and the cell loop over one loaded model.

Every combination of axis values is a cell: one image, made by ``txt2img.execute`` on the
same Session (one model load), saved as its own PNG with metadata. All cells use
``--seed`` unless seed is an axis. Then a labelled grid (``grid-NNNN.png``: x values
across, y values down, one block per z value stacked top to bottom) and an explorer page
(``explore-NNNN.html``, the grid's number) are written into the outdir.

Values are comma-separated; a list containing ``|`` is split on ``|`` instead (for
prompts with commas), and double quotes also protect commas: ``prompt="a cat, red","a dog"``.
"""

from __future__ import annotations

import csv
import itertools
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mlc.engine import UsageError
from mlc.engine.samplers import get_sampler

if TYPE_CHECKING:
    from mlc.engine.txt2img import RunSpec, Session

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


@dataclass(frozen=True)
class Axis:
    """One grid axis: its flag (x, y or z), what it varies, and its values."""

    flag: str
    name: str
    values: tuple[Any, ...]

    @property
    def labels(self) -> list[str]:
        """Display text of each value, e.g. ``steps: 20``."""
        return [f"{self.name}: {format_value(self.name, v)}" for v in self.values]


def format_value(name: str, value: Any) -> str:
    """A value as the user would type it."""
    if name == "size":
        return f"{value[0]}x{value[1]}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def split_values(text: str) -> list[str]:
    """``a,b,c``; ``a, b|c`` (``|`` wins when present); ``"a, b",c`` (double quotes)."""
    bar = "|" in text
    parts = text.split("|") if bar else next(csv.reader([text], skipinitialspace=True), [])
    return [p.strip() for p in parts]


def _multiple_of_8(where: str, value: int) -> int:
    if value >= 8 and value % 8 == 0:
        return value
    low = value // 8 * 8
    choices = f"{low} or {low + 8}" if low >= 8 else "8"
    raise UsageError(f"{where}: {value} is not a multiple of 8; use {choices}")


def _number(where: str, raw: str, kind: type, low: float, high: float | None = None) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{where}: {raw!r} is not {what}") from None
    if not value >= low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise UsageError(f"{where}: {raw} must be {bound}")
    return value


def parse_value(where: str, name: str, raw: str) -> Any:
    """One axis value, checked like the matching flag; UsageError otherwise."""
    from mlc.engine.txt2img import MAX_SEED

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
        return _multiple_of_8(where, _number(where, raw, int, 1))
    if name == "size":
        parts = raw.lower().replace("×", "x").split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise UsageError(f"{where}: {raw!r} is not a size; use WIDTHxHEIGHT, e.g. 512x512")
        w, h = (_multiple_of_8(where, _number(where, p, int, 1)) for p in parts)
        return (w, h)
    return raw  # prompt, negative_prompt


def parse_axis(flag: str, text: str) -> Axis:
    """``--x sampler=ddim,plms`` -> Axis("x", "sampler", ("ddim", "plms"))."""
    name, sep, rest = text.partition("=")
    key = name.strip()
    key = ALIASES.get(key.lower(), key if key in AXES else key.lower())
    if not sep or key not in AXES:
        what = f"unknown axis {name.strip()!r}" if sep else f"expected AXIS=V1,V2,... not {text!r}"
        raise UsageError(f"--{flag}: {what}; valid axes: {VALID}")
    where = f"--{flag} {key}"
    raws = split_values(rest)
    if not rest.strip() or not raws:
        raise UsageError(f"{where}: no values (e.g. --{flag} {key}=V1,V2)")
    return Axis(flag, key, tuple(parse_value(where, key, r) for r in raws))


def parse_axes(
    spec: RunSpec, flags: dict[str, str | None], *, from_file: bool = False
) -> list[Axis]:
    """The --x/--y/--z axes of a validated SPEC; every cell is checked too."""
    axes = [parse_axis(flag, text) for flag, text in flags.items() if text is not None]
    if from_file:
        raise UsageError("--from-file cannot be combined with --x/--y/--z; use a prompt axis")
    if spec.skip_save:
        raise UsageError("--skip_save cannot be combined with --x/--y/--z (cells are the images)")
    for axis in axes:
        if spec.compile and axis.name in ("deepcache", "tome"):
            raise UsageError(
                f"--compile cannot be combined with a {axis.name} axis (it patches or "
                "bypasses the compiled UNet)"
            )
    seen: dict[str, str] = {}  # what is varied (size counts as H and W) -> flag
    for axis in axes:
        varies = ("H", "W") if axis.name == "size" else (axis.name,)
        for what in varies:
            if what in seen:
                raise UsageError(
                    f"--{axis.flag} {axis.name} varies {what}, which --{seen[what]} already varies"
                )
        seen.update(dict.fromkeys(varies, axis.flag))
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        cell = cell_spec(spec, axes, combo)
        if cell.eta != 0 and cell.sampler == "plms":
            raise UsageError("ddim_eta must be 0 for PLMS (a grid cell has plms with eta > 0)")
    return axes


def cell_spec(spec: RunSpec, axes: list[Axis], combo: tuple[int, ...]) -> RunSpec:
    """The one-image run of the cell at COMBO (an index per axis)."""
    changes: dict[str, Any] = {}
    prompt = spec.batches[0][0] if spec.batches and spec.batches[0] else ""
    for axis, i in zip(axes, combo, strict=True):
        value = axis.values[i]
        if axis.name == "size":
            changes["width"], changes["height"] = value
        elif axis.name in ("H", "W"):
            changes["height" if axis.name == "H" else "width"] = value
        elif axis.name == "prompt":
            prompt = value
        else:
            changes[axis.name] = value
    return replace(
        spec,
        **changes,
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


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _time_table(axes: list[Axis], cells: list[dict[str, Any]]) -> list[str]:
    """Seconds per cell as text: x across, y down, one table per z."""
    by = {tuple(c["at"][a.flag] for a in axes): c for c in cells}
    x = next((a for a in axes if a.flag == "x"), None)
    y = next((a for a in axes if a.flag == "y"), None)
    z = next((a for a in axes if a.flag == "z"), None)
    xs, ys, zs = (a.labels if a else [""] for a in (x, y, z))
    lines = ["seconds per cell:"]
    width = max(len(s) for s in ys) if y else 0
    for k, zl in enumerate(zs):
        if z:
            lines.append(f"  [{zl}]")
        cols = [max(len(s), 6) for s in xs]
        lines.append(
            "  " + " " * width + "".join(f"  {s:>{w}}" for s, w in zip(xs, cols, strict=True))
        )
        for j, yl in enumerate(ys):
            row = []
            for i, w in enumerate(cols):
                key = tuple({"x": i, "y": j, "z": k}[a.flag] for a in axes)
                row.append(f"  {by[key]['seconds']:>{w}.2f}")
            lines.append("  " + f"{yl:<{width}}" + "".join(row))
    return lines


def execute_axes(spec: RunSpec, session: Session | None = None) -> dict[str, Any]:
    """Run every cell on one Session, then write the labelled grid and the explorer page;
    returns the ``--json`` summary (with each cell's time)."""
    from PIL import Image

    from mlc import __version__
    from mlc.engine import explorer, labels, outputs
    from mlc.engine.txt2img import check_shape, execute, open_session

    t0 = time.perf_counter()
    if session is None or not session.serves(spec):
        session = open_session(spec)
    load_seconds = session.components.load_seconds if session.fresh else 0.0
    axes = list(spec.axes)
    combos = list(itertools.product(*(range(len(a.values)) for a in axes)))
    # x varies fastest, then y, then z: row-major per z block
    order = {"x": 0, "y": 1, "z": 2}
    rank = sorted(range(len(axes)), key=lambda i: -order[axes[i].flag])
    combos.sort(key=lambda c: tuple(c[i] for i in rank))
    specs = [cell_spec(spec, axes, c) for c in combos]
    for cell in specs:
        check_shape(cell, session.components)
    for note in spec.notes:
        _log(f"note: {note}")
    if not spec.json:
        shape = ", ".join(f"{a.flag}: {a.name} x{len(a.values)}" for a in axes)
        _log(
            f"model {session.components.name} loaded in {load_seconds:.1f} s on "
            f"{session.device}; {len(specs)} cell(s) ({shape}), one image each, seed "
            f"{'per cell' if any(a.name == 'seed' for a in axes) else spec.seed}"
        )
    cells: list[dict[str, Any]] = []
    images: dict[tuple[int, ...], Any] = {}
    t_gen = time.perf_counter()
    for n, (combo, cell) in enumerate(zip(combos, specs, strict=True), 1):
        t_cell = time.perf_counter()
        entry = execute(cell, session)["images"][0]
        file = entry["file"]
        with Image.open(file) as im:  # the saved cell, read back for the grid
            images[combo] = im.convert("RGB")
        params = outputs.read_metadata(file)[0]
        cells.append(
            {
                "at": {a.flag: i for a, i in zip(axes, combo, strict=True)},
                "values": {
                    a.name: _jsonable(a.values[i]) for a, i in zip(axes, combo, strict=True)
                },
                "file": file,
                "prompt": entry["prompt"],
                "seed": entry["seed"],
                "sampler": cell.sampler,
                "steps": cell.steps,
                "scale": cell.scale,
                "width": cell.width,
                "height": cell.height,
                "seconds": entry["seconds"],
                "total_s": round(time.perf_counter() - t_cell, 4),
                "parameters": params,
            }
        )
        if not spec.json:
            what = " ".join(
                f"{a.name}={format_value(a.name, a.values[i])}"
                for a, i in zip(axes, combo, strict=True)
            )
            where = f" -> {file}" if file else ""
            _log(f"[{n}/{len(specs)}] {what}: {entry['seconds']:.2f} s{where}")
    t_done = time.perf_counter()
    by_flag = {a.flag: a for a in axes}
    x, y, z = (by_flag.get(f) for f in ("x", "y", "z"))
    grid_path = page_path = None
    if not spec.skip_grid:
        blocks = []
        for k in range(len(z.values) if z else 1):
            rows = []
            for j in range(len(y.values) if y else 1):
                at = {"x": 0, "y": j, "z": k}
                row = []
                for i in range(len(x.values) if x else 1):
                    at["x"] = i
                    row.append(images[tuple(at[a.flag] for a in axes)])
                rows.append(row)
            blocks.append(rows)
        grid, _ = labels.labelled_grid(
            blocks, x.labels if x else [], y.labels if y else [], z.labels if z else []
        )
        first = cells[0]
        text = first["parameters"] or first["prompt"]
        data = {
            "axes": [
                {"flag": a.flag, "name": a.name, "values": [_jsonable(v) for v in a.values]}
                for a in axes
            ],
            "cells": [{k: v for k, v in c.items() if k != "parameters"} for c in cells],
            "version": __version__,
        }
        grid_path = outputs.save_png(grid, outputs.grid_numbering(spec.outdir), text, data)
    page_path = explorer.write_page(spec.outdir, axes, cells, grid_path)
    t_end = time.perf_counter()
    if not spec.json:
        for line in _time_table(axes, cells):
            _log(line)
        for label, path in (("grid", grid_path), ("explorer", page_path)):
            if path:
                _log(f"{label}: {path}")
    return {
        "outdir": str(spec.outdir),
        "files": [c["file"] for c in cells if c["file"]],
        "grid": str(grid_path) if grid_path else None,
        "explorer": str(page_path) if page_path else None,
        "axes": [
            {"flag": a.flag, "name": a.name, "values": [_jsonable(v) for v in a.values]}
            for a in axes
        ],
        "cells": cells,
        "seeds": [c["seed"] for c in cells],
        "model": session.components.name,
        "device": session.device,
        "timings": {
            "load_s": round(load_seconds, 4),
            "generate_s": round(t_done - t_gen, 4),
            "grid_s": round(t_end - t_done, 4),
            "total_s": round(t_end - t0, 4),
            "per_cell_s": [c["seconds"] for c in cells],
        },
    }


def _jsonable(value: Any) -> Any:
    """Sizes become "WxH"; everything else is already JSON."""
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else value
