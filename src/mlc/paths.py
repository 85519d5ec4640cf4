"""Host paths as a container sees them, through its mounts: plain (host folder, container
folder) pairs, as :attr:`mlc.containers.Container.mounts` gives them. No Docker here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mlc.containers.labels import MOUNT_POINTS, Mount
from mlc.errors import MlcError

PATH_FLAGS = ("--from-file", "--ckpt", "--config", "--tiny_vae")
"""Engine flags whose value is a file the container must read."""
OUTPUT_FLAGS = ("--outdir", "--bench_json")
"""Engine flags whose value is where the container writes: it must be in a mount."""
OPTIONAL_VALUE = ("--tiny_vae", "--outdir")  # bare: $MLC_TINY_VAE, the default outdir
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


def in_mount_point(value: str) -> bool:
    """Whether VALUE is a container path under one of mlc's mount points (/workspace/x)."""
    path = PurePosixPath(value)
    return any(path == inside or inside in path.parents for _, inside in MOUNT_POINTS)


def output_path(mounts: Sequence[Mount], value: str, where: str, *, remote: bool = False) -> str:
    """Where the container WHERE should write for an output flag's VALUE (``--outdir``).

    A host path under a mount is translated; a container path under a mount point
    (``/workspace/out``) passes; any other absolute path is refused, since what is written
    there would stay inside the container (and go with `mlc remove`). A relative path is
    taken from the current folder when that is inside a mount, else from the workspace (the
    engine's working folder in the container), as before; on a REMOTE engine's container
    always from the workspace (the current folder here is not on its host).
    """
    path = Path(value).expanduser()
    if not path.is_absolute() and remote:
        return value
    if not path.is_absolute():
        cwd = Path.cwd()
        if not any(cwd == outside or outside in cwd.parents for outside, _ in mounts):
            return value
        path = cwd / path
    for outside, inside in mounts:
        if path == outside or outside in path.parents:
            return str(inside / path.relative_to(outside).as_posix())
    if in_mount_point(str(path)):
        return str(path)
    places = ", ".join(str(o) for o, _ in mounts)
    raise MlcError(
        f"{value} is not inside a folder that {where} mounts: what the engine writes there "
        "would stay inside the container",
        hint=f"use a folder under {places}",
    )


def translate_paths(
    mounts: Sequence[Mount], flags: list[str], where: str, *, remote: bool = False
) -> list[str]:
    """Host paths in FLAGS (`--from-file prompts.txt`, `--outdir DIR`, ...) as the container
    WHERE sees them.

    For files the engine reads (:data:`PATH_FLAGS`), a value that exists on the host
    (relative to the current folder) is rewritten to its place under the MOUNTS; one outside
    every mount is an error; anything else (a path that only exists in the container) passes
    unchanged. Output folders (:data:`OUTPUT_FLAGS`) follow :func:`output_path`. For a
    REMOTE engine's container, paths name files on its host: one under a mount is rewritten
    without looking at this machine's files, anything else passes unchanged.
    """
    out: list[str] = []
    i = 0
    known = PATH_FLAGS + OUTPUT_FLAGS
    while i < len(flags):
        flag, value = flags[i], None
        optional = flag in OPTIONAL_VALUE and (i + 1 == len(flags) or flags[i + 1][:1] == "-")
        if flag in known and i + 1 < len(flags) and not optional:
            value, i = flags[i + 1], i + 2
        elif flag.partition("=")[0] in known and "=" in flag:
            flag, _, value = flag.partition("=")
            i += 1
        else:
            out.append(flag)
            i += 1
            continue
        if flag in OUTPUT_FLAGS:
            value = output_path(mounts, value, where, remote=remote)
        elif remote:
            outside = Path(value)
            for host_dir, inside in mounts:
                if outside == host_dir or host_dir in outside.parents:
                    value = str(inside / outside.relative_to(host_dir).as_posix())
                    break
        else:
            host_path = Path(value).expanduser()
            if host_path.exists() and not value.startswith(INSIDE_PREFIXES):
                value = str(inside_path(mounts, host_path, where))
        out += [flag, value]
    return out
