"""Model setup for a container: where weights go, fetching or generating them, recording them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker
from docker.models.containers import Container

from mlc import containers, fetch, provision
from mlc.errors import MlcError
from mlc.recipes import Recipe, load_recipes

MOUNTS = (("MODELS_MOUNT", "/models"), ("WORK_MOUNT", "/workspace"), ("DATA_MOUNT", "/data"))


def mounts_of(c: Container) -> list[tuple[Path, PurePosixPath]]:
    """(host folder, container folder) for each of C's mlc mounts, models first."""
    out = []
    for label, inside in MOUNTS:
        value = c.labels.get(f"{containers.LABEL}.{label}", "-")
        if value and value != "-":
            out.append((Path(value), PurePosixPath(inside)))
    return out


def default_models_dir(c: Container) -> Path:
    """The models mount when C has one, else the workspace (as in the seed)."""
    mounts = mounts_of(c)
    if not mounts:
        raise MlcError(f"container {containers.display_name(c)} has no workspace mount")
    return mounts[0][0]


def inside_path(c: Container, host_path: Path) -> PurePosixPath:
    """Where HOST_PATH appears inside C; an error when no mount holds it."""
    host_path = host_path.expanduser().absolute()
    for outside, inside in mounts_of(c):
        if host_path == outside or outside in host_path.parents:
            return inside / host_path.relative_to(outside).as_posix()
    places = ", ".join(str(o) for o, _ in mounts_of(c))
    raise MlcError(
        f"{host_path} is not visible inside {containers.display_name(c)}",
        hint=f"use a folder under {places}",
    )


@dataclass
class SetupResult:
    provisioned: provision.Provisioned
    installed: fetch.InstallResult
    ckpt_inside: str


def setup(
    dc: docker.DockerClient,
    c: Container,
    recipe: Recipe,
    *,
    models_dir: Path | None,
    url: str | None,
    from_archive: Path | None,
    keep_archive: bool,
    force: bool,
    progress: fetch.Progress,
    say: provision.Say,
) -> SetupResult:
    """Provision C for RECIPE, put its weights in the models folder, and record the checkpoint."""
    models_dir = (models_dir or default_models_dir(c)).expanduser().absolute()
    inside_path(c, models_dir)  # fail before any work when the container could not see it
    done = provision.provision(dc, c, recipe, say)

    def generate(dest: Path) -> None:
        cmd = [
            done.python.path if part in ("python", "python3") else part for part in recipe.generator
        ]
        dest.chmod(0o755)
        code = containers.exec_stream(dc, c, [*cmd, str(inside_path(c, dest))])
        if code != 0:
            raise MlcError(f"generating the {recipe.name} weights failed (exit {code})")

    installed = fetch.install(
        recipe,
        models_dir,
        url=url,
        from_archive=from_archive,
        keep_archive=keep_archive,
        force=force,
        generator=generate if recipe.source == "generate" else None,
        progress=progress,
    )
    ckpt_inside = str(inside_path(c, installed.ckpt))
    provision.record_model(c, recipe, ckpt_inside, str(inside_path(c, models_dir)))
    return SetupResult(done, installed, ckpt_inside)


def installed_in(dirs: list[Path]) -> dict[str, list[Path]]:
    """Recipe name -> the models folders (of DIRS) where it is installed."""
    where: dict[str, list[Path]] = {}
    for d in dict.fromkeys(dirs):
        for name in fetch.read_state(d).get("models", {}):
            where.setdefault(name, []).append(d)
    return where


def catalogue(dirs: list[Path]) -> list[tuple[Recipe, list[Path]]]:
    """Every recipe with the folders holding it."""
    where = installed_in(dirs)
    return [(r, where.get(name, [])) for name, r in sorted(load_recipes().items())]


PATH_FLAGS = ("--from-file", "--ckpt", "--config", "--tiny_vae")
OPTIONAL_VALUE = ("--tiny_vae",)  # bare `--tiny_vae` means $MLC_TINY_VAE


def translate_paths(c: Container, flags: list[str]) -> list[str]:
    """Host paths in FLAGS (`--from-file prompts.txt`, ...) as the container sees them.

    A value that exists on the host (relative to the current folder) is rewritten to its
    place under C's mounts; one outside every mount is an error; anything else (a path that
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
        if host_path.exists() and not value.startswith(("/workspace", "/models", "/data")):
            value = str(inside_path(c, host_path))
        out += [flag, value]
    return out
