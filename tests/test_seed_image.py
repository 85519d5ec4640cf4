"""The seed's own chain on torch 2.0: `mlc create sd Pytorch 2.0.1-aime`, `mlc setup sd demo`,
`mlc txt2img sd --plms`, against a local image with PyPI's torch 2.0.1 in the system Python
(images/local/build.sh), and the loading fallback that torch 2.0 needs, on the real torch here.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mlc import provision
from mlc.engine.checkpoint import accepts, load_state

SEED_IMAGE = os.environ.get("MLC_TEST_SEED_IMAGE", "mlctest/torch:2.0.1-r1")
SRC = Path(__file__).resolve().parents[1] / "src"


# -- the loading fallback (no Docker) ------------------------------------------------------------


class OldModule(torch.nn.Module):
    """A module whose load_state_dict has torch 2.0's signature (no ``assign``)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device("meta"):
            self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("ids", torch.arange(4))

    def load_state_dict(self, state_dict, strict=True):  # type: ignore[override]
        raise AssertionError("the fallback must not call load_state_dict")


def test_feature_test_sees_parameters() -> None:
    assert accepts(torch.nn.Module().load_state_dict, "assign")  # torch >= 2.1 here
    assert not accepts(OldModule().load_state_dict, "assign")
    assert accepts(torch.load, "mmap")
    assert not accepts(len, "mmap")


def test_fallback_assigns_tensors_like_assign_true() -> None:
    m = OldModule()
    weight = torch.randn(2, 3, dtype=torch.float64)
    bias = torch.randn(2, dtype=torch.float64)
    load_state(m, {"lin.weight": weight, "lin.bias": bias}, strict=False)
    assert not m.lin.weight.is_meta and m.lin.weight.dtype == torch.float64  # theirs, as assign
    assert m.lin.weight.data_ptr() == weight.data_ptr()  # the same storage, no copy
    assert isinstance(m.lin.weight, torch.nn.Parameter) and m.lin.weight.requires_grad
    assert torch.equal(m.ids, torch.arange(4))  # a buffer the weights lack keeps its value
    out = m.lin(torch.ones(1, 3, dtype=torch.float64))
    assert torch.allclose(out, torch.ones(1, 3, dtype=torch.float64) @ weight.T + bias)


def test_fallback_refuses_what_torch_refuses() -> None:
    good = {"lin.weight": torch.zeros(2, 3), "lin.bias": torch.zeros(2), "ids": torch.arange(4)}
    with pytest.raises(RuntimeError, match=r"size mismatch for lin\.weight"):
        load_state(OldModule(), {**good, "lin.weight": torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"lin\.bias\""):
        load_state(OldModule(), {k: v for k, v in good.items() if k != "lin.bias"})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*\"extra\""):
        load_state(OldModule(), {**good, "extra": torch.zeros(1)}, strict=False)
    m = OldModule()
    load_state(m, good)  # strict, complete: fine
    assert not any(p.is_meta for p in m.parameters())


def test_setup_pins_packages_for_torch_2_0_only() -> None:
    pins = provision.constraints("2.0.1+cu118")
    assert pins[0] == "torch==2.0.1+cu118"  # pip must never replace the image's torch
    names = {re.split(r"[=<>]", p)[0].lower() for p in pins[1:]}
    assert {"diffusers", "transformers", "accelerate", "safetensors", "numpy"} <= names
    assert provision.constraints("2.5.1") == ["torch==2.5.1"]
    assert provision.constraints(None) == []


def test_package_runs_on_python_3_10() -> None:
    """AIME's 2.0.1 image has Python 3.10: the whole package parses as 3.10 and uses no
    3.11-only standard library names."""
    meta = (SRC.parent / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in meta
    newer = re.compile(
        r"\b(tomllib|datetime\.UTC|StrEnum|ExceptionGroup|TaskGroup|file_digest|"
        r"contextlib\.chdir|typing\.Self|from typing import[^\n]*\bSelf\b)"
    )
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        ast.parse(text, str(path), feature_version=(3, 10))
        assert not newer.search(text), f"{path} uses a Python 3.11 name"


# -- the chain in a container --------------------------------------------------------------------


@pytest.fixture
def seed_catalog(docker_client, shared_dir: Path) -> Path:
    """A catalog with the local torch 2.0.1 image under the seed's own name."""
    import docker.errors

    from conftest import _missing

    if os.environ.get("MLC_TEST_SEED") == "0":  # build.sh was told not to build it
        pytest.skip("MLC_TEST_SEED=0: the seed's torch 2.0.1 image is not built")
    try:
        docker_client.images.get(SEED_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"test image {SEED_IMAGE} is missing: run images/local/build.sh")
    path = shared_dir / "seed-catalog.yaml"
    path.write_text(
        "images: [{framework: Pytorch, version: 2.0.1-aime, arch: [CPU], "
        f"image: '{SEED_IMAGE}', torch: 2.0.1}}]\n"
    )
    return path


@pytest.mark.docker
@pytest.mark.slow
def test_seed_chain_on_torch_2_0(mlc, name, tmp_path, seed_catalog) -> None:
    env = {"MLC_CATALOG": str(seed_catalog)}
    ws = tmp_path / "ws"
    r = mlc("create", name, "Pytorch", "2.0.1-aime", "-w", str(ws), "-g", "none", env=env)
    assert r.code == 0, r.err
    r = mlc("setup", name, "demo", env=env, timeout=900)
    assert r.code == 0, r.err
    assert "keeping torch 2.0.1," in r.err and "versions for it" in r.err
    probe = (
        "import json, importlib.metadata as m; print(json.dumps([m.version(p) for p in "
        "('torch', 'diffusers', 'transformers', 'accelerate', 'numpy')]))"
    )
    r = mlc("open", name, "--", "python3", "-c", probe, env=env)  # what pip left installed
    assert r.code == 0, r.err
    versions = json.loads(r.out.strip().splitlines()[-1])
    assert versions[0].startswith("2.0.1")  # pip kept the image's torch
    pins = dict(p.split("==") for p in provision.TORCH_2_0_PINS if "==" in p)
    assert versions[1:4] == [pins["diffusers"], pins["transformers"], pins["accelerate"]]
    assert versions[4].startswith("1.")

    prompt = "a photo of a pink cube"
    r = mlc(
        "txt2img", name, "--prompt", prompt, "--plms", "--n_samples", "1", "--n_iter", "1",
        "--H", "64", "--W", "64", "--ddim_steps", "3", "--skip_grid", env=env, timeout=600,
    )  # fmt: skip
    assert r.code == 0, r.err
    png = ws / "outputs" / "txt2img-samples" / "samples" / "00000.png"
    assert png.is_file(), r.out + r.err
    info = Image.open(png).info["parameters"]
    assert info.startswith(prompt) and "Steps: 3" in info and "Sampler: PLMS" in info
    assert "Model: demo" in info
