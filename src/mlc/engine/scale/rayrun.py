"""``--ray ADDRESS`` / ``--ray local``: the devices of a sharded run are Ray actors.

One actor per GPU of the cluster (Ray gives each its own GPU, which it sees as ``cuda``), or,
on a cluster without GPUs, one per CPU slot (``--ray_workers N`` sets the count). Each actor
loads the model once (``scale.shard``) and makes one image per call; the images come back
to the driver, which writes them (``scale.dispatch``), so the files, names and metadata are
those of a one-device run. ``local`` starts a private cluster on this machine for the run
and stops it afterwards; an ADDRESS (``HOST:6379``) joins a running one (docs/scale-out.md).

The only module that imports Ray, and only when ``--ray`` is given: Ray is an optional extra
(``pip install 'mlc-toolkit[cluster]'``), and its absence is one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from mlc.engine.scale.dispatch import Event
from mlc.engine.scale.plan import Job
from mlc.engine.scale.shard import Made, Shard
from mlc.engine.spec import RunSpec
from mlc.errors import EngineError, describe

INSTALL = "pip install 'mlc-toolkit[cluster]'"


def import_ray() -> Any:
    """The ``ray`` module, or an EngineError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise EngineError(f"--ray needs Ray, which is not installed here ({INSTALL})") from None
    return ray


class ShardActor:
    """A Ray actor around a Shard (the class Ray instantiates on a worker)."""

    def __init__(self, spec: RunSpec, device: str):
        self.shard = Shard(spec, device)

    def load(self) -> dict[str, Any]:
        return self.shard.load()

    def make(self, job: Job) -> Made:
        return self.shard.make(job)


class RayPool:
    """The actors of one run (back end of ``dispatch.run``)."""

    def __init__(self, spec: RunSpec):
        self.ray = import_ray()
        self.spec = spec
        self.labels: list[str] = []
        self.actors: list[Any] = []
        self.refs: dict[Any, tuple[int, str]] = {}  # object ref -> (actor, "ready" or "done")
        self.owns = False  # a local cluster started for this run

    def start(self) -> None:
        ray, spec = self.ray, self.spec
        quiet = {"include_dashboard": False, "log_to_driver": False}
        quiet["logging_level"] = logging.WARNING
        if spec.ray == "local":
            cpus = spec.ray_workers or os.cpu_count() or 1
            ray.init(address="local", num_cpus=cpus, **quiet)
            self.owns = True
        else:
            try:
                ray.init(
                    address=spec.ray, **{k: v for k, v in quiet.items() if k != "include_dashboard"}
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise EngineError(f"--ray {spec.ray}: cannot join the cluster: {err}") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        count = spec.ray_workers or gpus or max(1, cpus)
        device = "cuda" if gpus else "cpu"
        actor = ray.remote(ShardActor).options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)
        for wid in range(count):
            handle = actor.remote(self.spec, device)
            self.actors.append(handle)
            self.labels.append(f"ray-{device}#{wid}")
            self.refs[handle.load.remote()] = (wid, "ready")

    def submit(self, wid: int, job: Job) -> None:
        self.refs[self.actors[wid].make.remote(job)] = (wid, "done")

    def events(self, timeout: float) -> list[Event]:
        """What happened since the last call (waits up to TIMEOUT for the first event)."""
        ray = self.ray
        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        out = []
        for ref in ready:
            wid, kind = self.refs.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - an actor died or its call raised
                cause = getattr(exc, "cause", None)
                error = describe(
                    cause if isinstance(cause, BaseException) else exc, unforeseen_is_bug=False
                )
                out.append(Event("failed", wid, error=error))
                continue
            if kind == "ready":
                out.append(Event("ready", wid, info=value))
            else:
                out.append(Event("done", wid, made=value))
        return out

    def retire(self, wid: int) -> None:
        """Stop actor WID (it failed)."""
        self.refs = {r: v for r, v in self.refs.items() if v[0] != wid}
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(self.actors[wid])

    def close(self) -> None:
        for wid in range(len(self.actors)):
            self.retire(wid)
        if self.owns:
            self.ray.shutdown()
