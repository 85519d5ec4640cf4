"""The image a container is made from: local as is, else pulled, else built from its catalog
recipe (``--build``). Progress goes through :class:`mlc.progress.Progress`, as downloads do."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound

from mlc.catalog import Entry
from mlc.errors import MlcError
from mlc.progress import NullProgress, Progress


def first_line(text: Any) -> str:
    """The first line of TEXT (a Docker error's explanation), or 'unknown error'."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "unknown error"


def ensure_image(
    dc: docker.DockerClient, entry: Entry, build: bool, progress: Progress | None = None
) -> str:
    """The image for ENTRY: local as is, else pulled, else built from images/ with --build."""
    progress = progress or NullProgress()
    ref = entry.reference
    try:
        dc.images.get(ref)
        return ref
    except ImageNotFound:
        pass
    progress.note(f"pulling {ref}")
    try:
        pull(dc, ref, progress)
        return ref
    except (APIError, MlcError) as exc:
        reason = exc.explanation if isinstance(exc, APIError) else str(exc)
        if entry.build and build:
            progress.note(f"pull failed ({first_line(reason)}); building {ref} from images/")
            return build_image(dc, entry, progress)
        hint = (
            "its Dockerfile recipe is in images/: add --build to build it locally"
            if entry.build
            else "check the network, or load the image with `docker load`"
        )
        raise MlcError(f"cannot pull image {ref}: {first_line(reason)}", hint=hint) from None


def _split_ref(ref: str) -> tuple[str, str | None]:
    """(repository, tag) of REF; a digest reference or one without a tag is pulled whole."""
    if "@" not in ref and ":" in ref.split("/")[-1]:
        repo, _, tag = ref.rpartition(":")
        return repo or ref, tag or None
    return ref, None


def pull(dc: docker.DockerClient, ref: str, progress: Progress) -> None:
    """Pull REF, its bytes (summed over the layers) as one progress task."""
    repo, tag = _split_ref(ref)
    layers: dict[str, tuple[int, int]] = {}
    progress.start(f"pull {ref}", None)
    try:
        for ev in dc.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in ev:
                raise MlcError(ev["error"])
            detail = ev.get("progressDetail") or {}
            if ev.get("id") and detail.get("total"):
                layers[ev["id"]] = (detail.get("current", 0), detail["total"])
                progress.update(
                    sum(c for c, _ in layers.values()), sum(t for _, t in layers.values())
                )
    finally:
        progress.finish()
    dc.images.get(ref)


def _recipe_root(entry: Entry) -> Path:
    """A user catalog's recipes are relative to that catalog; built-in ones to images/."""
    origin = Path(entry.origin)
    if origin.is_file():
        return origin.parent
    return Path(str(resources.files("mlc").joinpath("images")))


def build_image(dc: docker.DockerClient, entry: Entry, progress: Progress) -> str:
    """Build ENTRY's image from its catalog recipe (Dockerfile and build args)."""
    recipe = entry.build or {}
    dockerfile = _recipe_root(entry) / recipe.get("dockerfile", "")
    if not dockerfile.is_file():
        raise MlcError(f"no Dockerfile recipe {dockerfile} for {entry.framework} {entry.version}")
    args = {k: str(v) for k, v in (recipe.get("args") or {}).items()}
    try:
        for ev in dc.api.build(
            path=str(dockerfile.parent),
            dockerfile=dockerfile.name,
            tag=entry.image,
            buildargs=args,
            decode=True,
            rm=True,
        ):
            if "error" in ev:
                raise MlcError(f"building {entry.image} failed: {first_line(ev['error'])}")
            if ev.get("stream", "").strip():
                progress.note(ev["stream"].rstrip())
    except APIError as exc:
        raise MlcError(f"building {entry.image} failed: {first_line(exc.explanation)}") from None
    return entry.image
