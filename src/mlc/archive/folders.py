"""A host folder's contents in an export (``--with-workspace`` and friends), and back.

Packing walks the folder without following symlinks: directories, regular files and
symlinks go in (mode and mtime kept, owner not: an import is for whoever imports it);
sockets, pipes and devices are skipped. Unpacking never replaces anything: every member is
checked before the import starts (a safe relative path, not under a symlink, nothing there
yet), and files are created exclusively, never through a symlink.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mlc.archive.fileformat import Writer
from mlc.errors import MlcError
from mlc.progress import Progress

FOLDERS = ("workspace", "data", "models")
"""Which host folders an export may carry, as member prefixes and label attributes."""


def _walk(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Everything under ROOT (not following symlinks), parents before children, sorted."""
    out: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            out.append((path, path.lstat()))
    return out


def _raise(exc: OSError) -> None:
    raise exc


def pack(writer: Writer, root: Path, prefix: str, progress: Progress) -> int:
    """Add ROOT's contents under PREFIX/; returns how many entries went in."""
    if not root.is_dir():
        raise MlcError(f"cannot export the {prefix} folder {root}: it does not exist")
    try:
        entries = _walk(root)
        total = sum(st.st_size for _, st in entries if stat.S_ISREG(st.st_mode))
        progress.start(f"packing {prefix}", total)
        writer.add(_info(prefix, root.lstat(), tarfile.DIRTYPE))
        count = 0
        for path, st in entries:
            name = f"{prefix}/{path.relative_to(root).as_posix()}"
            if stat.S_ISDIR(st.st_mode):
                writer.add(_info(name, st, tarfile.DIRTYPE))
            elif stat.S_ISLNK(st.st_mode):
                info = _info(name, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                writer.add(info)
            elif stat.S_ISREG(st.st_mode):
                info = _info(name, st, tarfile.REGTYPE)
                info.size = st.st_size
                with open(path, "rb") as src:
                    writer.add(info, src, progress)
            else:
                continue
            count += 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise MlcError(
            f"cannot export the {prefix} folder: reading{where} failed: {exc.strerror or exc}"
        ) from None
    finally:
        progress.finish()
    return count


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    return info


@dataclass
class Plan:
    """Where each carried folder goes, checked member by member before anything is made."""

    roots: dict[str, Path]
    links: set[str] = field(default_factory=set)
    files: int = 0
    size: int = 0

    def check(self, info: tarfile.TarInfo, what: str) -> None:
        """Refuse a member that could escape its folder or would replace anything."""
        prefix, rel = split(info.name)
        if prefix not in self.roots:
            return
        if not (info.isdir() or info.isfile() or info.issym()):
            raise MlcError(f"refusing {what}: {info.name} is not a file, folder or symlink")
        if rel and not safe(rel):
            raise MlcError(f"refusing {what}: member {info.name!r} points outside its folder")
        parents = [f"{prefix}/{p}" for p in _parents(rel)]
        if any(p in self.links for p in parents):
            raise MlcError(f"refusing {what}: {info.name} lies under a symlink in it")
        dest = self.roots[prefix] / rel if rel else self.roots[prefix]
        for parent in [self.roots[prefix], *(self.roots[prefix] / p for p in _parents(rel))]:
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise MlcError(f"cannot import into {parent}: it is not a folder")
        if info.issym():
            self.links.add(info.name)
        if info.isdir():
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise MlcError(f"cannot import {info.name}: {dest} is in the way")
            return
        if dest.exists() or dest.is_symlink():
            raise MlcError(
                f"cannot import {info.name}: {dest} already exists",
                hint="import into an empty folder (-w, -d, -m); nothing is replaced",
            )
        self.files += 1
        self.size += info.size

    def unpack(self, info: tarfile.TarInfo, data: IO[bytes] | None, progress: Progress) -> None:
        """Create the member INFO (already checked) in its folder."""
        prefix, rel = split(info.name)
        if prefix not in self.roots:
            return
        root = self.roots[prefix]
        dest = root / rel if rel else root
        try:
            if info.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    dest.chmod(info.mode | 0o700)
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            if info.issym():
                os.symlink(info.linkname, dest)
                return
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(dest, flags, info.mode & 0o777 | 0o600), "wb") as out:
                while data is not None and (chunk := data.read(1 << 20)):
                    out.write(chunk)
                    progress.advance(len(chunk))
            os.utime(dest, (info.mtime, info.mtime))
        except OSError as exc:
            raise MlcError(
                f"cannot import {info.name} into {dest}: {exc.strerror or exc}"
            ) from None


def split(name: str) -> tuple[str, str]:
    """(folder, relative path) of a member name: ``workspace/a/b`` -> (workspace, a/b)."""
    prefix, _, rel = name.partition("/")
    return prefix, rel.strip("/")


def safe(rel: str) -> bool:
    """Whether REL is a plain relative path (no root, no ``..``, no NUL)."""
    if rel.startswith("/") or "\0" in rel:
        return False
    norm = posixpath.normpath(rel)
    return norm != ".." and not norm.startswith("../") and ".." not in rel.split("/")


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1] if rel else []
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
