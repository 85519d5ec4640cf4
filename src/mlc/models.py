"""Model setup for a container: where weights go, fetching or generating them, recording them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker

from mlc import containers, fetch, paths, provision
from mlc.containers import Container
from mlc.errors import MlcError
from mlc.progress import Progress
from mlc.recipes import Recipe, load_recipes


def default_models_dir(c: Container) -> Path:
    """The models mount when C has one, else the workspace (as in the seed)."""
    mounts = c.mounts
    if not mounts:
        raise MlcError(f"container {c.name} has no workspace mount")
    return mounts[0][0]


def inside_path(c: Container, host_path: Path) -> PurePosixPath:
    """Where HOST_PATH appears inside C; an error when no mount holds it."""
    return paths.inside_path(c.mounts, host_path, c.name)


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
    progress: Progress,
) -> SetupResult:
    """Provision C for RECIPE, put its weights in the models folder, and record the checkpoint."""
    models_dir = (models_dir or default_models_dir(c)).expanduser().absolute()
    inside_path(c, models_dir)  # fail before any work when the container could not see it
    done = provision.provision(dc, c, recipe, progress)

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
