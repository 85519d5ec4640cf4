"""The tiny demo model: deterministic files, runs with no --config (sidecar rule)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlc.engine import demo, txt2img

from .conftest import SIZE, TinyModel


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_cli_is_deterministic_and_small(tmp_path: Path, tiny: TinyModel, capsys):
    assert demo.main([str(tmp_path), "--name", "tiny"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "tiny.safetensors"
    assert _sha(path) == _sha(tiny.safetensors)  # same seed, same bytes
    assert path.stat().st_size < 8 * 2**20
    for part in ("unet/config.json", "vae/config.json", "text_encoder/config.json"):
        assert (tmp_path / "tiny.config" / part).is_file()
    assert json.loads((tmp_path / "tiny.config/unet/config.json").read_text())["sample_size"] == 8


def test_demo_checkpoint_runs_without_config(tiny: TinyModel, tmp_path: Path, capsys):
    code = txt2img.main(
        [
            "--ckpt",
            str(tiny.safetensors),
            "--H",
            "64",
            "--W",
            "64",
            "--ddim_steps",
            "2",
            "--n_samples",
            "1",
            "--n_iter",
            "1",
            "--outdir",
            str(tmp_path),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["config"].endswith("tiny.config")
    assert summary["width"] == 64 and SIZE != 64
