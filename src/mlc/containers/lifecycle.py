"""Start, stop and remove a container, and AIME's auto-stop: a container that `mlc start` did
not start stops when the last thing of the user's in it is gone. The host looks when an mlc
command ends; what outlives the command (the engine worker, a background job) is left to a
watcher inside the container (``idle.sh``), which stops it once that has ended too."""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from mlc import warmpath
from mlc.containers import remote
from mlc.containers.container import KEEP_RUNNING_MARK, Container
from mlc.containers.images import first_line
from mlc.errors import MlcError

IDLE_WATCH = "mlc-idle"  # the watcher's $0, how its exec is told from the user's
IDLE_CHECK_S = 3  # seconds between the watcher's looks (idle twice in a row: stop)


def start(c: Container, keep_running: bool = False) -> bool:
    """Start C if needed; returns whether it was started. keep_running marks an `mlc start`."""
    c.reload()
    started = c.status != "running"
    if started:
        worker = c.labels.worker
        if worker and not remote.remote_host():  # its worker folder, removed meanwhile
            with contextlib.suppress(OSError):
                warmpath.make_host_dir(Path(worker))
        try:
            c.raw.start()
        except APIError as exc:
            raise refused_start(c, str(exc.explanation or exc)) from None
        c.reload()
    if keep_running:
        c.exec_run(["sh", "-c", f"echo '{c.started_at}' > {KEEP_RUNNING_MARK}"], user="root")
    return started


def refused_start(c: Container, reason: str) -> MlcError:
    """Why Docker would not start C, as one line: a host folder gone (the workspace, data or
    models folder it mounts) is named, with what to do."""
    missing = "bind source path does not exist: "
    if missing in reason:
        path = reason.split(missing, 1)[1].strip().rstrip('")')
        what = next((f"its {i.name} folder" for o, i in c.mounts if str(o) == path), None)
        if what is None:  # not one of the user's folders: the host CA bundle, say
            return MlcError(
                f"cannot start '{c.name}': {path}, which it mounts, is missing on the host",
                hint="restore it, or recreate the container (the folders are kept)",
            )
        return MlcError(
            f"cannot start '{c.name}': {what} {path} is missing",
            hint=f"restore it, or create it empty with: mkdir -p {path}",
        )
    return MlcError(f"cannot start '{c.name}': {first_line(reason)}")


def busy(dc: docker.DockerClient, c: Container) -> bool:
    """Whether anything besides the keep-alive (and the idle watcher) runs in C: other execs or
    background processes."""
    c.reload()
    if c.status != "running":
        return False
    watcher: set[str] = set()  # host pids of the idle watcher's exec
    for eid in c.raw.attrs.get("ExecIDs") or []:
        try:
            info = dc.api.exec_inspect(eid)
        except NotFound:
            continue
        if not info.get("Running"):
            continue
        if IDLE_WATCH in ((info.get("ProcessConfig") or {}).get("arguments") or []):
            watcher.add(str(info.get("Pid")))
            continue
        return True
    procs = c.raw.top(ps_args="-eo pid,ppid,comm").get("Processes") or []
    procs = [p for p in procs if p[0] not in watcher and p[1] not in watcher]
    return len(procs) > 2  # docker-init and sleep


def stop_if_idle(dc: docker.DockerClient, c: Container) -> bool:
    """AIME's auto-stop: stop C when the last shell is gone, unless `mlc start` started it.
    When something still runs in C, a watcher inside stops C once that has ended."""
    try:
        c.reload()
        if c.status != "running" or c.keeps_running():
            return False
        if busy(dc, c):
            watch_idle(c)
            return False
    except APIError:  # it stopped meanwhile (its idle watcher): nothing left to do
        c.reload()
        if c.status != "running":
            return False
        raise
    stop(c)
    return True


def watch_idle(c: Container) -> None:
    """Leave the idle watcher (``idle.sh``) in running C: it stops C once nothing of the user's
    runs there, unless `mlc start` marks this run. One per run; only under Docker's init
    (mlc's containers), where the container's command can be told to end."""
    if not c.raw.attrs.get("HostConfig", {}).get("Init"):
        return
    script = resources.files("mlc.containers").joinpath("idle.sh").read_text(encoding="utf-8")
    argv = ["sh", "-c", script, IDLE_WATCH, c.started_at, str(IDLE_CHECK_S)]
    c.exec_run(argv, user="root", detach=True)


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
