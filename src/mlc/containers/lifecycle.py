"""Start, stop and remove a container, and AIME's auto-stop when the last shell is gone."""

from __future__ import annotations

import contextlib

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from mlc.containers.container import KEEP_RUNNING_MARK, Container


def start(c: Container, keep_running: bool = False) -> bool:
    """Start C if needed; returns whether it was started. keep_running marks an `mlc start`."""
    c.reload()
    started = c.status != "running"
    if started:
        c.raw.start()
        c.reload()
    if keep_running:
        c.exec_run(["sh", "-c", f"echo '{c.started_at}' > {KEEP_RUNNING_MARK}"], user="root")
    return started


def busy(dc: docker.DockerClient, c: Container) -> bool:
    """Whether anything besides the keep-alive runs in C: other execs or background processes."""
    c.reload()
    if c.status != "running":
        return False
    for eid in c.raw.attrs.get("ExecIDs") or []:
        try:
            if dc.api.exec_inspect(eid).get("Running"):
                return True
        except NotFound:
            continue
    procs = c.raw.top(ps_args="-eo pid,comm").get("Processes") or []
    return len(procs) > 2  # docker-init and sleep


def stop_if_idle(dc: docker.DockerClient, c: Container) -> bool:
    """AIME's auto-stop: stop C when the last shell is gone, unless `mlc start` started it."""
    c.reload()
    if c.status != "running" or c.keeps_running() or busy(dc, c):
        return False
    stop(c)
    return True


def stop(c: Container) -> None:
    """Stop C (SIGTERM to its init, then SIGKILL after 10 s)."""
    c.raw.stop(timeout=10)


def remove(dc: docker.DockerClient, c: Container) -> None:
    """Remove C; the workspace, data and models folders are never touched."""
    image_tag = c.image
    c.raw.remove(v=False, force=False)
    # AIME MLC committed a per-container image `<repo>:<name>._.<uid>`: remove it too.
    if image_tag.endswith(f":{c.docker_name}"):
        with contextlib.suppress(ImageNotFound, APIError):
            dc.images.remove(image_tag)
