"""Bytes on disk for mlc.fetch: the hash-while-copying loop, file checksums, free space."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mlc.errors import NoSpaceError
from mlc.progress import NullProgress, Progress, human_size

CHUNK = 1 << 20
SPACE_MARGIN = 64 << 20  # keep this much free beyond what we write


def sha256_file(path: Path, progress: Progress | None = None, description: str = "") -> str:
    """The hex sha256 of a file, reporting progress."""
    progress = progress or NullProgress()
    digest = hashlib.sha256()
    progress.start(description or f"Checking {path.name}", path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            progress.advance(len(chunk))
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
