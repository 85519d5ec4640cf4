"""The image a container is made from: local as is, else pulled, else built from its catalog
recipe (``--build``). Progress goes through :class:`mlc.progress.Progress`, as downloads do.

A catalog entry with a digest is *pinned*: only an image with that digest is used. A digest
is a registry's manifest digest (in the image's ``RepoDigests`` once pulled) or, for an image
that was never pushed (built or loaded here), its image ID. A pinned image is looked up by
digest, then under its tag, then pulled by digest; whatever is found is checked, and an image
with another digest is refused with both digests named."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound
from docker.models.images import Image

from mlc.catalog import Entry
from mlc.errors import ChecksumError, MlcError
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
    if entry.pin:
        return ensure_pinned(dc, entry, build, progress)
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


def repository(ref: str) -> str:
    """REF without its tag and digest: ``repo/name:tag@sha256:...`` -> ``repo/name``."""
    name = ref.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":")[0]


def pinned_by(image: Image, digest: str) -> bool:
    """Whether IMAGE is the one DIGEST names: its image ID, or one of its repo digests."""
    repo_digests = image.attrs.get("RepoDigests") or []
    return image.id == digest or any(d.endswith(f"@{digest}") for d in repo_digests)


def digest_of(image: Image, repo: str) -> str:
    """What IMAGE's digest is, as a catalog would pin it: its repo digest for REPO (or any
    repo digest), else its image ID."""
    repo_digests = image.attrs.get("RepoDigests") or []
    for d in sorted(repo_digests, key=lambda d: not d.startswith(f"{repo}@")):
        return d.partition("@")[2]
    return image.id


def _local(dc: docker.DockerClient, ref: str) -> Image | None:
    try:
        return dc.images.get(ref)
    except ImageNotFound:
        return None


def ensure_pinned(dc: docker.DockerClient, entry: Entry, build: bool, progress: Progress) -> str:
    """The image for pinned ENTRY, as a reference that names exactly it (``repo@digest``, or
    the image ID of a local-only image): found by digest, under its tag, or pulled by digest
    (or built with --build); another digest is a ChecksumError naming both."""
    pin = entry.pin or ""
    repo = repository(entry.image)
    by_digest = f"{repo}@{pin}"
    found = _local(dc, by_digest) or _local(dc, pin)
    if found is not None and pinned_by(found, pin):
        return by_digest if found.id != pin else found.id
    tagged = _local(dc, entry.image.split("@")[0])
    if tagged is not None and pinned_by(tagged, pin):
        return tagged.id if tagged.id == pin else by_digest
    progress.note(f"pulling {by_digest}")
    try:
        pull(dc, by_digest, progress)
        found = dc.images.get(by_digest)
    except (APIError, ImageNotFound, MlcError) as exc:
        reason = first_line(exc.explanation if isinstance(exc, APIError) else exc)
        if entry.build and build:
            progress.note(f"pull failed ({reason}); building {entry.image} from images/")
            found = dc.images.get(build_image(dc, entry, progress))
        elif tagged is not None:
            raise mismatch(entry, digest_of(tagged, repo), f"the pull failed: {reason}") from None
        else:
            raise MlcError(
                f"cannot pull image {by_digest}: {reason}",
                hint="check the network, or load the image with `docker load`",
            ) from None
    if not pinned_by(found, pin):
        raise mismatch(entry, digest_of(found, repo), "")
    return by_digest if found.id != pin else found.id


def mismatch(entry: Entry, have: str, why: str) -> ChecksumError:
    """The one line for an image whose digest is not the pinned one."""
    return ChecksumError(
        f"image {entry.image.split('@')[0]} does not match the catalog's digest: the catalog "
        f"pins {entry.pin}, the image here is {have}" + (f" ({why})" if why else ""),
        hint="pull or load the pinned image, or correct the digest in the catalog",
    )


def _split_ref(ref: str) -> tuple[str, str | None]:
    """(repository, tag) of REF; a digest is passed as the tag (Docker pulls by it); a
    reference without a tag is pulled whole."""
    if "@" in ref:
        return repository(ref), ref.partition("@")[2]
    if ":" in ref.split("/")[-1]:
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
