"""What `mlc setup` writes into a container, checked without Docker: the login-shell profile
with the engine's defaults, sourced by a real sh."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mlc import provision


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_profile_survives_quotes_and_dollars(tmp_path, shell):
    if not shutil.which(shell):
        pytest.skip(f"no {shell}")
    state = {
        "ckpt": "/models/it's here/$HOME/`id`/m.ckpt",
        "cache_dir": '/models/a "b" c/.mlc-cache',
        "tiny_vae": "/models/x\\y/t.safetensors",
    }
    env = provision.engine_env(state)
    profile = tmp_path / "mlc-engine.sh"
    profile.write_text(provision.profile(env))
    script = f'. "{profile}" && printf "%s\\n" "$MLC_CKPT" "$MLC_CACHE_DIR" "$MLC_TINY_VAE"'
    p = subprocess.run([shell, "-c", script], capture_output=True, text=True, env={})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.splitlines() == [state["ckpt"], state["cache_dir"], state["tiny_vae"]]
