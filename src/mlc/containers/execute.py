"""Commands in a container: streamed (output back, exit code returned) or an interactive
shell through the docker CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import BinaryIO

import docker

from mlc.containers.container import Container
from mlc.errors import MlcError

PASSED_VARS = ("TERM", "LANG", "DISPLAY", "NCCL_P2P_LEVEL", "CUDA_VISIBLE_DEVICES")


def exec_env(c: Container) -> dict[str, str]:
    """The environment of a command in C: its name, and the caller's terminal and GPU vars."""
    env = {"MLC_CONTAINER": c.name}
    for var in PASSED_VARS:
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def exec_stream(
    dc: docker.DockerClient,
    c: Container,
    cmd: list[str],
    *,
    user: str | None = None,
    workdir: str = "/workspace",
    env: dict[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run CMD in C non-interactively, streaming its output; returns its exit code."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    eid = dc.api.exec_create(
        c.id,
        cmd,
        user=user or c.exec_user,
        workdir=workdir,
        environment={**exec_env(c), **(env or {})},
    )["Id"]
    for out, err in dc.api.exec_start(eid, stream=True, demux=True):
        if out:
            stdout.write(out)
            stdout.flush()
        if err:
            stderr.write(err)
            stderr.flush()
    code = dc.api.exec_inspect(eid)["ExitCode"]
    return 127 if code is None else int(code)


def shell(c: Container, command: list[str] | None = None) -> int:
    """An interactive login shell (or COMMAND) through the docker CLI; returns its exit code."""
    cli = shutil.which("docker")
    if not cli:
        raise MlcError(
            "the docker command-line client is needed for interactive shells",
            hint="install docker-ce-cli or docker.io",
        )
    argv = [cli, "exec", "-i", "--detach-keys", "ctrl-^,ctrl-@", "-u", c.exec_user]
    argv += ["-w", "/workspace"]
    if sys.stdin.isatty():
        argv.append("-t")
    for k, v in exec_env(c).items():
        argv += ["-e", f"{k}={v}"]
    argv += [c.docker_name, *(command or ["bash", "-l"])]
    return subprocess.call(argv)
