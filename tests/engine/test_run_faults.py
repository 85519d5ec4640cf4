"""Faults of one run, with real processes, signals and a real full disk: each image saved as
soon as it is decoded, an interrupted run (Ctrl-C, SIGTERM, SIGHUP) keeps every finished
image, a full disk names the file and counts what was kept, a grid too large to open is
skipped with a note."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlc.engine import options, outputs, run, txt2img
from mlc.engine.session import open_session

from .conftest import SIZE, STEPS, TinyModel, small_run


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _all_valid(folder: Path) -> None:
    """Every file in FOLDER is one of the engine's PNGs, complete (no temporary, no claim)."""
    for f in folder.iterdir():
        assert outputs.SAMPLE_PATTERN.match(f.name), f"stray file {f.name}"
        with Image.open(f) as im:
            im.verify()


def test_each_image_is_saved_as_soon_as_it_is_decoded(tiny: TinyModel, tmp_path: Path):
    """Four images in one batch: when the UNet starts on image k, images 0..k-1 are on disk
    (not all four at the batch's end)."""
    spec = options.parse(
        [*small_run(tiny.safetensors), "--n_samples", "4", "--n_iter", "1", "--skip_grid"]
        + ["--outdir", str(tmp_path), "--json"]
    )
    session = open_session(spec)
    on_disk: list[int] = []
    hook = session.components.unet.register_forward_pre_hook(
        lambda *_: on_disk.append(len(_pngs(tmp_path / "samples")))
    )
    try:
        summary = run.execute(spec, session)
    finally:
        hook.remove()
    assert len(summary["files"]) == 4 and len(on_disk) == 4 * STEPS  # one UNet call a step
    assert [on_disk[k * STEPS] for k in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"]
)
def test_an_interrupted_run_keeps_every_finished_image(
    tiny: TinyModel, tmp_path: Path, signum: int
):
    """Ctrl-C, `kill`, `timeout` or a closed terminal: the same stop, one line, and every
    image finished so far is a complete PNG (no temporary file, no empty claim)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlc.engine.txt2img", *small_run(tiny.safetensors, steps=10)]
        + ["--n_samples", "40", "--n_iter", "1", "--outdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("[2/40]"):
            proc.send_signal(signum)
            break
    rest = proc.stderr.read()
    code, line = (130, "interrupted") if signum == signal.SIGINT else (128 + signum, "")
    line = line or f"interrupted ({signal.Signals(signum).name})"
    assert proc.wait(timeout=120) == code, rest  # 130, 143, 129: as the host's mlc
    assert rest.strip().splitlines()[-1] == f"mlc-txt2img: {line}"
    assert "Traceback" not in rest
    kept = _pngs(tmp_path / "samples")
    assert 2 <= len(kept) < 40
    _all_valid(tmp_path / "samples")
    assert not list(tmp_path.glob("grid-*"))  # the run did not finish: no grid


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A real 256 KiB tmpfs, mounted for the test (root only)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk test mounts a tmpfs: run it as root")
        pytest.skip("the full-disk test mounts a tmpfs: root only")
    d = Path(tempfile.mkdtemp(prefix="mlc-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        with contextlib.suppress(OSError):
            d.rmdir()


def test_a_full_disk_names_the_file_and_counts_what_was_kept(
    tiny: TinyModel, small_disk: Path, capsys
):
    argv = [*small_run(tiny.safetensors, size=64), "--n_samples", "1", "--n_iter", "40"]
    code = txt2img.main([*argv, "--outdir", str(small_disk), "--skip_grid", "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    kept = _pngs(small_disk / "samples")
    assert 0 < len(kept) < 40
    _all_valid(small_disk / "samples")  # the image that did not fit left nothing behind
    samples = small_disk / "samples"
    # --json keeps the progress lines on stderr; the error is one line, the last one
    *progress, last = err.splitlines()
    assert last == (
        f"mlc-txt2img: error: no space left on device writing {samples}/{len(kept):05}.png; "
        f"{len(kept)} images of this run kept in {samples} (free some space, then run again)"
    )
    assert sum(line.startswith("[") for line in progress) == len(kept)
    assert "Traceback" not in err
    seeds = [outputs.read_metadata(f)[1]["seed"] for f in kept]
    assert seeds == list(range(42, 42 + len(kept)))


def test_a_grid_too_large_to_open_is_skipped_with_a_note(capsys):
    """Not built at all (so no run keeps its images for it): the samples are the result."""
    spec = options.parse(["--n_samples", "20", "--n_iter", "10", "--H", "768", "--W", "768"])
    assert run.grid_fits(spec) is False
    assert capsys.readouterr().err == (
        "note: no grid: 200 images of 768x768 would make a 15402x7702 grid, more than image "
        "viewers open; the samples are saved\n"
    )
    assert run.grid_fits(options.parse(["--n_samples", "3", "--n_iter", "2"])) is True
    assert outputs.grid_size(6, (SIZE, SIZE), 3) == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)


def test_the_grid_is_built_from_the_saved_files(tiny: TinyModel, tmp_path: Path, capsys):
    code = txt2img.main(
        [*small_run(tiny.safetensors), "--n_samples", "3", "--n_iter", "1"]
        + ["--outdir", str(tmp_path), "--json"]
    )
    assert code == 0, capsys.readouterr().err
    grid = Image.open(tmp_path / "grid-0000.png").convert("RGB")
    rebuilt = outputs.make_grid([Image.open(f) for f in _pngs(tmp_path / "samples")], 3)
    assert np.array_equal(np.asarray(grid), np.asarray(rebuilt))
