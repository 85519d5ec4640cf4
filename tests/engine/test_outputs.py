"""Numbering that never overwrites, grid geometry, PNG metadata round trips."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from mlc.engine import outputs
from mlc.engine.grid import page_numbering


def _img(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_numbering_continues_after_the_highest(tmp_path: Path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "00007.png").write_bytes(b"x")
    (samples / "00002.png").write_bytes(b"x")
    (samples / "notes.txt").write_text("stray files do not shift numbers")
    (tmp_path / "grid-0003.png").write_bytes(b"x")
    n = outputs.sample_numbering(tmp_path)
    assert n.claim().name == "00008.png"
    assert n.claim().name == "00009.png"
    assert outputs.grid_numbering(tmp_path).claim().name == "grid-0004.png"
    assert (samples / "00007.png").read_bytes() == b"x"  # untouched


def test_only_the_engines_own_names_count(tmp_path: Path):
    """A photo named with digits (2024-vacation.jpg) does not make the next sample 02025."""
    samples = tmp_path / "samples"
    samples.mkdir()
    for stray in ("2024-vacation.jpg", "99999-notes.txt", "123.png", "000042.png.bak"):
        (samples / stray).write_bytes(b"x")
    (samples / "00004.png").write_bytes(b"x")
    for stray in ("grid-2024-old.png", "grid-12.png", "grid-0100.jpg"):
        (tmp_path / stray).write_bytes(b"x")
    assert outputs.sample_numbering(tmp_path).claim().name == "00005.png"
    assert outputs.grid_numbering(tmp_path).claim().name == "grid-0000.png"
    (tmp_path / "explore-2024-trip.html").write_bytes(b"x")
    assert page_numbering(tmp_path).claim().name == "explore-0000.html"
    (samples / "100000.png").write_bytes(b"x")  # past 99999 the names grow a digit
    assert outputs.sample_numbering(tmp_path).claim().name == "100001.png"


def test_deleted_files_do_not_cause_overwrites(tmp_path: Path):
    n = outputs.sample_numbering(tmp_path)
    first = [n.claim() for _ in range(3)]
    first[0].unlink()  # a gap below the highest is not reused
    assert outputs.sample_numbering(tmp_path).claim().name == "00003.png"


def test_a_taken_name_is_skipped(tmp_path: Path):
    n = outputs.sample_numbering(tmp_path)
    assert n.claim().name == "00000.png"
    (tmp_path / "samples" / "00001.png").write_bytes(b"other run")
    assert n.claim().name == "00002.png"
    assert (tmp_path / "samples" / "00001.png").read_bytes() == b"other run"


def test_concurrent_claims_never_collide(tmp_path: Path):
    names: list[str] = []
    lock = threading.Lock()

    def worker():
        n = outputs.sample_numbering(tmp_path)
        for _ in range(25):
            p = n.claim()
            with lock:
                names.append(p.name)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == len(set(names)) == 100


def test_concurrent_processes_never_collide(tmp_path: Path):
    code = (
        "import sys; from mlc.engine import outputs; from PIL import Image\n"
        "n = outputs.sample_numbering(sys.argv[1])\n"
        "for i in range(15): outputs.save_png(Image.new('RGB', (4, 4)), n, 'p', {'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    files = sorted((tmp_path / "samples").iterdir())
    assert [f.name for f in files] == [f"{i:05}.png" for i in range(45)]
    assert all(f.stat().st_size > 0 for f in files)


def test_grid_geometry_is_make_grids(tmp_path: Path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    grid = outputs.make_grid([_img(c) for c in colors], n_per_row=3)
    w, h = 8, 6
    assert grid.size == (3 * (w + 2) + 2, 2 * (h + 2) + 2)
    a = np.asarray(grid)
    for i, c in enumerate(colors):
        row, col = divmod(i, 3)
        x, y = col * (w + 2) + 2, row * (h + 2) + 2
        assert (a[y : y + h, x : x + w] == c).all()
    assert (a[:2] == 0).all() and (a[:, :2] == 0).all()  # black padding
    assert (a[8:10] == 0).all()  # gutter between rows
    assert (a[10:16, 22:] == 0).all()  # the empty sixth cell stays black
    assert outputs.make_grid([_img((1, 2, 3))], 4).size == (w + 4, h + 4)


def test_metadata_round_trips(tmp_path: Path):
    params = outputs.a1111_parameters(
        "a cat, sitting: cute", "blurry", [("Steps", 20), ("Sampler", "Euler a"), ("Seed", 3)]
    )
    assert (
        params
        == "a cat, sitting: cute\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 3"
    )
    data = {"prompt": "ein Bär 🐻", "seed": 3, "sampler": "euler_a"}
    path = outputs.save_png(_img((1, 2, 3)), outputs.sample_numbering(tmp_path), params, data)
    got_params, got_data = outputs.read_metadata(path)
    assert got_params == params and got_data == data
    assert not list((tmp_path / "samples").glob(".*"))  # no temp files left


def test_infotext_quotes_values_with_separators():
    text = outputs.a1111_parameters("p", "", [("Model", "a, b"), ("Empty", ""), ("None", None)])
    assert text == 'p\nModel: "a, b"'
