"""Host paths as a container sees them, through its mounts: plain (host folder, container
folder) pairs, as :attr:`mlc.containers.Container.mounts` gives them. No Docker here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mlc.containers.labels import MOUNT_POINTS, Mount
from mlc.errors import MlcError

PATH_FLAGS = ("--from-file", "--ckpt", "--config", "--tiny_vae")
"""Engine flags whose value is a file the container must read."""
OPTIONAL_VALUE = ("--tiny_vae",)  # bare `--tiny_vae` means $MLC_TINY_VAE
INSIDE_PREFIXES = tuple(str(inside) for _, inside in MOUNT_POINTS)


def inside_path(mounts: Sequence[Mount], host_path: Path, where: str) -> PurePosixPath:
    """Where HOST_PATH appears inside the container WHERE (its MOUNTS); an error when no mount
    holds it."""
    host_path = host_path.expanduser().absolute()
    for outside, inside in mounts:
        if host_path == outside or outside in host_path.parents:
            return inside / host_path.relative_to(outside).as_posix()
    places = ", ".join(str(o) for o, _ in mounts)
    raise MlcError(
        f"{host_path} is not visible inside {where}", hint=f"use a folder under {places}"
    )


def translate_paths(mounts: Sequence[Mount], flags: list[str], where: str) -> list[str]:
    """Host paths in FLAGS (`--from-file prompts.txt`, ...) as the container WHERE sees them.

    A value that exists on the host (relative to the current folder) is rewritten to its
    place under the MOUNTS; one outside every mount is an error; anything else (a path that
    only exists in the container) passes unchanged.
    """
    out: list[str] = []
    i = 0
    while i < len(flags):
        flag, value = flags[i], None
        optional = flag in OPTIONAL_VALUE and (i + 1 == len(flags) or flags[i + 1][:1] == "-")
        if flag in PATH_FLAGS and i + 1 < len(flags) and not optional:
            value, i = flags[i + 1], i + 2
        elif flag.partition("=")[0] in PATH_FLAGS and "=" in flag:
            flag, _, value = flag.partition("=")
            i += 1
        else:
            out.append(flag)
            i += 1
            continue
        host_path = Path(value).expanduser()
        if host_path.exists() and not value.startswith(INSIDE_PREFIXES):
            value = str(inside_path(mounts, host_path, where))
        out += [flag, value]
    return out
