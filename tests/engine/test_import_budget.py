"""The import budget of the one-shot engine (docs/benchmarks.md, "Import budget"): a fresh
process running the default path (``mlc-txt2img`` on the tiny model, its converted cache
present) builds the engine's own models and imports nothing on
``modelimports.NEVER_ON_NATIVE_PATH`` (no transformers, no diffusers model code); with
``MLC_NATIVE_MODELS=0`` it builds the libraries' classes and imports nothing on
``NEVER_ON_DEFAULT_PATH`` and, of the model folders whose ``__init__`` is deferred, only
the modules SD v1 needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlc.engine import checkpoint, loading
from mlc.engine.convcache import converted_cache
from mlc.engine.modelimports import NEEDED, off_budget

DRIVER = """
import json, sys
extra = sys.argv[2]
if extra:
    __import__(extra)  # what a regression would do: the test must then fail
from mlc.engine.command import main
code = main(sys.argv[3:])
json.dump({"code": code, "modules": sorted(sys.modules)}, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def cached_model(tiny, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tiny model with its converted cache built (the default path reads the cache)."""
    root = tmp_path_factory.mktemp("budget")
    env = {"MLC_CACHE_DIR": str(root / "cache"), "MLC_CACHE_MIN_BYTES": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        loading.load(tiny.safetensors)
        entry = converted_cache(checkpoint.resolve(tiny.safetensors), torch.float32)
        assert entry is not None and entry.valid()
    return root, env


def default_path_modules(
    ckpt: Path, root: Path, env: dict[str, str], extra: str = "", *, native: bool = True
) -> list[str]:
    """``sys.modules`` after a fresh process ran ``mlc-txt2img`` on CKPT (EXTRA imported first;
    NATIVE: with the engine's own models, the default)."""
    out = root / f"modules{extra}{native}.json"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), extra, "--ckpt", str(ckpt)]
        + ["--H", "32", "--W", "32", "--ddim_steps", "1", "--n_iter", "1", "--n_samples", "1"]
        + ["--outdir", str(root / "out"), "--skip_grid"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **env,
            "OMP_NUM_THREADS": "1",
            "MLC_LEAN_IMPORTS": "1",
            "MLC_NATIVE_MODELS": "1" if native else "0",
        },
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["code"] == 0
    return result["modules"]


def test_default_path_imports_no_model_library(tiny, cached_model) -> None:
    root, env = cached_model
    modules = default_path_modules(tiny.safetensors, root, env)
    assert off_budget(modules, native=True) == []
    # it did run the real path: the engine's own models, diffusers' schedulers
    assert {"mlc.engine.nets.unet", "mlc.engine.nets.clip", "mlc.engine.nets.tokenizer"} <= set(
        modules
    )
    assert "diffusers.schedulers.scheduling_ddim" in modules


def test_library_path_stays_within_budget(tiny, cached_model) -> None:
    root, env = cached_model
    modules = default_path_modules(tiny.safetensors, root, env, native=False)
    assert off_budget(modules) == []
    assert "mlc.engine.nets.unet" not in modules
    # it did run the real path: the model modules it needs are there, and only through them
    for package, needed in NEEDED.items():
        assert {f"{package}.{n}" for n in needed} <= set(modules)
    assert "transformers.models.clip.modeling_clip" in modules


@pytest.mark.parametrize(
    "extra", ["rich", "diffusers.pipelines", "diffusers.models.unets", "torch._dynamo"]
)
def test_the_budget_check_fails_on_a_forbidden_import(tiny, cached_model, extra) -> None:
    """A process that imports a forbidden module (or a deferred folder's whole __init__) is
    caught: the check above can fail."""
    root, env = cached_model
    bad = off_budget(default_path_modules(tiny.safetensors, root, env, extra, native=False))
    if extra in NEEDED:  # the folder's whole __init__ ran: its other models are reported
        assert f"{extra}.unet_3d_condition" in bad  # (and what they pull: torch._dynamo, ...)
    else:
        assert extra in bad


@pytest.mark.parametrize("extra", ["transformers", "diffusers.models", "scipy"])
def test_the_native_budget_check_fails_on_a_library_import(tiny, cached_model, extra) -> None:
    """The native path's check fails when the libraries' model code (or what it pulls in)
    gets imported."""
    root, env = cached_model
    bad = off_budget(default_path_modules(tiny.safetensors, root, env, extra), native=True)
    assert extra in bad
