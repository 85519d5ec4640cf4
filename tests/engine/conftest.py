"""Engine test fixtures: one tiny random-weight SD v1 model, built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The engine's processes (the CLI, the warm worker and its client) run this tree's code,
# whatever their folder: `PYTHONPATH=src pytest` is relative, and a process started in another
# folder would import an installed mlc instead.
SRC = Path(__file__).resolve().parents[2] / "src"
_paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(SRC), *_paths]))

import torch  # noqa: E402

torch.set_num_threads(1)

SIZE = 32  # pixels: 4x4 latents with the tiny VAE (downsamples by 8 like SD's)
STEPS = 3

# A 4-level UNet laid out like SD v1 (cross-attention in the first three down blocks and the
# last three up blocks, 2 layers per block) with tiny channels: for code that depends on the
# block layout (DeepCache's skip features, token merging's levels).
SD_LIKE_UNET = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}


def small_run(ckpt: object, steps: int = STEPS, size: int = SIZE) -> list[str]:
    """The flags of a quick run: ``--ckpt CKPT --H size --W size --ddim_steps steps``."""
    return ["--ckpt", str(ckpt), "--H", str(size), "--W", str(size), "--ddim_steps", str(steps)]


@dataclass(frozen=True)
class TinyModel:
    """The tiny model written in both single-file formats, sharing one sidecar config."""

    dir: Path
    safetensors: Path
    ckpt: Path
    config: Path  # the sidecar diffusers config folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Build the demo model once; also save it as a .ckpt ({"state_dict": ...})."""
    from safetensors.torch import load_file

    from mlc.engine.demo import build_demo_checkpoint, sidecar_dir
    from mlc.engine.export import save_checkpoint

    root = tmp_path_factory.mktemp("tiny-model")
    st = build_demo_checkpoint(root, name="tiny", fmt="safetensors")
    ckpt = save_checkpoint(load_file(str(st)), root / "tiny.ckpt")
    return TinyModel(root, st, ckpt, sidecar_dir(st))


@pytest.fixture(scope="session")
def components(tiny: TinyModel):
    """The tiny model loaded once (fp32, CPU), as the engine loads it: its own models
    (``mlc.engine.nets``)."""
    from mlc.engine.loading import load

    loaded = load(tiny.safetensors)
    assert type(loaded.unet).__module__ == "mlc.engine.nets.unet"
    return loaded


@pytest.fixture(scope="session")
def library_components(tiny: TinyModel):
    """The tiny model in diffusers' and transformers' classes (``MLC_NATIVE_MODELS=0``): for
    tests that hand the models to diffusers (its pipeline, ``save_pretrained``, forward
    chunking) or compare the engine with them."""
    from mlc.engine.loading import load

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLC_NATIVE_MODELS", "0")
        loaded = load(tiny.safetensors)
    assert type(loaded.unet).__name__ == "UNet2DConditionModel"
    return loaded


@pytest.fixture(scope="session")
def taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight TAESD (the real architecture) as one .safetensors file."""
    from mlc.engine.tinyvae import build_random_tiny_vae

    return build_random_tiny_vae(tmp_path_factory.mktemp("taesd") / "taesd.safetensors")


@pytest.fixture
def renderer(components):
    """A fresh Renderer (its prompt cache is per instance)."""
    from mlc.engine.generate import Renderer

    return Renderer(components)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """``python -m mlc.engine.txt2img ARGS`` in a subprocess, offline, one thread."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "mlc.engine.txt2img", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def copy_model(tiny: TinyModel, dest: Path, *, fmt: str = "safetensors") -> Path:
    """A copy of the tiny model (file + sidecar) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    src = tiny.safetensors if fmt == "safetensors" else tiny.ckpt
    shutil.copy2(src, dest / src.name)
    shutil.copytree(tiny.config, dest / tiny.config.name)
    return dest / src.name


def pytest_configure(config: pytest.Config) -> None:
    """Silence numpy 2 deprecation noise raised inside diffusers' schedulers."""
    for message in ("__array_wrap__ must accept context", "__array__ implementation doesn't"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")
