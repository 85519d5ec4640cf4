"""The lean imports (``mlc.engine.modelimports``): the SD v1 model classes without their
folders' eager ``__init__`` and without ``torch._dynamo``, and what a later ``--compile``
needs from dynamo replayed exactly as a plain import would have registered it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import torch
from mlc.engine.modelimports import model_classes, real_dynamo
classes = model_classes()
before = "torch._dynamo" in sys.modules
import diffusers.models.autoencoders as pkg  # a deferred folder still answers every name
tiny_vae = pkg.AutoencoderTiny.__name__
from diffusers.models import UNet2DConditionModel
same = UNet2DConditionModel is classes[0]
dynamo = real_dynamo()
from torch._dynamo import trace_rules
allowed, constant, modules = [], [], []
for name, mod in list(sys.modules.items()):
    if not name.startswith(("diffusers.", "transformers.")) or mod is None:
        continue
    modules.append(name)
    for attr, obj in list(vars(mod).items()):
        if getattr(obj, "__module__", None) != name:
            continue
        if callable(obj) and trace_rules.is_callable_allowed(obj):
            allowed.append(f"{name}.{attr}")
        if getattr(obj, "_dynamo_marked_constant", False):
            constant.append(f"{name}.{attr}")
print(json.dumps({"dynamo_before": before, "tiny_vae": tiny_vae, "same": same,
                  "real": type(dynamo).__name__, "allowed": sorted(allowed),
                  "constant": sorted(constant), "modules": modules}))
"""


def probe(lean: bool) -> dict:
    env = {**os.environ, "MLC_LEAN_IMPORTS": "1" if lean else "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lean_imports_skip_dynamo_and_replay_its_registrations() -> None:
    lean, plain = probe(True), probe(False)
    assert lean["dynamo_before"] is False  # the model classes came without torch._dynamo
    assert plain["dynamo_before"] is True  # ... which a plain import pulls in
    for got in (lean, plain):
        assert got["tiny_vae"] == "AutoencoderTiny" and got["same"] is True
        assert got["real"] == "module"  # real_dynamo() gives the real module
    # what diffusers and transformers registered with dynamo at import time is the same, in
    # every module both imported (the plain import has more: every model of each folder)
    both = set(lean["modules"]) & set(plain["modules"])
    assert len(both) == len(lean["modules"])

    def only_both(names: list[str]) -> list[str]:
        return [n for n in names if n.rsplit(".", 1)[0] in both]

    assert only_both(plain["allowed"]), "diffusers registers attention blocks (allow_in_graph)"
    assert only_both(lean["allowed"]) == only_both(plain["allowed"])
    assert only_both(plain["constant"]), "transformers marks functions assume_constant_result"
    assert only_both(lean["constant"]) == only_both(plain["constant"])


FALLBACK = """
import json, sys
import torch
from mlc.engine.modelimports import _DynamoStandIn

stand_in = _DynamoStandIn.install()
import torch._dynamo as d

def f(x):
    return x

same = d.allow_in_graph(f) is f  # recorded, returned unchanged
recorded = len(_DynamoStandIn.recorded)
cfg = d.config  # a name the stand-in does not hold: the real module, now
real = sys.modules["torch._dynamo"]
from torch._dynamo import trace_rules
stand_in.uninstall()  # what model_classes() does at the end: leaves the real module alone
out = {"same": same, "recorded": recorded, "real": not isinstance(real, _DynamoStandIn)}
out["config"] = cfg is real.config
out["kept"] = sys.modules["torch._dynamo"] is real
out["replayed"] = trace_rules.is_callable_allowed(f)
out["left"] = len(_DynamoStandIn.recorded)
print(json.dumps(out))
"""


def test_the_stand_in_falls_back_to_the_real_dynamo() -> None:
    """Any name the stand-in does not hold imports the real torch._dynamo on the spot, with the
    registrations recorded so far replayed: nothing is lost but the time."""
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "same": True,
        "recorded": 1,
        "real": True,
        "config": True,
        "kept": True,
        "replayed": True,
        "left": 0,
    }
