"""--compile's cache (mlc.engine.compilecache, mlc.engine.accel): the keys, the artefact file's
round trip between two fresh processes (a miss that writes it, then a hit from it with an
empty inductor folder), and the UNet's compiled forward as accel installs it.

The round trip compiles a one-line function with inductor's C++ backend (gcc): about half a
minute here. The UNet itself is compiled only on a GPU (tests/support/gpu-check.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlc.engine.compilecache import (
    ArtifactStore,
    CompiledUNet,
    CompileKey,
    compile_key,
    device_name,
    model_id,
)


class Tiny(torch.nn.Module):
    """A 'model' with a diffusers-like config."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.config = {"width": width, "kind": "tiny"}
        self.w = torch.nn.Parameter(torch.ones(width))

    def forward(self, sample, t):
        return (sample * self.w.view(1, -1, 1, 1)).relu() + t  # exact: same bits compiled


def test_compile_keys():
    m = Tiny()
    x = torch.zeros(2, 4, 8, 8)
    key = compile_key(m, x)
    assert key == compile_key(Tiny(), torch.ones(2, 4, 8, 8))  # weights/values do not matter
    assert key.shape == (2, 4, 8, 8) and key.dtype == "float32" and key.device == "cpu"
    assert key.torch == torch.__version__ and key.cuda == torch.version.cuda
    assert key.filename().startswith("unet-2x4x8x8-float32-") and key.filename().endswith(".bin")
    others = [
        compile_key(m, torch.zeros(2, 4, 16, 8)),  # shape
        compile_key(m, torch.zeros(2, 4, 8, 8, dtype=torch.float16)),  # dtype
        compile_key(Tiny(width=8), x),  # architecture
        compile_key(m, x, mode="max-autotune-no-cudagraphs"),
        compile_key(m, x, device_label="NVIDIA H200 sm90"),  # another GPU
        CompileKey(**{**key.__dict__, "torch": "2.11.0+cu130"}),
    ]
    names = {k.filename() for k in others}
    assert len(names) == len(others) and key.filename() not in names
    assert device_name("cpu") == "cpu"


def test_model_id_is_the_architecture():
    a, b = Tiny(), Tiny()
    with torch.no_grad():
        b.w.mul_(3)
    assert model_id(a) == model_id(b) != model_id(Tiny(width=5))
    assert model_id(torch.nn.Linear(1, 1)) == model_id(torch.nn.Linear(2, 2))  # no config: class
    # the same config in another class (diffusers' UNet, the engine's own) is another model
    from diffusers.models import UNet2DConditionModel

    from mlc.engine.demo import UNET_CONFIG
    from mlc.engine.nets.unet import UNet

    theirs = UNet2DConditionModel(**UNET_CONFIG)
    assert model_id(theirs) != model_id(UNet(dict(theirs.config)))


def test_the_store_says_off_miss_and_unreadable(tmp_path: Path):
    key = compile_key(Tiny(), torch.zeros(1, 4, 2, 2))
    assert ArtifactStore(None).load(key) == "off"
    assert ArtifactStore(None).save(key) is None
    store = ArtifactStore(tmp_path / "compiled")
    assert store.load(key) == "miss"
    path = store.path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an artefact file")
    assert store.load(key).startswith("unreadable: ")


# the measured process: compile Tiny through CompiledUNet with a fresh inductor folder
CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from mlc.engine.compilecache import ArtifactStore, CompiledUNet
    sys.path.insert(0, sys.argv[2])
    from test_compilecache import Tiny

    torch.manual_seed(0)
    m = Tiny()
    store = ArtifactStore(Path(sys.argv[1]))
    forward = CompiledUNet(m, torch.compile(m.forward, dynamic=False), store)
    with torch.no_grad():
        x = torch.randn(2, 4, 8, 8)
        out = forward(x, 1.0)
        again = forward(x, 1.0)
        same = bool(torch.equal(out, m.forward(x, 1.0)) and torch.equal(out, again))
    print(json.dumps({**forward.report(), "same": same}))
    """
)


def _child(store: Path, inductor: Path) -> dict:
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(inductor),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[2] / "src"), str(Path(__file__).parent)]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(store), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_artefacts_written_by_one_process_are_a_hit_in_a_fresh_one(tmp_path: Path):
    store = tmp_path / "compiled"
    first = _child(store, tmp_path / "inductor-1")
    assert first["same"] is True
    assert first["compile_cache"] == "miss"
    (shape,) = first["shapes"]
    assert shape["shape"] == [2, 4, 8, 8] and shape["artifacts"] == "miss"
    assert shape["fxgraph_misses"] >= 1 and shape["reused"] is False
    assert shape["saved"] and Path(shape["saved"]).is_file()
    assert [p.name for p in store.iterdir()] == [Path(shape["saved"]).name]

    # a fresh process with an EMPTY inductor folder: everything comes from the artefact file
    second = _child(store, tmp_path / "inductor-2")
    assert second["same"] is True
    assert second["compile_cache"] == "hit"
    (shape2,) = second["shapes"]
    assert shape2["artifacts"] == "hit" and shape2["fxgraph_misses"] == 0
    assert shape2["fxgraph_hits"] >= 1 and shape2["reused"] is True
    assert shape2["saved"] is None  # nothing new to write


def test_accel_installs_the_compiled_forward_once(components, monkeypatch, tmp_path: Path):
    """accel.compile_unet wraps the UNet's forward (torch.compile stubbed here: the wiring,
    not inductor, is under test) with its artefact store under $MLC_CACHE_DIR/compiled."""
    import copy

    from mlc.engine import accel

    calls: list[dict] = []

    def fake_compile(fn, **kw):
        calls.append(kw)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setenv("MLC_CACHE_DIR", str(tmp_path))
    for name in (
        "TORCHINDUCTOR_CACHE_DIR",
        "TORCHINDUCTOR_FX_GRAPH_CACHE",
        "TORCHINDUCTOR_AUTOGRAD_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    comps = copy.copy(components)
    comps.unet = copy.deepcopy(components.unet)
    forward = accel.compile_unet(comps)
    assert accel.compile_unet(comps) is forward and calls == [{"dynamic": False}]
    assert isinstance(comps.unet.forward, CompiledUNet)
    assert forward.store.root == tmp_path / "compiled"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    x = torch.randn(2, 4, 4, 4)
    cond = torch.randn(2, 77, components.unet.config.cross_attention_dim)
    with torch.no_grad():
        got = comps.unet(x, torch.tensor(10), encoder_hidden_states=cond, return_dict=False)[0]
        want = components.unet(x, torch.tensor(10), encoder_hidden_states=cond, return_dict=False)
    assert torch.equal(got, want[0])
    report = accel.report(comps.unet)
    assert report["compile"]["compile_cache"] == "miss"
    assert report["compile"]["shapes"][0]["shape"] == [2, 4, 4, 4]
    assert report["graphs"]["replays"] == 0
