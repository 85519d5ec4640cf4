"""The host side of `mlc txt2img`: the engine's defaults from what `mlc setup` recorded, host
paths translated through the mounts, the warm worker or a one-shot run, and Ctrl-C, SIGTERM
and SIGHUP passed on as a cancel (docker exec does not forward signals)."""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker

from mlc import containers, host, paths, provision, results, scaleout
from mlc.containers import Container
from mlc.containers.labels import Mount
from mlc.errors import MlcError

ONE_SHOT = "mlc.engine.txt2img"
CLIENT = "mlc.engine.client"
HOST_FLAGS = ("--no-worker",)  # read here, never passed to the engine
ENGINE_PARSERS = ("mlc.engine.options", "mlc.engine.txt2img")
"""Where the engine's argparse parser is built (``build_parser()``), newest layout first: light
modules, so the host reads the engine's flags without torch and without a container."""


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
    env = {"PYTHONUNBUFFERED": "1", "MLC_REQUEST_TAG": tag, **provision.engine_env(dict(state))}
    if environ.get("MLC_WORKER_IDLE"):
        env["MLC_WORKER_IDLE"] = environ["MLC_WORKER_IDLE"]
    return Invocation(
        python=state.get("python", "python3"),
        module=ONE_SHOT if one_shot else CLIENT,
        flags=flags,
        env=env,
        tag=tag,
    )


def engine_help(prog: str = "mlc txt2img NAME") -> str | None:
    """The engine's flags as its own ``--help`` prints them (None when no parser is found)."""
    for module in ENGINE_PARSERS:
        try:
            parser = importlib.import_module(module).build_parser()
        except (ImportError, AttributeError):
            continue
        parser.prog = prog
        return parser.format_help()
    return None


def wants_help(flags: Sequence[str]) -> bool:
    """Whether FLAGS ask for help (answered on the host: no container is started)."""
    return any(f in ("-h", "--help") for f in flags)


def txt2img(
    name: str,
    flags: Sequence[str],
    dc: docker.DockerClient | None = None,
    note: Callable[[str], None] | None = None,
) -> int:
    """Run the engine in the caller's container NAME with FLAGS; returns the engine's exit code.
    The container is started when needed; unless `mlc start` started it, it stops once nothing
    runs there any more (at once, or after the warm worker's idle exit).

    ``--fetch-outputs DIR`` (read here) copies the files the run wrote into DIR on this
    machine; on a remote engine without it, NOTE is told where they are on its host.

    Interrupted (Ctrl-C, SIGTERM, SIGHUP: a ``KeyboardInterrupt``), the request is cancelled in
    the worker and the engine command in the container gets the signal, before this re-raises.
    """
    flags, fetch_to = results.take_fetch_flag(flags)
    dc = dc or containers.client()
    remote_host = containers.remote_host()
    c = containers.find(dc, name, host.current_user())
    flags, scaled = scaleout.engine_flags(flags, c.gpus, f"container '{name}'")
    if scaled:  # --gpus/--devices/--ray: the engine starts its own device processes
        flags = [*flags, "--no-worker"]
    containers.start(c)
    try:
        inv = plan(name, provision.load_state(c), c.mounts, flags, remote=bool(remote_host))
        mark = results.mark(c, inv.tag) if fetch_to or remote_host else None
        try:
            code = containers.exec_stream(dc, c, inv.argv, env=inv.env, tag=inv.tag)
        except KeyboardInterrupt:
            if not inv.one_shot:
                cancel(c, inv)
            raise
        if mark:
            results.report(c, inv.flags, mark, fetch_to, remote_host, note or (lambda _: None))
        return code
    finally:
        containers.stop_if_idle(dc, c)


def cancel(c: Container, inv: Invocation) -> None:
    """Ask the worker to cancel the request (docker exec passes no signal on)."""
    with contextlib.suppress(Exception):  # best effort while interrupted
        c.exec_run([inv.python, "-m", CLIENT, "--cancel", inv.tag], user=c.exec_user)
