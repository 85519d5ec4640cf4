"""One `mlc txt2img` as the engine command it becomes in the container: host paths translated
through the mounts, ``--ckpt`` and the engine's environment from what `mlc setup` recorded,
the warm worker's client or the one-shot engine. No Docker here: the slow path
(:mod:`mlc.run`) and the fast path (:mod:`mlc.fastpath`) plan the same way."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlc import paths
from mlc.containers.labels import Mount
from mlc.errors import MlcError

ONE_SHOT = "mlc.engine.txt2img"
CLIENT = "mlc.engine.client"
HOST_FLAGS = ("--no-worker",)  # read here, never passed to the engine


@dataclass(frozen=True)
class Invocation:
    """One engine command inside the container: ``python -m module *flags`` with env."""

    python: str
    module: str
    flags: list[str]
    env: dict[str, str] = field(default_factory=dict)
    tag: str = ""

    @property
    def one_shot(self) -> bool:
        return self.module == ONE_SHOT

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", self.module, *self.flags]


def plan(
    name: str,
    state: Mapping[str, Any],
    mounts: Sequence[Mount],
    flags: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    tag: str | None = None,
    remote: bool = False,
) -> Invocation:
    """The engine command for `mlc txt2img NAME FLAGS` in a container with the setup STATE and
    MOUNTS: host paths translated, --ckpt defaulted, worker unless --no-worker (or an engine
    copied before the worker existed). ENVIRON is the caller's (default: os.environ)."""
    environ = os.environ if environ is None else environ
    flags = list(flags)
    one_shot = "--no-worker" in flags
    flags = [f for f in flags if f not in HOST_FLAGS]
    if "engine" not in state:
        raise MlcError(f"the engine is not set up in '{name}'", hint=f"run: mlc setup {name}")
    flags = paths.translate_paths(mounts, flags, name, remote=remote)
    if state.get("ckpt") and not any(f == "--ckpt" or f.startswith("--ckpt=") for f in flags):
        flags = ["--ckpt", state["ckpt"], *flags]
    if not state["engine"].get("worker"):  # an engine copied before the warm worker
        one_shot = True
    tag = tag or uuid.uuid4().hex
    env = {"PYTHONUNBUFFERED": "1", "MLC_REQUEST_TAG": tag, **engine_env(dict(state))}
    if environ.get("MLC_WORKER_IDLE"):
        env["MLC_WORKER_IDLE"] = environ["MLC_WORKER_IDLE"]
    return Invocation(
        python=state.get("python", "python3"),
        module=ONE_SHOT if one_shot else CLIENT,
        flags=flags,
        env=env,
        tag=tag,
    )


def engine_env(state: dict[str, Any]) -> dict[str, str]:
    """The engine's defaults that `mlc setup` recorded, as environment variables."""
    env = {
        "MLC_CKPT": state.get("ckpt"),
        "MLC_CACHE_DIR": state.get("cache_dir"),
        "MLC_TINY_VAE": state.get("tiny_vae"),
    }
    return {k: v for k, v in env.items() if v}
