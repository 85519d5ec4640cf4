"""Unpack an archive safely: every zip member checked before anything is written, extracted
into a staging directory beside the destination, then renamed into place (``commit``), so a
failure leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlc.errors import MlcError, NoSpaceError
from mlc.fetch.files import check_space, copy_hashed
from mlc.progress import NullProgress, Progress

STAGE_PREFIX = ".mlc-stage-"


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    path: str  # normalised relative POSIX path
    kind: str  # "file", "dir" or "symlink"
    target: str = ""


def _safe_member_path(name: str, archive: Path) -> str:
    """The normalised relative path of a zip member; MlcError when it could escape."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise MlcError(f"refusing {archive.name}: member '{name}' has an absolute path")
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".")]
    if ".." in parts:
        raise MlcError(f"refusing {archive.name}: member '{name}' points outside ('..')")
    if any("\0" in p for p in parts):
        raise MlcError(f"refusing {archive.name}: member '{name}' has a NUL byte")
    return "/".join(parts)


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> list[_Member]:
    """Every member, checked before anything is written."""
    members: list[_Member] = []
    symlinks: set[str] = set()
    for info in zf.infolist():
        path = _safe_member_path(info.filename, archive)
        if not path:
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if target.startswith(("/", "\\")) or resolved == ".." or resolved.startswith("../"):
                raise MlcError(
                    f"refusing {archive.name}: symlink '{info.filename}' points outside "
                    f"('{target}')"
                )
            members.append(_Member(info, path, "symlink", target))
            symlinks.add(path)
        elif info.is_dir() or stat.S_ISDIR(mode):
            members.append(_Member(info, path, "dir"))
        else:
            members.append(_Member(info, path, "file"))
    for member in members:
        parents = member.path.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in symlinks:
                raise MlcError(
                    f"refusing {archive.name}: member '{member.info.filename}' lies under a "
                    "symlink in the archive"
                )
    return members


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise MlcError(f"archive {archive} does not exist") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise MlcError(
            f"{archive.name} is not a valid zip archive (truncated or corrupt: {exc})",
            hint="delete it and download again",
        ) from None


def _extract_zip(archive: Path, into: Path, progress: Progress) -> dict[str, str]:
    """Check, then extract ``archive`` into the empty dir ``into``; sha256 per file."""
    hashes: dict[str, str] = {}
    with _open_zip(archive) as zf:
        members = _zip_members(zf, archive)
        needed = sum(m.info.file_size for m in members if m.kind == "file")
        check_space(into, needed, f"unpack {archive.name}")
        progress.start(f"Unpacking {archive.name}", needed)
        try:
            for m in members:
                dst = into / m.path
                if m.kind == "dir":
                    dst.mkdir(parents=True, exist_ok=True)
                    continue
                if m.kind != "file":
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with zf.open(m.info) as src, open(dst, "wb") as out:
                    copy_hashed(src, out, digest, progress, what=f"unpacking {archive.name}")
                hashes[m.path] = digest.hexdigest()
            for m in members:  # symlinks last, so nothing is ever written through one
                if m.kind == "symlink":
                    dst = into / m.path
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.unlink(missing_ok=True)
                    os.symlink(m.target, dst)
                    real = Path(os.path.realpath(dst))
                    if not real.is_relative_to(Path(os.path.realpath(into))):
                        raise MlcError(
                            f"refusing {archive.name}: symlink '{m.info.filename}' "
                            "resolves outside the archive"
                        )
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise MlcError(
                f"{archive.name} is not a valid zip archive (truncated or corrupt: {exc})",
                hint="delete it and download again",
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(
                    f"no space left in {into} while unpacking {archive.name}"
                ) from None
            raise MlcError(f"cannot unpack {archive.name}: {exc}") from None
        finally:
            progress.finish()
    return hashes


def walk_files(root: Path) -> Iterator[Path]:
    """Files and symlinks under ``root`` (not following symlinks), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            yield base / name
        for name in dirnames:
            if (base / name).is_symlink():
                yield base / name


def commit(stage: Path, dest_dir: Path) -> list[Path]:
    """Rename every file under ``stage`` to the same place under ``dest_dir``.

    Existing files are moved aside first and restored if any rename fails, so the
    previous state survives a failure; other files in ``dest_dir`` are left alone.
    """
    rels = [p.relative_to(stage) for p in walk_files(stage)]
    for rel in rels:  # conflicts first, before touching anything
        target = dest_dir / rel
        if target.is_dir() and not target.is_symlink():
            raise MlcError(f"cannot install {rel}: {target} is a directory")
        for parent in rel.parents:
            p = dest_dir / parent
            if str(parent) != "." and (p.is_symlink() or (p.exists() and not p.is_dir())):
                raise MlcError(f"cannot install {rel}: {p} is in the way")
    backup = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX + "old-", dir=dest_dir))
    moved_old: list[Path] = []
    moved_new: list[Path] = []
    try:
        for rel in rels:
            target = dest_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, backup / rel)
                moved_old.append(rel)
            os.replace(stage / rel, target)
            moved_new.append(rel)
    except OSError as exc:
        for rel in reversed(moved_new):
            with contextlib.suppress(OSError):
                os.replace(dest_dir / rel, stage / rel)
        for rel in reversed(moved_old):
            with contextlib.suppress(OSError):
                os.replace(backup / rel, dest_dir / rel)
        raise MlcError(f"cannot move files into {dest_dir}: {exc}") from None
    finally:
        shutil.rmtree(backup, ignore_errors=True)
    return [dest_dir / rel for rel in rels]


@contextlib.contextmanager
def staging(dest_dir: Path) -> Iterator[Path]:
    """A temporary directory inside ``dest_dir`` (same filesystem), always removed."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=dest_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def unpack(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    kind: str = "zip",
    target: str | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Unpack ``archive`` into ``dest_dir``; returns the files written.

    ``kind`` "zip": every member is checked first (no absolute paths, no '..', no
    symlink pointing outside) and refused before anything is written; members are
    extracted into a staging directory beside the destination and then renamed into
    place. ``kind`` "file": the archive is copied to ``dest_dir / target`` (default:
    its own name). On any failure ``dest_dir`` is as it was.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    progress = progress or NullProgress()
    with staging(dest_dir) as stage:
        stage_archive(archive, stage, kind, target, progress)
        return commit(stage, dest_dir)


def stage_archive(
    archive: Path, stage: Path, kind: str, target: str | None, progress: Progress
) -> dict[str, str]:
    """Put the archive's content under ``stage``; sha256 per relative file path."""
    if kind == "zip":
        return _extract_zip(archive, stage, progress)
    if kind != "file":
        raise MlcError(f"unknown archive type '{kind}' (zip or file)")
    if not archive.is_file():
        raise MlcError(f"archive {archive} does not exist")
    rel = _safe_member_path(target or archive.name, archive)
    check_space(stage, archive.stat().st_size, f"install {archive.name}")
    dst = stage / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    progress.start(f"Copying {archive.name}", archive.stat().st_size)
    try:
        with open(archive, "rb") as src, open(dst, "wb") as out:
            copy_hashed(src, out, digest, progress, what=f"copying {archive.name}")
    except OSError as exc:
        raise MlcError(f"cannot copy {archive}: {exc.strerror or exc}") from None
    finally:
        progress.finish()
    return {rel: digest.hexdigest()}
