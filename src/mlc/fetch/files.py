"""Bytes on disk for mlc.fetch: the one hash-while-copying loop, file checksums, free space.

Every byte that fetch writes or verifies passes through :func:`copy_hashed`: a download's body,
a resumed ``.part`` file, each zip member, the single-file copy and :func:`sha256_file`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

from mlc.errors import NoSpaceError
from mlc.progress import NullProgress, Progress, human_size

CHUNK = 1 << 20
SPACE_MARGIN = 64 << 20  # keep this much free beyond what we write


class Hasher(Protocol):
    """What :func:`copy_hashed` feeds: a ``hashlib`` object, or anything that keeps count."""

    def update(self, data: bytes, /) -> None:
        """Take the next chunk."""


def copy_hashed(
    src: IO[bytes] | Iterable[bytes],
    dst: IO[bytes] | None,
    digest: Hasher,
    progress: Progress,
    *,
    fsync: bool = False,
    what: str = "writing",
    hint: str | None = None,
) -> int:
    """Copy SRC (a binary file, read CHUNK bytes at a time, or an iterable of chunks) to DST
    (None: only hash), feeding each chunk to ``digest.update`` and ``progress.advance``; returns
    the bytes copied. DST is flushed at the end (and fsynced with FSYNC), after a failure too,
    so what was written stays. A full disk while writing is a NoSpaceError "no space left in
    DIR while WHAT" (with HINT); other errors propagate as they are."""
    chunks = iter(lambda: src.read(CHUNK), b"") if hasattr(src, "read") else src
    copied = 0
    try:
        try:
            for chunk in chunks:
                if dst is not None:
                    dst.write(chunk)
                digest.update(chunk)
                progress.advance(len(chunk))
                copied += len(chunk)
        finally:
            if dst is not None:
                dst.flush()
                if fsync:
                    with contextlib.suppress(OSError):
                        os.fsync(dst.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC and dst is not None:
            name = getattr(dst, "name", None)
            where = Path(name).parent if isinstance(name, str) else "the destination"
            raise NoSpaceError(f"no space left in {where} while {what}", hint=hint) from None
        raise
    return copied


def sha256_file(path: Path, progress: Progress | None = None, description: str = "") -> str:
    """The hex sha256 of a file, reporting progress."""
    progress = progress or NullProgress()
    digest = hashlib.sha256()
    progress.start(description or f"Checking {path.name}", path.stat().st_size)
    with open(path, "rb") as fh:
        copy_hashed(fh, None, digest, progress)
    progress.finish()
    return digest.hexdigest()


def check_space(directory: Path, needed: int, what: str) -> None:
    """MlcError when ``directory``'s filesystem has less than ``needed`` bytes free."""
    if needed <= 0:
        return
    free = shutil.disk_usage(directory).free
    if free < needed + SPACE_MARGIN:
        raise NoSpaceError(
            f"not enough space in {directory} to {what}: need {human_size(needed)}, "
            f"{human_size(free)} free",
            hint="free some space or point the models directory elsewhere",
        )
