"""A container's filesystem changes as an image, and back: commit, save only the layers its
base image does not have, load.

``docker save`` always writes every layer of an image. An export needs only the layers
above the base image (usually one: what `mlc setup`, apt and pip added), so the saved stream
is read once and each member hashed on the way: a layer whose sha256 (its diff ID) is one
of the base's is dropped, the image's config (the member whose sha256 is the image ID) is
rewritten, the rest of ``docker save``'s bookkeeping is dropped. ``docker load`` then takes a
manifest whose lower layers are not in the file, as long as the engine has them (the base
image, or any image on the same layers).

The rewritten config is the base image's own runtime config (its Env, Cmd, User, Labels),
plus two labels naming the base: what `mlc create` gave the container (the host's proxies,
its CA bundle path, the user, the name) is the exporting host's and stays there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
from docker.errors import APIError, ImageNotFound
from docker.models.images import Image

from mlc.containers.container import Container
from mlc.containers.images import first_line, pull
from mlc.errors import MlcError
from mlc.fetch.files import copy_hashed
from mlc.progress import NullProgress, Progress

IMPORT_REPO = "mlc/imported"
"""Repository of an imported container's image; its tag is the container's Docker name, so
`mlc remove` removes it with the container (as it does AIME's per-container images)."""
BASE_ID_LABEL = "mlc.export.base-id"
BASE_REF_LABEL = "mlc.export.base-ref"
CHUNK = 1 << 20
IN_MEMORY = 32 << 20  # a saved member up to this size is hashed in memory, larger ones spooled


@dataclass(frozen=True)
class Base:
    """The image an export's layers sit on: how to name it, its ID, its registry digests and
    its layers (diff IDs, lowest first)."""

    reference: str
    id: str
    repo_digests: tuple[str, ...]
    layers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "id": self.id,
            "repo_digests": list(self.repo_digests),
            "layers": list(self.layers),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Base:
        """A Base from an export's header (ValueError when it is not one)."""
        if not isinstance(data, dict):
            raise ValueError("base is not a mapping")
        digests, layers = data.get("repo_digests") or [], data.get("layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers + digests):
            raise ValueError("base layers are not a list of digests")
        return cls(str(data.get("reference", "")), str(data.get("id", "")), tuple(digests),
                   tuple(layers))  # fmt: skip


def _base_of(image: Image, reference: str) -> Base:
    return Base(
        reference,
        image.id,
        tuple(image.attrs.get("RepoDigests") or ()),
        tuple((image.attrs.get("RootFS") or {}).get("Layers") or ()),
    )


def find_base(dc: docker.DockerClient, c: Container) -> Base:
    """The base of C's changes: the image it was created from, or, for an imported container,
    the image its import sat on (while that is still here)."""
    image = dc.images.get(c.raw.attrs["Image"])
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    if labels.get(BASE_ID_LABEL):
        with contextlib.suppress(ImageNotFound):
            origin = dc.images.get(labels[BASE_ID_LABEL])
            return _base_of(origin, labels.get(BASE_REF_LABEL) or origin.id)
    return _base_of(image, c.image or image.id)


@contextlib.contextmanager
def committed(dc: docker.DockerClient, c: Container) -> Iterator[Image]:
    """C's filesystem as a new, untagged image (a running C is paused meanwhile), removed
    again afterwards. An interruption (Ctrl-C, SIGTERM, SIGHUP) waits for the commit, which
    Docker would finish anyway, so the image it makes is never left behind unknown."""
    image = None
    try:
        with held_signals():
            try:
                image = c.raw.commit(message=f"mlc export of {c.name}", pause=True)
            except APIError as exc:
                raise MlcError(f"cannot export '{c.name}': {first_line(exc.explanation)}") from None
        yield image
    finally:
        if image is not None:
            with contextlib.suppress(APIError, ImageNotFound):
                dc.images.remove(image.id)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held back meanwhile: the first one that came is handled as
    usual once it is over (a mask would not do: the signal may reach another thread, and
    Python runs its handler in the main thread at once)."""
    came: list[int] = []
    saved: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handler = signal.getsignal(sig)
            if handler not in (signal.SIG_IGN, None):
                saved[sig] = signal.signal(sig, lambda signum, _frame: came.append(signum))
    except ValueError:  # not the main thread: nothing can be held
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if came:
            handler = saved[came[0]]
            if callable(handler):
                handler(came[0], None)
            else:  # SIG_DFL
                os.kill(os.getpid(), came[0])


@dataclass
class Member:
    """One file of the saved image, as the export writes it."""

    name: str
    size: int
    data: IO[bytes]


class _Stream(io.RawIOBase):
    """An iterable of byte chunks as a readable file, reporting what was read to PROGRESS."""

    def __init__(self, chunks: Iterable[bytes], progress: Progress) -> None:
        self.chunks = iter(chunks)
        self.rest = b""
        self.progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self.rest:
            try:
                self.rest = next(self.chunks)
            except StopIteration:
                return 0
            self.progress.advance(len(self.rest))
        n = min(len(buf), len(self.rest))
        buf[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


def image_members(
    dc: docker.DockerClient,
    image: Image,
    base: Base,
    *,
    with_base: bool,
    spool_dir: Path,
    progress: Progress | None = None,
) -> Iterator[Member]:
    """IMAGE as ``docker load`` takes it: the rewritten config, the layers above BASE (every
    layer WITH_BASE), and last ``manifest.json``. Each member's data is only valid until the
    next one is asked for."""
    progress = progress or NullProgress()
    layers = list((image.attrs.get("RootFS") or {}).get("Layers") or [])
    below = (
        set() if with_base or layers[: len(base.layers)] != list(base.layers) else set(base.layers)
    )
    config_name = None
    manifest = None
    written: set[str] = set()
    base_config = dc.api.inspect_image(base.id).get("Config") or {}
    progress.start("saving the image", image.attrs.get("Size") or None)
    raw = io.BufferedReader(_Stream(dc.api.get_image(image.id, chunk_size=CHUNK), progress), CHUNK)
    try:
        with tarfile.open(fileobj=raw, mode="r|") as saved:
            for info in saved:
                src = saved.extractfile(info) if info.isfile() else None
                if src is None:
                    continue
                if info.name == "manifest.json":
                    manifest = json.loads(src.read())
                    continue
                digest = hashlib.sha256()
                with tempfile.SpooledTemporaryFile(IN_MEMORY, dir=spool_dir) as spool:
                    copy_hashed(src, spool, digest, NullProgress(), what="saving the image")
                    found = f"sha256:{digest.hexdigest()}"
                    spool.seek(0)
                    if found == image.id:
                        config = rewrite_config(json.loads(spool.read()), base_config, base)
                        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
                        yield Member(config_name, len(config), io.BytesIO(config))
                    elif found in layers and found not in below:
                        written.add(info.name)
                        yield Member(info.name, info.size, spool)
    except (tarfile.TarError, ValueError) as exc:
        raise MlcError(f"cannot read Docker's saved image: {exc}") from None
    finally:
        progress.finish()
    if config_name is None or not manifest or not isinstance(manifest, list):
        raise MlcError("cannot export: Docker's saved image has no config or no manifest")
    paths = list(manifest[0].get("Layers") or [])
    if len(paths) != len(layers):
        raise MlcError("cannot export: Docker's saved manifest does not match the image")
    for path, layer in zip(paths, layers, strict=True):
        if layer not in below and path not in written:
            raise MlcError(
                f"cannot export: Docker saved the layer {layer} in a form mlc cannot read"
            )
    data = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": paths}]).encode()
    yield Member("manifest.json", len(data), io.BytesIO(data))


def rewrite_config(config: dict[str, Any], base_config: dict[str, Any], base: Base) -> bytes:
    """The saved image's config with the base image's runtime config (and two labels naming
    the base) instead of the container's, and without the container's own record."""
    runtime = dict(base_config)
    runtime["Labels"] = {
        **(runtime.get("Labels") or {}),
        BASE_ID_LABEL: base.id,
        BASE_REF_LABEL: base.reference,
    }
    out = {k: v for k, v in config.items() if k not in ("container", "container_config")}
    out["config"] = runtime
    return json.dumps(out, sort_keys=True, separators=(",", ":")).encode()


# -- import ------------------------------------------------------------------------------------


def has_layers(dc: docker.DockerClient, base: Base) -> bool:
    """Whether the engine has BASE's layers (the base image, or any image on them)."""
    want = list(base.layers)
    for ref in (base.id, *base.repo_digests):
        with contextlib.suppress(ImageNotFound, APIError):
            if dc.images.get(ref).attrs["RootFS"]["Layers"][: len(want)] == want:
                return True
    for image in dc.images.list(all=True):
        if (image.attrs.get("RootFS") or {}).get("Layers", [])[: len(want)] == want:
            return True
    return False


def ensure_base(dc: docker.DockerClient, base: Base, what: str, progress: Progress) -> None:
    """Make sure the engine has BASE's layers: here already, else pulled by its registry
    digest; else one line naming the image WHAT needs."""
    if not base.layers or has_layers(dc, base):
        return
    reason = "it was never pulled from a registry"
    for ref in base.repo_digests:
        progress.note(f"pulling {ref}")
        try:
            pull(dc, ref, progress)
        except (APIError, MlcError) as exc:
            reason = f"pulling it failed: {first_line(getattr(exc, 'explanation', None) or exc)}"
            continue
        if has_layers(dc, base):
            return
    raise MlcError(
        f"{what} holds only the changes above the image {base.reference} ({base.id}), "
        f"which is not on this host and {reason}",
        hint="pull or load that image here first, or export again with --with-base",
    )


def load(dc: docker.DockerClient, chunks: Iterable[bytes]) -> None:
    """``docker load`` of the tar stream CHUNKS; Docker's error, if any, as one line."""
    try:
        for event in dc.api.load_image(chunks):
            if isinstance(event, dict) and event.get("error"):
                raise MlcError(f"Docker could not load the image: {first_line(event['error'])}")
    except APIError as exc:
        raise MlcError(f"Docker could not load the image: {first_line(exc.explanation)}") from None


def tag_imported(dc: docker.DockerClient, image_id: str, docker_name: str) -> str:
    """Tag the loaded image IMAGE_ID for the container DOCKER_NAME; refuses to move a tag
    that names another image."""
    ref = f"{IMPORT_REPO}:{docker_name}"
    with contextlib.suppress(ImageNotFound):
        if dc.images.get(ref).id != image_id:
            raise MlcError(
                f"the image tag {ref} already names another image",
                hint=f"remove it first (docker rmi {ref}) if nothing uses it",
            )
    dc.images.get(image_id).tag(IMPORT_REPO, docker_name)
    return ref


def untag(dc: docker.DockerClient, ref: str) -> None:
    """Undo :func:`tag_imported` (and drop the image when nothing else uses it)."""
    with contextlib.suppress(APIError, ImageNotFound):
        dc.images.remove(ref)


def exists(dc: docker.DockerClient, image_id: str) -> bool:
    """Whether the engine has the image IMAGE_ID."""
    try:
        dc.images.get(image_id)
        return True
    except ImageNotFound:
        return False


def drop(dc: docker.DockerClient, image_id: str) -> None:
    """Remove IMAGE_ID unless something (a tag, a container) still uses it."""
    with contextlib.suppress(APIError, ImageNotFound):
        dc.images.remove(image_id, noprune=False)
