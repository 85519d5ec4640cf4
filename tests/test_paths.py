"""The host side of `mlc txt2img` without Docker: host paths through plain mount lists, and the
engine command (defaults, worker or one-shot, environment) from a recorded setup state."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mlc import paths, run
from mlc.errors import MlcError


@pytest.fixture
def host_dirs(tmp_path, monkeypatch):
    """A workspace and a models folder on the host, and their mounts (models first)."""
    ws, models = tmp_path / "ws", tmp_path / "models"
    (ws / "sub").mkdir(parents=True)
    (models / "taesd").mkdir(parents=True)
    (ws / "prompts.txt").write_text("a\n")
    (ws / "sub" / "p.txt").write_text("b\n")
    (models / "taesd" / "t.safetensors").write_bytes(b"x")
    (tmp_path / "outside.txt").write_text("c\n")
    monkeypatch.chdir(ws)
    mounts = [(models, PurePosixPath("/models")), (ws, PurePosixPath("/workspace"))]
    return ws, models, mounts


def test_inside_path(host_dirs):
    ws, models, mounts = host_dirs
    assert paths.inside_path(mounts, ws, "sd") == PurePosixPath("/workspace")
    assert paths.inside_path(mounts, ws / "sub" / "p.txt", "sd") == PurePosixPath(
        "/workspace/sub/p.txt"
    )
    assert paths.inside_path(mounts, Path("sub"), "sd") == PurePosixPath("/workspace/sub")
    assert paths.inside_path(mounts, models / "new", "sd") == PurePosixPath("/models/new")
    with pytest.raises(
        MlcError, match=r"outside.txt is not visible inside sd \(use a folder under"
    ):
        paths.inside_path(mounts, ws.parent / "outside.txt", "sd")
    with pytest.raises(MlcError, match="not visible inside sd"):
        paths.inside_path(mounts, ws.parent / "wsx", "sd")  # a sibling with the same prefix


def test_translate_paths(host_dirs):
    ws, models, mounts = host_dirs
    t = paths.translate_paths
    assert t(mounts, ["--from-file", "prompts.txt", "--n_samples", "2"], "sd") == [
        "--from-file",
        "/workspace/prompts.txt",
        "--n_samples",
        "2",
    ]
    assert t(mounts, [f"--from-file={ws / 'sub/p.txt'}"], "sd") == [
        "--from-file",
        "/workspace/sub/p.txt",
    ]
    host_taesd = str(models / "taesd" / "t.safetensors")
    assert t(mounts, ["--tiny_vae", host_taesd], "sd") == [
        "--tiny_vae",
        "/models/taesd/t.safetensors",
    ]
    # a bare --tiny_vae ($MLC_TINY_VAE): the path flag after it is still translated
    assert t(mounts, ["--tiny_vae", "--from-file", "prompts.txt"], "sd") == [
        "--tiny_vae",
        "--from-file",
        "/workspace/prompts.txt",
    ]
    assert t(mounts, ["--prompt", "x", "--tiny_vae"], "sd") == ["--prompt", "x", "--tiny_vae"]
    # paths that only exist inside the container pass unchanged, and so do other flags
    inside = ["--ckpt", "/models/m.ckpt", "--config", "none.yaml", "--outdir", "/workspace/o"]
    assert t(mounts, inside, "sd") == inside
    with pytest.raises(MlcError, match="not visible inside sd"):
        t(mounts, ["--from-file", str(ws.parent / "outside.txt")], "sd")
    with pytest.raises(MlcError, match="not visible inside sd"):
        t(mounts, ["--ckpt=/etc/hostname"], "sd")


def test_outdir_is_translated_or_refused(host_dirs, tmp_path, monkeypatch):
    """--outdir (and --bench_json) name where the container writes: a host path under a mount
    is translated like --from-file, even when it does not exist yet; a container path under
    a mount point passes; anything else would be lost inside the container: refused."""
    ws, models, mounts = host_dirs
    t = paths.translate_paths
    assert t(mounts, ["--outdir", str(ws / "new" / "x")], "sd") == ["--outdir", "/workspace/new/x"]
    assert t(mounts, [f"--outdir={models}/o"], "sd") == ["--outdir", "/models/o"]
    assert t(mounts, ["--bench_json", str(ws / "b.json")], "sd") == [
        "--bench_json",
        "/workspace/b.json",
    ]
    assert t(mounts, ["--outdir", "/workspace/o", "--n_iter", "1"], "sd") == [
        "--outdir",
        "/workspace/o",
        "--n_iter",
        "1",
    ]
    assert t(mounts, ["--outdir", "--seed", "1"], "sd") == ["--outdir", "--seed", "1"]  # bare
    # relative: from the current folder when it is in a mount (ws/sub here) ...
    monkeypatch.chdir(ws / "sub")
    assert t(mounts, ["--outdir", "out"], "sd") == ["--outdir", "/workspace/sub/out"]
    # ... else relative to the workspace inside, as before
    monkeypatch.chdir(tmp_path)
    assert t(mounts, ["--outdir", "out"], "sd") == ["--outdir", "out"]
    for outside in (str(tmp_path / "elsewhere"), "/tmp/x", "/workspacex/o"):
        with pytest.raises(MlcError, match=r"not inside a folder that sd mounts.*use a folder"):
            t(mounts, ["--outdir", outside], "sd")
    with pytest.raises(MlcError, match="not inside a folder that sd mounts"):
        t(mounts, ["--bench_json=/etc/b.json"], "sd")


STATE = {
    "engine": {"digest": "d", "version": "0.1.0", "worker": 1},
    "python": "/opt/venv/bin/python",
    "ckpt": "/models/demo/demo.ckpt",
    "cache_dir": "/models/.mlc-cache",
}


def test_plan_defaults_to_the_worker_and_the_installed_checkpoint(host_dirs):
    _, _, mounts = host_dirs
    inv = run.plan("sd", STATE, mounts, ["--from-file", "prompts.txt"], environ={}, tag="t1")
    assert inv.argv == [
        "/opt/venv/bin/python",
        "-m",
        "mlc.engine.client",
        "--ckpt",
        "/models/demo/demo.ckpt",
        "--from-file",
        "/workspace/prompts.txt",
    ]
    assert not inv.one_shot and inv.tag == "t1"
    assert inv.env == {
        "PYTHONUNBUFFERED": "1",
        "MLC_REQUEST_TAG": "t1",
        "MLC_CKPT": "/models/demo/demo.ckpt",
        "MLC_CACHE_DIR": "/models/.mlc-cache",
    }
    fresh = run.plan("sd", STATE, mounts, [], environ={"MLC_WORKER_IDLE": "30"})
    assert fresh.env["MLC_WORKER_IDLE"] == "30" and len(fresh.tag) == 32
    assert fresh.env["MLC_REQUEST_TAG"] == fresh.tag


def test_plan_one_shot_and_explicit_checkpoint(host_dirs):
    _, _, mounts = host_dirs
    inv = run.plan("sd", STATE, mounts, ["--no-worker", "--ckpt", "/m/x.ckpt"], environ={})
    assert inv.one_shot and inv.argv[2:] == ["mlc.engine.txt2img", "--ckpt", "/m/x.ckpt"]
    inv = run.plan("sd", STATE, mounts, ["--ckpt=/m/x.ckpt"], environ={})
    assert inv.flags == ["--ckpt", "/m/x.ckpt"]  # given: no default added
    old = {"engine": {"digest": "d"}}  # an engine copied before the warm worker existed
    inv = run.plan("sd", old, mounts, ["--prompt", "x"], environ={})
    assert inv.one_shot and inv.python == "python3" and inv.flags == ["--prompt", "x"]


def test_plan_needs_the_engine(host_dirs):
    _, _, mounts = host_dirs
    with pytest.raises(MlcError, match=r"engine is not set up in 'sd' \(run: mlc setup sd\)"):
        run.plan("sd", {}, mounts, [], environ={})
