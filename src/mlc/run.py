"""The host side of `mlc txt2img`: the engine's defaults from what `mlc setup` recorded, host
paths translated through the mounts, the warm worker or a one-shot run, and Ctrl-C, SIGTERM
and SIGHUP passed on as a cancel (docker exec does not forward signals)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import docker

from mlc import containers, host, provision, results, scaleout, warmpath
from mlc.containers import Container
from mlc.invocation import CLIENT, HOST_FLAGS, ONE_SHOT, Invocation, plan

__all__ = [
    "CLIENT",
    "HOST_FLAGS",
    "ONE_SHOT",
    "Invocation",
    "engine_help",
    "plan",
    "prewarm",
    "txt2img",
    "worker_status",
]

ENGINE_PARSERS = ("mlc.engine.options", "mlc.engine.txt2img")
"""Where the engine's argparse parser is built (``build_parser()``), newest layout first: light
modules, so the host reads the engine's flags without torch and without a container."""
OFF = ("0", "off", "no", "false")  # MLC_PREWARM values that turn pre-warming off


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
        state = provision.load_state(c)
        inv = plan(name, state, c.mounts, flags, remote=bool(remote_host))
        if not remote_host:
            remember(c, state)
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


# -- the warm worker: pre-warm, the fast path's route, its status -----------------------------


def worker_folder(c: Container) -> Path | None:
    """The host folder of C's worker (a container made before mlc had one, or one on a remote
    engine: None)."""
    worker = c.labels.worker
    if not worker or containers.remote_host():
        return None
    return Path(worker)


def remember(c: Container, state: dict[str, Any]) -> None:
    """Leave the fast path (:mod:`mlc.fastpath`) what it needs to plan a request for C."""
    d = worker_folder(c)
    if d is not None:
        env = c.raw.attrs.get("Config", {}).get("Env") or []
        warmpath.write_route(d, container_id=c.id, state=state, mounts=c.mounts, container_env=env)


def forget(c: Container) -> None:
    """C's engine or model changed: the fast path waits for the next slow call's route."""
    d = worker_folder(c)
    if d is not None:
        warmpath.forget_route(d)


def prewarm_wanted(c: Container, asked: bool = True, state: dict[str, Any] | None = None) -> bool:
    """Whether to pre-warm C: not opted out per call (ASKED false, ``MLC_PREWARM=0``) nor for
    the container (`mlc prewarm NAME --off`, recorded in its setup STATE, else the
    ``mlc create --no-prewarm`` label)."""
    if opted_out(asked):
        return False
    setting = (state or {}).get("prewarm")
    return bool(setting) if setting is not None else c.labels.prewarms


def opted_out(asked: bool = True) -> bool:
    """Whether this call opts out of pre-warming (``--no-prewarm``, ``MLC_PREWARM=0``)."""
    return not asked or os.environ.get("MLC_PREWARM", "1").strip().lower() in OFF


def set_prewarm(c: Container, on: bool) -> None:
    """Whether `mlc start`, `mlc open` and `mlc setup` pre-warm C from now on (kept in its setup
    state, so it outlives the container's label)."""
    state = provision.load_state(c)
    state["prewarm"] = on
    provision.save_state(c, state)


def prewarm(c: Container, asked: bool = True, now: bool = False) -> str | None:
    """Start C's engine worker in the background (a detached exec as its user, the worker's
    own start path) and have it load the installed model now; the model's file name, or None
    when there is nothing to do (opted out, no model or engine installed, not running, the
    worker holds it already). NOW: asked for by name (`mlc prewarm`), whatever the setting."""
    if not now and opted_out(asked):
        return None
    c.reload()
    if c.status != "running":
        return None
    state = provision.load_state(c)
    if not now and not prewarm_wanted(c, asked, state):
        return None
    if not state.get("ckpt") or not (state.get("engine") or {}).get("worker"):
        return None
    found = worker_status(c)
    if found and found.get("state") in ("loading", "ready") and found.get("model") == state["ckpt"]:
        remember(c, state)
        return None  # it holds (or loads) the model already
    inv = plan(c.name, state, c.mounts, [], remote=bool(containers.remote_host()))
    if inv.one_shot:
        return None
    remember(c, state)
    env = {k: v for k, v in inv.env.items() if k != "MLC_REQUEST_TAG"}
    argv = [inv.python, "-m", CLIENT, "--warm", *inv.flags]
    c.exec_run(argv, user=c.exec_user, environment=env, workdir="/workspace", detach=True)
    return PurePosixPath(state["ckpt"]).name


def worker_status(c: Container) -> dict[str, Any] | None:
    """What C's worker says it does (``state``, ``model``, ...), asked on its socket from the
    host; None when it has none listening (or its folder is not reachable from here)."""
    if containers.remote_host():
        return None
    return warmpath.container_status(c.labels.worker, c.status == "running")
