"""Grids over axes (``--x/--y/--z AXIS=V1,V2``): the cell loop over one loaded model, the
labelled grid image, and the explorer page beside it.

Every combination of axis values is a cell: one image, made by ``run.execute`` on the same
Session (one model load), saved as its own PNG with metadata. All cells use ``--seed``
unless seed is an axis. Then a labelled grid (``grid-NNNN.png``: x values across, y values
down, one block per z value stacked top to bottom) and an explorer page
(``explore-NNNN.html``, the grid's number) are written into the outdir. The axis syntax and
its checks are ``mlc.engine.options``'; a cell's RunSpec is ``RunSpec.cell``.

The explorer is one self-contained HTML page (``templates/explorer.html``, package data:
inline CSS and JS, no network, no server) in which ``%TITLE%``, ``%GRID%`` and ``%DATA%``
are filled here. Images are referenced relative to the outdir (``samples/NNNNN.png``), so
the folder can be moved or zipped as a whole. One row of buttons per axis picks a value; the
arrow keys step x (left/right) and y (up/down), PageUp/PageDown step z; a thumbnail table
shows the current z block. The URL fragment (``#x=1&y=0&z=2``) holds the choice: it is
updated on every change and applied on load, through the same code path as the buttons.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc import __version__
from mlc.engine import outputs, say
from mlc.engine.run import Control, Entry, Summary, execute, kept
from mlc.engine.session import Session, check_shape, session_for
from mlc.engine.spec import Axis, RunSpec, format_value, jsonable
from mlc.errors import NoSpaceError

if TYPE_CHECKING:
    from PIL.Image import Image

PAGE_PATTERN = re.compile(r"^explore-(\d{4,})\.html$")
ORDER = {"x": 0, "y": 1, "z": 2}

Cell = dict[str, Any]
"""One cell of the summary: where it is, its values, file, settings, seconds, parameters."""


def execute_grid(
    spec: RunSpec, session: Session | None = None, control: Control | None = None
) -> Summary:
    """Run every cell on one Session, then write the labelled grid and the explorer page;
    returns the ``--json`` summary (with each cell's time). CONTROL: as ``run.execute``'s,
    a cell being an image (its ``index`` is the cell's number in cell order)."""
    from mlc.engine.accel import report as accel_report

    control = control or Control()
    t0 = time.perf_counter()
    # 1. load: one model for every cell
    session, load_seconds = session_for(spec, session)
    # 2. plan: the cells, x fastest, then y, then z; each checked against the model
    axes = list(spec.axes)
    combos = cell_order(spec)
    cells_specs = [spec.cell(c) for c in combos]
    for cell in cells_specs:
        check_shape(cell, session.components)
    resumed = {int(e["index"]): dict(e) for e in control.resume if e.get("file")}
    # 3. announce
    announce(spec, session, load_seconds, len(cells_specs), len(resumed))
    want_grid = not spec.skip_grid and grid_fits(spec, cells_specs)
    # 4. render: each cell is a one-image run, saved as its own PNG
    t_gen = time.perf_counter()
    cells: list[Cell] = []
    control.saved.extend(resumed.values())
    for n, (combo, cell) in enumerate(zip(combos, cells_specs, strict=True)):
        if n in resumed:
            cells.append(cell_entry(spec, combo, cell, resumed[n], resumed[n]["seconds"]))
            continue
        entry = render_cell(spec, session, combo, cell, n, control)
        cells.append(entry)
        if not spec.quiet:
            what = " ".join(
                f"{a.name}={format_value(a.name, a.values[i])}"
                for a, i in zip(axes, combo, strict=True)
            )
            where = f" -> {entry['file']}" if entry["file"] else ""
            say(f"[{n + 1}/{len(cells_specs)}] {what}: {entry['seconds']:.2f} s{where}")
    t_done = time.perf_counter()
    # 5. the labelled grid (from the saved cells) and the explorer page
    try:
        grid_path = save_grid(spec, combos, cells) if want_grid else None
        page_path = write_page(spec.outdir, axes, cells, grid_path)
    except NoSpaceError as err:
        raise kept(err, control, Path(spec.outdir) / "samples") from None
    t_end = time.perf_counter()
    if not spec.quiet:
        for line in time_table(axes, cells):
            say(line)
        for label, path in (("grid", grid_path), ("explorer", page_path)):
            if path:
                say(f"{label}: {path}")
    # 6. summary
    return {
        "outdir": str(spec.outdir),
        "files": [c["file"] for c in cells if c["file"]],
        "grid": str(grid_path) if grid_path else None,
        "explorer": str(page_path) if page_path else None,
        "axes": [a.as_json() for a in axes],
        "cells": cells,
        "seeds": [c["seed"] for c in cells],
        "model": session.components.name,
        "device": session.device,
        **({"resumed": len(resumed)} if resumed else {}),
        "timings": {
            "load_s": round(load_seconds, 4),
            "generate_s": round(t_done - t_gen, 4),
            "grid_s": round(t_end - t_done, 4),
            "total_s": round(t_end - t0, 4),
            "per_cell_s": [c["seconds"] for c in cells],
        },
        "accel": accel_report(session.components.unet),  # as run.execute's
    }


# -- the steps ----------------------------------------------------------------------------------


def cell_order(spec: RunSpec) -> list[tuple[int, ...]]:
    """Step 2: every cell's combo, x varying fastest, then y, then z (row-major per z)."""
    rank = sorted(range(len(spec.axes)), key=lambda i: -ORDER[spec.axes[i].flag])
    return sorted(spec.combos(), key=lambda c: tuple(c[i] for i in rank))


def announce(
    spec: RunSpec, session: Session, load_seconds: float, n_cells: int, resumed: int = 0
) -> None:
    """Step 3: the run's notes, and the grid about to be made."""
    for note in spec.notes:
        say(f"note: {note}")
    if resumed:
        say(
            f"note: resuming: {resumed} cell(s) of this grid were saved before the engine "
            f"worker stopped; making the other {n_cells - resumed}"
        )
    if not spec.quiet:
        shape = ", ".join(f"{a.flag}: {a.name} x{len(a.values)}" for a in spec.axes)
        seed = "per cell" if any(a.name == "seed" for a in spec.axes) else spec.seed
        say(
            f"model {session.components.name} loaded in {load_seconds:.1f} s on "
            f"{session.device}; {n_cells} cell(s) ({shape}), one image each, seed {seed}"
        )


def grid_fits(spec: RunSpec, cells: Sequence[RunSpec]) -> bool:
    """Whether the labelled grid of CELLS can be made: not (a note says so) when it would be
    too large to open."""
    from mlc.engine import labels

    x, y, z = (next((a for a in spec.axes if a.flag == f), None) for f in ("x", "y", "z"))
    sizes = [(c.width, c.height) for c in cells]
    layout, _ = labels.plan_layout(
        sizes, x.labels if x else [], y.labels if y else [], z.labels if z else []
    )
    width, height = layout.size
    if width * height <= outputs.GRID_MAX_PIXELS:
        return True
    say(
        f"note: no grid: {len(cells)} cells would make a {width}x{height} grid, more than "
        "image viewers open; the cells are saved, and the explorer page shows them"
    )
    return False


def render_cell(
    spec: RunSpec, session: Session, combo: tuple[int, ...], cell: RunSpec, n: int, control: Control
) -> Cell:
    """Step 4: cell N (at COMBO) as a one-image run; its summary entry. CONTROL hears of it as
    image N and may stop it between steps."""

    def on_image(entry: Entry) -> None:
        if control.on_image is not None:
            control.on_image({**entry, "index": n})

    t_cell = time.perf_counter()
    mine = Control(on_image=on_image, stop=control.stop, saved=control.saved)
    entry = execute(cell, session, mine)["images"][0]
    return cell_entry(spec, combo, cell, entry, round(time.perf_counter() - t_cell, 4))


def cell_entry(
    spec: RunSpec, combo: tuple[int, ...], cell: RunSpec, entry: Entry, total_s: float
) -> Cell:
    """A cell's summary entry, from its image's ENTRY (made now, or by an earlier try)."""
    file = entry["file"]
    return {
        "at": {a.flag: i for a, i in zip(spec.axes, combo, strict=True)},
        "values": {a.name: jsonable(a.values[i]) for a, i in zip(spec.axes, combo, strict=True)},
        "file": file,
        "prompt": entry["prompt"],
        "seed": entry["seed"],
        "sampler": cell.sampler,
        "steps": cell.steps,
        "scale": cell.scale,
        "width": cell.width,
        "height": cell.height,
        "seconds": entry["seconds"],
        "total_s": total_s,
        "parameters": outputs.read_metadata(file)[0],
    }


def save_grid(spec: RunSpec, combos: list[tuple[int, ...]], cells: list[Cell]) -> Path:
    """Step 5: the labelled grid PNG, from the cells' saved files; its metadata holds the axes
    and the cells."""
    from PIL import Image as PILImage

    from mlc.engine import labels

    images: dict[tuple[int, ...], Image] = {}
    for combo, c in zip(combos, cells, strict=True):
        with PILImage.open(c["file"]) as im:
            images[combo] = im.convert("RGB")
    axes = spec.axes
    x, y, z = (next((a for a in axes if a.flag == f), None) for f in ("x", "y", "z"))
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
        "axes": [a.as_json() for a in axes],
        "cells": [{k: v for k, v in c.items() if k != "parameters"} for c in cells],
        "version": __version__,
    }
    return outputs.save_png(grid, outputs.grid_numbering(spec.outdir), text, data)


def time_table(axes: list[Axis], cells: list[Cell]) -> list[str]:
    """Seconds per cell as text: x across, y down, one table per z."""
    by = {tuple(c["at"][a.flag] for a in axes): c for c in cells}
    x, y, z = (next((a for a in axes if a.flag == f), None) for f in ("x", "y", "z"))
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


# -- the explorer page --------------------------------------------------------------------------


def page_numbering(outdir: str | Path, grid: str | Path | None = None) -> outputs.Numbering:
    """``<outdir>/explore-NNNN.html``, starting at the grid's number when there is one."""
    numbering = outputs.Numbering(Path(outdir), "explore-{:04}.html", PAGE_PATTERN)
    match = outputs.GRID_PATTERN.match(Path(grid).name) if grid else None
    if match:
        numbering._next = max(int(match.group(1)), numbering.highest() + 1)
    return numbering


def _relative(path: str | Path, outdir: str | Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(outdir).resolve())).as_posix()


def page_data(
    outdir: str | Path, axes: Sequence[Axis], cells: Sequence[Cell], grid: str | Path | None
) -> dict[str, Any]:
    """What the page's script gets: axes with value labels, cells with relative files."""
    return {
        "grid": _relative(grid, outdir) if grid else None,
        "axes": [
            {"flag": a.flag, "name": a.name, "values": [format_value(a.name, v) for v in a.values]}
            for a in axes
        ],
        "cells": [
            {
                "at": [c["at"][a.flag] for a in axes],
                "file": _relative(c["file"], outdir),
                "seconds": c["seconds"],
                "parameters": c.get("parameters") or "",
            }
            for c in cells
        ],
    }


def write_page(
    outdir: str | Path,
    axes: Sequence[Axis],
    cells: Sequence[Cell],
    grid: str | Path | None = None,
) -> Path:
    """Write the page under the next free ``explore-NNNN.html`` (never overwriting)."""
    data = page_data(outdir, axes, cells, grid)
    title = " × ".join(f"{a['name']}" for a in data["axes"]) or "cells"
    text = render_page(data, f"mlc explorer: {title}")
    numbering = page_numbering(outdir, grid)
    return outputs.write_claimed(numbering, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def page_template() -> str:
    """The explorer page with its ``%TITLE%``, ``%GRID%`` and ``%DATA%`` slots (package data)."""
    return (resources.files("mlc.engine") / "templates" / "explorer.html").read_text("utf-8")


def render_page(data: dict[str, Any], title: str) -> str:
    """The page's HTML for DATA (see ``page_data``)."""
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    grid = data["grid"]
    grid_link = f'<a href="{html.escape(grid)}">{html.escape(grid)}</a>' if grid else "none"
    return (
        page_template()
        .replace("%TITLE%", html.escape(title))
        .replace("%GRID%", grid_link)
        .replace("%DATA%", blob)
    )
