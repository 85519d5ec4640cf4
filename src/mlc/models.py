"""Model setup for a container: where weights go, fetching or generating them, recording them."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker

from mlc import containers, fetch, paths, provision, results
from mlc.containers import Container
from mlc.errors import MlcError, UsageError
from mlc.fetch.inside import recipe_json
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
    """Provision C for RECIPE, put its weights in the models folder, and record the checkpoint.
    On a remote engine the models folder is on its host: mlc's fetch code runs in C."""
    remote_host = containers.remote_host()
    models_dir = models_dir or default_models_dir(c)
    if remote_host:
        models_dir = Path(os.path.normpath(models_dir))
        if from_archive is not None:
            raise UsageError(
                f"--from-archive reads a file on this machine; the engine is on host {remote_host}",
                hint="put the archive where the container sees it and pass --url file:///PATH",
            )
    else:
        models_dir = models_dir.expanduser().absolute()
    inside_path(c, models_dir)  # fail before any work when the container could not see it
    done = provision.provision(dc, c, recipe, progress)
    if remote_host:
        py = done.python.path
        installed = _install_inside(dc, c, recipe, py, models_dir, url, keep_archive, force)
        ckpt_inside = str(inside_path(c, installed.ckpt))
        provision.record_model(c, recipe, ckpt_inside, str(inside_path(c, models_dir)))
        return SetupResult(done, installed, ckpt_inside)

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


def _install_inside(
    dc: docker.DockerClient,
    c: Container,
    recipe: Recipe,
    python: str,
    models_dir: Path,
    url: str | None,
    keep_archive: bool,
    force: bool,
) -> fetch.InstallResult:
    """:func:`mlc.fetch.install` run in C (``python -m mlc.fetch.inside``) as its user; the
    result's paths are the engine host's."""
    cmd = [python, "-m", "mlc.fetch.inside", str(inside_path(c, models_dir))]
    cmd += ["--recipe", recipe_json(recipe), *(["--url", url] if url else [])]
    cmd += ["--force"] * force + ["--keep-archive"] * keep_archive
    out = io.BytesIO()
    code = containers.exec_stream(dc, c, cmd, stdout=out)
    lines = out.getvalue().decode(errors="replace").strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, ValueError):
        data = {"error": f"setting up {recipe.name} in {c.name} failed (exit {code})"}
    if code != 0 or "error" in data:
        raise MlcError(data.get("error") or f"setting up {recipe.name} failed (exit {code})")

    def outside(value: str | None) -> Path | None:
        return Path(results.host_path(c, PurePosixPath(value))) if value else None

    data.update(
        {k: outside(data.get(k)) for k in ("models_dir", "ckpt", "archive", "state_file")},
        files=[outside(f) for f in data.get("files", [])],
    )
    return fetch.InstallResult(**data)


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
