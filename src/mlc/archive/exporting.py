"""`mlc export NAME FILE`: a container's changes (an image layer), what mlc knows about it
(the header), and, only when asked, the contents of its host folders."""

from __future__ import annotations

import dataclasses
import datetime
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

import mlc
from mlc import catalog, provision
from mlc.archive import folders
from mlc.archive.fileformat import FORMAT, HEADER, KIND, Writer
from mlc.containers import Container, snapshot
from mlc.containers.labels import NONE
from mlc.errors import MlcError
from mlc.progress import NullProgress, Progress


@dataclass(frozen=True)
class Exported:
    """What `mlc export` wrote: the file, its size and sha256, and what is in it."""

    path: Path
    size: int
    sha256: str
    base: str
    contents: list[str]


def hint(path: str | None, home: Path) -> str | None:
    """A host folder as a hint for the importing host: ``~/...`` under the user's home,
    else the path as it is; None for no folder."""
    if not path or path == NONE:
        return None
    p = Path(path)
    try:
        rel = p.relative_to(home)
    except ValueError:
        return str(p)
    return "~" if str(rel) == "." else f"~/{rel.as_posix()}"


def _entry(c: Container) -> dict[str, Any] | None:
    """C's catalog entry (the importing host uses its minimum driver), when it is known."""
    try:
        return catalog.load().resolve(c.framework, c.version, c.labels.arch or "").as_dict()
    except MlcError:
        return None


def header(
    c: Container, base: snapshot.Base, state: dict[str, Any], contents: list[str], full: bool
) -> dict[str, Any]:
    """The export's header: the format, then everything mlc knows about C."""
    labels = {k: v for k, v in dataclasses.asdict(c.labels).items() if v is not None}
    home = Path.home()  # as `~` is read on the importing side (and by `mlc create`)
    return {
        "kind": KIND,
        "format": FORMAT,
        "mlc": mlc.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "name": c.name,
        "framework": c.framework,
        "version": c.version,
        "gpus": c.gpus,
        "labels": labels,
        "mounts": {f: hint(getattr(c.labels, f), home) for f in folders.FOLDERS},
        "state": state,
        "engine": state.get("engine"),
        "entry": _entry(c),
        "base": base.as_dict(),
        "with_base": full,
        "contents": contents,
    }


def export_container(
    dc: docker.DockerClient,
    c: Container,
    dest: Path,
    *,
    with_folders: tuple[str, ...] = (),
    with_base: bool = False,
    progress: Progress | None = None,
) -> Exported:
    """Write C to DEST (a new file): its filesystem changes above its base image (every
    layer WITH_BASE), its labels, mount hints and state record, and the contents of the
    host folders named in WITH_FOLDERS (``workspace``, ``data``, ``models``)."""
    progress = progress or NullProgress()
    dest = dest.expanduser().absolute()
    roots = []
    for folder in with_folders:
        path = getattr(c.labels, folder)
        if not path or path == NONE:
            raise MlcError(f"container '{c.name}' has no {folder} folder to export")
        roots.append((folder, Path(path)))
    writer = None
    try:
        writer = Writer(dest)
        state = provision.load_state(c)
        base = snapshot.find_base(dc, c)
        contents = ["image", *with_folders]
        head = header(c, base, state, contents, with_base)
        writer.add_bytes(HEADER, json.dumps(head, indent=2, sort_keys=True).encode())
        above = "every layer of its image" if with_base else f"its changes above {base.reference}"
        progress.note(f"[{c.name}] saving {above}")
        with snapshot.committed(dc, c) as image:
            for m in snapshot.image_members(
                dc, image, base, with_base=with_base, spool_dir=dest.parent, progress=progress
            ):
                info = _file_info(f"image/{m.name}", m.size)
                writer.add(info, m.data)
        for folder, root in roots:
            folders.pack(writer, root, folder, progress)
        size, digest = writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return Exported(dest, size, digest, base.reference, contents)


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info
