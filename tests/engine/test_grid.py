"""Grids over axes (--x/--y/--z): labelled geometry, one load, seeds, metadata, the explorer
page. The axis syntax and its errors are test_options.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlc.engine import grid, labels, loading, txt2img
from mlc.engine.outputs import read_metadata

from .conftest import TinyModel

CELL = 64
STEPS = 2


# --- labelled grid geometry ---------------------------------------------------------------


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (CELL, CELL)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_labelled_grid_geometry():
    colors = [[[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(9, 9, 9), (200, 0, 200), (0, 99, 99)]]]
    cells = [[[_solid(c) for c in row] for row in block] for block in colors]
    xs = ["sampler: ddim", "sampler: plms", "sampler: dpm_solver"]
    ys = ["steps: 10", "steps: 20"]
    image, layout = labels.labelled_grid(cells, xs, ys)
    assert (layout.cols, layout.rows, layout.blocks) == (3, 2, 1)
    assert layout.left > 0 and layout.header > 0 and layout.title == 0
    assert layout.font_size == 14
    width = layout.left + 3 * (layout.cell_w + labels.GAP) + labels.GAP
    height = layout.header + 2 * (layout.cell_h + labels.GAP) + labels.GAP
    assert image.size == layout.size == (width, height)
    px = np.asarray(image)
    slot_extra = (layout.cell_w - CELL) // 2  # slots may be wider than a cell for the labels
    for r, row in enumerate(colors[0]):
        for c, color in enumerate(row):
            x0, y0, x1, y1 = layout.cell_box(c, r)
            x0 += slot_extra
            assert (px[y0 : y0 + CELL, x0 : x0 + CELL] == color).all(), (r, c)
    # labels are drawn: dark text in the header row and in the label column, nothing else
    header = px[: layout.header, layout.left :]
    column = px[layout.header :, : layout.left]
    assert (header.min(axis=2) < 100).sum() > 50 and (column.min(axis=2) < 100).sum() > 50
    assert (px[: layout.header, : layout.left] == 255).all()  # the corner stays white


def test_labelled_grid_z_blocks_and_mixed_sizes():
    small, big = _solid((255, 0, 0), (64, 32)), _solid((0, 0, 255), (128, 96))
    cells = [[[small, big]], [[big, small]]]
    image, layout = labels.labelled_grid(cells, ["W: 64", "W: 128"], [], ["z: 1", "z: 2"])
    assert (layout.cell_w, layout.cell_h, layout.left, layout.blocks) == (128, 96, 0, 2)
    assert layout.title > 0 and image.size == layout.size
    assert image.size[1] == 2 * layout.block_h + layout.block_gap
    px = np.asarray(image)
    x0, y0, _, _ = layout.cell_box(0, 0, 1)  # block 2's first slot holds the big image
    assert (px[y0 : y0 + 96, x0 : x0 + 128] == (0, 0, 255)).all()
    x0, y0, _, _ = layout.cell_box(0, 0, 0)  # the small one is centred in its slot
    assert (px[y0 + 32 : y0 + 64, x0 + 32 : x0 + 96] == (255, 0, 0)).all()
    assert (px[y0 : y0 + 32, x0 : x0 + 128] == 255).all()
    title_rows = px[y0 - layout.header - layout.title : y0 - layout.header]
    assert (title_rows.min(axis=2) < 100).any()


def test_no_labels_is_plain():
    image, layout = labels.labelled_grid([[[_solid((1, 2, 3))]]], [], [])
    assert (layout.left, layout.header, layout.title) == (0, 0, 0)
    assert image.size == (CELL + 2 * labels.GAP, CELL + 2 * labels.GAP)


# --- runs ---------------------------------------------------------------------------------


def _grid_run(capsys, tiny: TinyModel, outdir: Path, *args: str) -> dict:
    argv = [
        "--ckpt", str(tiny.safetensors),
        "--H", str(CELL), "--W", str(CELL), "--ddim_steps", str(STEPS),
        "--outdir", str(outdir), "--json", *args,
    ]  # fmt: skip
    code = txt2img.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def count_loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = loading.load

    def counting(*args, **kwargs):
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load", counting)
    return calls


def test_grid_run_one_load_same_seed_metadata(capsys, tiny: TinyModel, tmp_path, count_loads):
    out = tmp_path / "out"
    s = _grid_run(
        capsys, tiny, out, "--x", "sampler=ddim,euler_a", "--y", "steps=2,3", "--seed", "7"
    )
    assert len(count_loads) == 1  # one model load for all four cells
    assert [c["at"] for c in s["cells"]] == [
        {"x": 0, "y": 0}, {"x": 1, "y": 0}, {"x": 0, "y": 1}, {"x": 1, "y": 1},
    ]  # fmt: skip
    assert s["seeds"] == [7, 7, 7, 7]
    assert len(s["files"]) == 4 and len(set(s["files"])) == 4
    assert all(Path(f).parent == out / "samples" for f in s["files"])
    assert all(c["seconds"] > 0 and c["total_s"] >= c["seconds"] for c in s["cells"])
    assert s["timings"]["per_cell_s"] == [c["seconds"] for c in s["cells"]]
    assert s["timings"]["load_s"] > 0 and s["timings"]["total_s"] >= s["timings"]["generate_s"]
    for cell in s["cells"]:
        params, data = read_metadata(cell["file"])
        assert data["sampler"] == cell["values"]["sampler"] and data["seed"] == 7
        assert data["steps"] == cell["values"]["steps"] == cell["steps"]
        assert f"Steps: {cell['steps']}, " in params and "Seed: 7, Size: 64x64" in params
        assert cell["parameters"] == params
    assert "Sampler: Euler a" in read_metadata(s["cells"][3]["file"])[0]
    # the grid: labelled geometry, and its metadata holds the axes and cells
    grid = Path(s["grid"])
    assert grid.name == "grid-0000.png"
    with Image.open(grid) as im:
        size = im.size
    layout, _ = labels.plan_layout(
        [(CELL, CELL)] * 4, ["sampler: ddim", "sampler: euler_a"], ["steps: 2", "steps: 3"], []
    )
    assert size == layout.size
    _, meta = read_metadata(grid)
    assert meta["axes"][0] == {"flag": "x", "name": "sampler", "values": ["ddim", "euler_a"]}
    assert [c["file"] for c in meta["cells"]] == s["files"]
    assert Path(s["explorer"]) == out / "explore-0000.html"
    # a second grid in the same outdir gets the next numbers, nothing overwritten
    s2 = _grid_run(capsys, tiny, out, "--x", "steps=2,3")
    assert Path(s2["grid"]).name == "grid-0001.png"
    assert Path(s2["explorer"]).name == "explore-0001.html"
    assert not set(s2["files"]) & set(s["files"])


def test_cell_equals_a_plain_run(capsys, tiny: TinyModel, tmp_path):
    """A cell is exactly the one-image run with its settings (same seed, same pixels)."""
    s = _grid_run(capsys, tiny, tmp_path / "g", "--x", "sampler=ddim,euler_a", "--skip_grid")
    assert s["grid"] is None and s["explorer"]
    plain = _grid_run(
        capsys, tiny, tmp_path / "p", "--sampler", "euler_a", "--n_samples", "1", "--n_iter", "1"
    )
    a = np.asarray(Image.open(s["cells"][1]["file"]))
    b = np.asarray(Image.open(plain["files"][0]))
    assert (a == b).all()


def test_seed_axis_and_prompt_axis(capsys, tiny: TinyModel, tmp_path, count_loads):
    s = _grid_run(
        capsys,
        tiny,
        tmp_path / "out",
        "--x", "seed=1,2",
        "--y", "size=64x64,64x128",
        "--z", "prompt=a red cube, black background|a blue ball",
    )  # fmt: skip
    assert len(count_loads) == 1
    assert s["seeds"] == [1, 2] * 4
    assert [c["values"]["prompt"] for c in s["cells"]] == ["a red cube, black background"] * 4 + [
        "a blue ball"
    ] * 4
    tall = s["cells"][2]
    assert tall["values"]["size"] == "64x128" and (tall["width"], tall["height"]) == (64, 128)
    with Image.open(tall["file"]) as im:
        assert im.size == (64, 128)
    _, data = read_metadata(s["cells"][5]["file"])
    assert data["prompt"] == "a blue ball" and data["seed"] == 2
    a, b = (np.asarray(Image.open(s["cells"][i]["file"])) for i in (0, 1))
    assert not (a == b).all()  # another seed, another image


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_progress_and_time_table_on_stderr(capsys, tiny: TinyModel, tmp_path, as_json: bool):
    """With or without --json (which only changes stdout)."""
    argv = [
        "--ckpt", str(tiny.safetensors), "--H", "64", "--W", "64", "--ddim_steps", "2",
        "--outdir", str(tmp_path / "o"), "--x", "sampler=ddim,plms", "--y", "scale=1,7.5",
    ]  # fmt: skip
    assert txt2img.main(argv + ["--json"] * as_json) == 0
    out, err = capsys.readouterr()
    if as_json:
        assert json.loads(out)["seeds"] == [42] * 4
    assert "4 cell(s) (x: sampler x2, y: scale x2), one image each, seed 42" in err
    assert "[4/4] sampler=plms scale=7.5: " in err
    table = err[err.index("seconds per cell:") :].splitlines()
    assert "sampler: ddim" in table[1] and "sampler: plms" in table[1]
    assert re.match(r"^\s+scale: 1\s+\d+\.\d\d\s+\d+\.\d\d$", table[2])
    assert "grid: " in err and "explore-0000.html" in err


def test_speed_mode_axes_cost_pixels_and_say_so(capsys, tiny: TinyModel, tmp_path):
    """deepcache=0 and tome=0 are the exact image; the other cells differ and say why."""
    s = _grid_run(
        capsys, tiny, tmp_path / "g", "--x", "deepcache=0,2", "--y", "tome=0,0.5", "--skip_grid"
    )
    exact, cached, merged, both = (np.asarray(Image.open(c["file"])) for c in s["cells"])
    plain = _grid_run(capsys, tiny, tmp_path / "p", "--n_samples", "1", "--n_iter", "1")
    assert (exact == np.asarray(Image.open(plain["files"][0]))).all()
    for other in (cached, merged, both):
        assert not (other == exact).all()
    _, data = read_metadata(s["cells"][3]["file"])
    assert data["speed_modes"] == {"deepcache": 2, "tome": 0.5}
    assert "speed_modes" not in read_metadata(s["cells"][0]["file"])[1]


# --- the explorer page --------------------------------------------------------------------


def test_the_page_is_package_data_with_three_slots():
    template = grid.page_template()
    assert template.startswith("<!DOCTYPE html>") and template.rstrip().endswith("</html>")
    for slot in ("%TITLE%", "%GRID%", "%DATA%"):
        assert template.count(slot) >= 1, slot
    assert "/^\\d+$/" in template and '" \\u00b7 "' in template  # JS escapes kept as JS
    # pyproject ships it: a package-data pattern of `mlc` matches the file
    import fnmatch

    import tomllib

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    patterns = tomllib.loads(text)["tool"]["setuptools"]["package-data"]["mlc"]
    assert any(fnmatch.fnmatch("engine/templates/explorer.html", p) for p in patterns)


def test_render_page_fills_every_slot_and_escapes(tmp_path: Path):
    data = {"grid": "grid-0003.png", "axes": [], "cells": [{"parameters": "</script><b>"}]}
    page = grid.render_page(data, "mlc explorer: <x>")
    assert "%TITLE%" not in page and "%GRID%" not in page and "%DATA%" not in page
    assert "<title>mlc explorer: &lt;x&gt;</title>" in page
    assert '<a href="grid-0003.png">grid-0003.png</a>' in page
    blob = page.split('id="data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob.replace("<\\/", "</")) == data  # `</` cannot end the script early
    assert "none" in grid.render_page({**data, "grid": None}, "t").split("Grid image:")[1][:20]
    numbering = grid.page_numbering(tmp_path, tmp_path / "grid-0007.png")
    assert numbering.claim().name == "explore-0007.html"
