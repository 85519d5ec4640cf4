"""mlc.engine.env: every MLC_* variable the engine reads, read at call time, and read nowhere
else in the engine (options re-exports it); what a client starts its worker with."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from mlc.engine import env, options

ENGINE = Path(env.__file__).resolve().parent


def test_tiny_vae_default(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MLC_TINY_VAE", raising=False)
    assert env.tiny_vae_default() is None
    monkeypatch.setenv("MLC_TINY_VAE", "  ")
    assert env.tiny_vae_default() is None
    monkeypatch.setenv("MLC_TINY_VAE", str(tmp_path / "taesd"))
    assert env.tiny_vae_default() == tmp_path / "taesd"


def test_cache_and_bench_folders(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MLC_CACHE_DIR", raising=False)
    assert env.cache_root() == Path.home() / ".cache" / "mlc" / "converted"
    for off in ("off", "0", "No", "none"):
        monkeypatch.setenv("MLC_CACHE_DIR", off)
        assert env.cache_root() is None
    monkeypatch.setenv("MLC_CACHE_DIR", str(tmp_path))
    assert env.cache_root() == tmp_path
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "12")
    assert env.cache_min_bytes() == 12
    monkeypatch.setenv("MLC_CACHE_MIN_BYTES", "lots")
    assert env.cache_min_bytes() == env.CACHE_MIN_BYTES
    monkeypatch.setenv("MLC_BENCH_DIR", str(tmp_path / "b"))
    assert env.bench_dir() == tmp_path / "b"
    monkeypatch.delenv("MLC_BENCH_DIR")
    assert env.bench_dir() == Path.home() / ".cache" / "mlc" / "bench"


def test_worker_environment(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MLC_WORKER_DIR", raising=False)
    assert env.worker_dir() == Path(f"/tmp/mlc-{os.getuid()}")
    monkeypatch.setenv("MLC_WORKER_DIR", str(tmp_path))
    assert env.worker_dir() == tmp_path
    monkeypatch.setenv("MLC_WORKER_IDLE", "")
    assert env.worker_idle() is None
    monkeypatch.setenv("MLC_WORKER_IDLE", "30")
    assert env.worker_idle() == "30"
    monkeypatch.setenv("MLC_REQUEST_TAG", "t-1")
    assert env.request_tag() == "t-1"
    # a request carries MLC_CKPT and MLC_TINY_VAE; the worker applies exactly those
    monkeypatch.setenv("MLC_CKPT", "/a.ckpt")
    monkeypatch.delenv("MLC_TINY_VAE", raising=False)
    assert env.request_env() == {"MLC_CKPT": "/a.ckpt"}
    monkeypatch.setenv("MLC_TINY_VAE", "/old")
    env.apply_request_env({"MLC_CKPT": "/b.ckpt", "MLC_WORKER_DIR": "/elsewhere"})
    assert os.environ["MLC_CKPT"] == "/b.ckpt" and "MLC_TINY_VAE" not in os.environ
    assert os.environ["MLC_WORKER_DIR"] == str(tmp_path)  # not a request's to change


def test_worker_environ_drops_the_exec_tags(monkeypatch):
    monkeypatch.setenv("MLC_EXEC", "exec-7")
    monkeypatch.setenv("MLC_REQUEST_TAG", "req-7")
    monkeypatch.setenv("MLC_CACHE_DIR", "/cache")
    started = env.worker_environ()
    assert "MLC_EXEC" not in started and "MLC_REQUEST_TAG" not in started
    assert started["MLC_CACHE_DIR"] == "/cache"  # the rest is the worker's
    assert started["PATH"] == os.environ["PATH"]
    assert os.environ["MLC_EXEC"] == "exec-7"  # this process keeps its own


def test_worker_environ_makes_pythonpath_absolute(monkeypatch, tmp_path: Path):
    """The worker runs in its own folder: a relative PYTHONPATH must name the same code."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["src", "/abs/lib"]))
    started = env.worker_environ()
    assert started["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "src"), "/abs/lib"]


def test_options_reexports_the_environment():
    for name in ("cache_root", "tiny_vae_default", "worker_dir", "request_env", "limit_default"):
        assert getattr(options, name) is getattr(env, name)


def _variable_names(path: Path) -> set[str]:
    """String constants in PATH that are a whole MLC_* variable name (not docstring text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("MLC_")
        and node.value.replace("_", "").isalnum()
        and node.value.isupper()
    }


def test_only_env_names_mlc_variables():
    """Only env.py spells an MLC_* variable's name, so only it can read one (options reads
    them through env's functions)."""
    spelled = {
        str(path.relative_to(ENGINE)): names
        for path in sorted(ENGINE.rglob("*.py"))
        if path.name != "env.py" and (names := _variable_names(path))
    }
    assert spelled == {}
    assert {"MLC_CKPT", "MLC_WORKER_DIR", "MLC_EXEC"} <= _variable_names(ENGINE / "env.py")
