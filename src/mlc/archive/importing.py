"""`mlc import FILE [NEWNAME]`: the exported image loaded, and a container made from it for
the current user through the normal create path (:func:`mlc.containers.create`).

The file is read twice: first to check it whole (its format, every member's sum, that the
name is free and that nothing in the host folders would be replaced), then to load the
image and unpack any folder contents it carries. Nothing is made until the first pass is
through; a failure after it removes what the import made (the image tag, the container),
and never a file of the user's.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
from docker.errors import ImageNotFound, NotFound

from mlc import host, provision
from mlc.archive import folders
from mlc.archive.fileformat import Reader
from mlc.catalog import Entry
from mlc.containers import Container, create, snapshot
from mlc.containers.labels import tag, validate_name
from mlc.containers.spec import (
    DEFAULT_ULIMITS,
    CreateSpec,
    Gpus,
    Ulimits,
    check_driver,
    resolve_dir,
)
from mlc.errors import MlcError
from mlc.progress import NullProgress, Progress

Member = tuple[tarfile.TarInfo, IO[bytes] | None]
IMAGE = "image/"


@dataclass
class Imported:
    """What `mlc import` made: the container, the export's header, and the notes to show."""

    container: Container
    header: dict[str, Any]
    image: str
    unpacked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def roots(head: dict[str, Any], given: dict[str, Path | None]) -> dict[str, Path | None]:
    """The host folder for each mount: as given (-w, -d, -m), else the export's hint (a
    workspace without either: ~/workspace, as `mlc create`)."""
    hints = head.get("mounts") if isinstance(head.get("mounts"), dict) else {}
    out: dict[str, Path | None] = {}
    for folder in folders.FOLDERS:
        hint = hints.get(folder)
        path = given.get(folder) or (Path(hint) if isinstance(hint, str) and hint else None)
        if folder == "workspace" and path is None:
            path = Path("~/workspace")
        out[folder] = resolve_dir(path, folder) if path else None
        if out[folder] is not None:
            _creatable(out[folder], folder)
    return out


def _creatable(path: Path, folder: str) -> None:
    """Refuse, before anything is loaded, a folder that is missing and cannot be made (an
    exporting host's path that makes no sense here)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        flag = {"workspace": "-w", "data": "-d", "models": "-m"}[folder]
        raise MlcError(
            f"cannot create the {folder} folder {path}: {existing} is not writable",
            hint=f"pick one with {flag} DIR",
        )


def _gpus(head: dict[str, Any], gpus: str | None) -> Gpus:
    """-g as given; else none for a container exported without GPUs, all otherwise."""
    if gpus is not None:
        return Gpus.parse(gpus)
    return Gpus.parse("none" if str(head.get("gpus")) == "none" else "all")


def _image_id(manifest: Any, path: Path) -> str:
    try:
        config = manifest[0]["Config"]
    except (IndexError, KeyError, TypeError):
        config = None
    if not (isinstance(config, str) and config.endswith(".json") and len(config) == 69):
        raise MlcError(f"{path} is damaged (its image has no readable manifest)")
    return f"sha256:{config[:-5]}"


def import_container(
    dc: docker.DockerClient,
    path: Path,
    name: str | None = None,
    *,
    workspace: Path | None = None,
    data: Path | None = None,
    models: Path | None = None,
    gpus: str | None = None,
    ulimits: str = DEFAULT_ULIMITS,
    forward_network: bool = True,
    progress: Progress | None = None,
) -> Imported:
    """Make container NAME (default: the exported name) for the current user from the export
    PATH; host folders as given, else the export's hints."""
    progress = progress or NullProgress()
    path = path.expanduser()
    user = host.current_user()
    with Reader(path, progress, "checking") as r:
        head = r.header
        name = name or str(head.get("name") or "")
        validate_name(name)
        docker_name = tag(name, user.uid)
        with contextlib.suppress(NotFound):
            dc.containers.get(docker_name)
            raise MlcError(
                f"container '{name}' already exists",
                hint="import it under another name: mlc import FILE NEWNAME",
            )
        try:
            base = snapshot.Base.from_dict(head.get("base"))
        except ValueError as exc:
            raise r.damaged(f"its header: {exc}") from None
        folder_roots = roots(head, {"workspace": workspace, "data": data, "models": models})
        image_ref = f"{snapshot.IMPORT_REPO}:{docker_name}"
        spec = _spec(head, name, user, folder_roots, image_ref, gpus, ulimits, forward_network)
        carried = [f for f in head.get("contents") or [] if f in folders.FOLDERS]
        plan = folders.Plan({f: p for f in carried if (p := folder_roots.get(f))})
        manifest = None
        for info, member in r.members():
            if info.name == f"{IMAGE}manifest.json" and member is not None:
                try:
                    manifest = json.loads(member.read())
                except ValueError:
                    raise r.damaged("its image manifest is not JSON") from None
            elif not info.name.startswith(IMAGE):
                plan.check(info, str(path))
    image_id = _image_id(manifest, path)
    # What is here already stays after a failure: the image (the same file imported before)
    known = {"image": snapshot.exists(dc, image_id), "tag": snapshot.exists(dc, image_ref)}
    with contextlib.suppress(ImageNotFound):
        if dc.images.get(image_ref).id != image_id:
            raise MlcError(
                f"the image tag {image_ref} already names another image",
                hint=f"remove it first (docker rmi {image_ref}) if nothing uses it",
            )
    if spec.gpus.wanted:
        check_driver(spec.entry)
    if not head.get("with_base"):
        snapshot.ensure_base(dc, base, path.name, progress)
    return _load_and_create(dc, path, spec, image_id, plan, progress, keep=known)


def _spec(
    head: dict[str, Any],
    name: str,
    user: host.User,
    folder_roots: dict[str, Path | None],
    image_ref: str,
    gpus: str | None,
    ulimits: str,
    forward_network: bool,
) -> CreateSpec:
    entry = head.get("entry") if isinstance(head.get("entry"), dict) else {}
    arch = host.detect_arch()
    workspace = folder_roots["workspace"]
    assert workspace is not None
    return CreateSpec(
        name=name,
        entry=Entry(
            framework=str(head.get("framework") or "Imported"),
            version=str(head.get("version") or "-"),
            arch=(arch,),
            image=image_ref,
            min_driver=entry.get("min_driver"),
        ),
        arch=arch,
        user=user,
        workspace=workspace,
        data=folder_roots.get("data"),
        models=folder_roots.get("models"),
        gpus=_gpus(head, gpus),
        gpus_explicit=gpus is not None,
        ulimits=Ulimits.parse(ulimits),
        ulimits_explicit=ulimits != DEFAULT_ULIMITS,
        forward_network=forward_network,
    )


def _load_and_create(
    dc: docker.DockerClient,
    path: Path,
    spec: CreateSpec,
    image_id: str,
    plan: folders.Plan,
    progress: Progress,
    keep: dict[str, bool],
) -> Imported:
    """The second pass: load the image, make the container, unpack the folders; on failure,
    remove what it made (the image and its tag too, unless KEEP says they were here)."""
    image_ref = spec.entry.image
    try:
        with Reader(path, progress, "importing") as r:
            members = r.members()
            rest: list[Member] = []
            snapshot.load(dc, _image_stream(members, rest))
            snapshot.tag_imported(dc, image_id, tag(spec.name, spec.user.uid))
            c = create(dc, spec, progress)
            unpacked = []
            for info, member in itertools.chain(rest, members):
                plan.unpack(info, member, progress)
                prefix, _ = folders.split(info.name)
                if prefix not in unpacked and prefix in plan.roots:
                    unpacked.append(prefix)
    except BaseException:
        # The name was free when the file was checked: a container by it now is this one's
        # (also when create was cut short before it could clean up).
        with contextlib.suppress(Exception):
            dc.containers.get(tag(spec.name, spec.user.uid)).remove(force=True)
        if not keep["tag"]:
            snapshot.untag(dc, image_ref)
        if not keep["image"]:
            snapshot.drop(dc, image_id)
        raise
    return Imported(c, r.header, image_ref, unpacked, _notes(c, r.header, unpacked))


def _image_stream(members: Iterator[Member], rest: list[Member]) -> Iterator[bytes]:
    """The export's image members as the tar stream ``docker load`` takes; the first member
    after them is kept in REST (the members' iterator is left there)."""
    for info, member in members:
        if not info.name.startswith(IMAGE):
            rest.append((info, member))
            break
        inner = copy.copy(info)
        inner.name = info.name[len(IMAGE) :]
        yield inner.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        left = info.size if info.isfile() else 0
        while member is not None and left > 0:
            chunk = member.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        if info.isfile() and info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _notes(c: Container, head: dict[str, Any], unpacked: list[str]) -> list[str]:
    """What the user should know: a model the state names that is not there."""
    notes = []
    state = provision.load_state(c)
    ckpt = state.get("ckpt")
    if ckpt and "models" not in unpacked:
        code, _ = c.exec_run(["test", "-e", str(ckpt)], user="root")
        if code != 0:
            notes.append(
                f"[{c.name}] its model {ckpt} is not here (the export carries no models): "
                f"run `mlc setup {c.name}`, or import with -m pointing at a folder holding it"
            )
    return notes
