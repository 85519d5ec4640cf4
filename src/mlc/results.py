"""What one `mlc txt2img` run wrote in its container: the files newer than a mark touched just
before the run, under the engine's output folder. ``--fetch-outputs DIR`` copies them to this
machine through Docker's archive API (so it works on a remote engine, whose workspace is not
here); on a remote engine without it, the caller is told where they are on its host."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from mlc.containers import Container
from mlc.errors import MlcError, UsageError

FETCH_FLAG = "--fetch-outputs"
DEFAULT_OUTDIR = "outputs/txt2img-samples"  # the engine's default --outdir (engine/options.py)
WORKDIR = PurePosixPath("/workspace")  # the engine's working folder in the container


def take_fetch_flag(flags: Sequence[str]) -> tuple[list[str], Path | None]:
    """FLAGS without ``--fetch-outputs DIR`` (a host flag), and DIR (None when not given)."""
    rest: list[str] = []
    dest: Path | None = None
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag == FETCH_FLAG:
            if i + 1 == len(flags) or flags[i + 1].startswith("-"):
                raise UsageError(f"{FETCH_FLAG} needs a folder on this machine: {FETCH_FLAG} DIR")
            dest, i = Path(flags[i + 1]).expanduser().absolute(), i + 2
        elif flag.startswith(FETCH_FLAG + "="):
            dest, i = Path(flag.partition("=")[2]).expanduser().absolute(), i + 1
        else:
            rest.append(flag)
            i += 1
    return rest, dest


def outdir(flags: Sequence[str]) -> PurePosixPath:
    """The engine's output folder inside the container for its (translated) FLAGS."""
    value = DEFAULT_OUTDIR
    for i, flag in enumerate(flags):
        if flag == "--outdir" and i + 1 < len(flags) and not flags[i + 1].startswith("-"):
            value = flags[i + 1]
        elif flag.startswith("--outdir="):
            value = flag.partition("=")[2] or DEFAULT_OUTDIR
    return WORKDIR / value  # an absolute value replaces the working folder


def mark(c: Container, tag: str) -> str:
    """Touch the mark the run's files are newer than; its path in the container."""
    path = f"/tmp/mlc-run-{tag}"
    c.exec_run(["touch", path], user="root")
    return path


def new_files(c: Container, folder: PurePosixPath, mark_path: str) -> list[PurePosixPath]:
    """The files under FOLDER newer than the mark (then removed); [] when FOLDER is missing."""
    code, out = c.exec_run(["find", str(folder), "-type", "f", "-newer", mark_path], user="root")
    c.exec_run(["rm", "-f", mark_path], user="root")
    if code != 0:
        return []
    return sorted(PurePosixPath(line) for line in out.decode().splitlines() if line.strip())


def _free_name(target: Path) -> Path:
    """TARGET, or ``stem-N.suffix`` beside it when TARGET exists: nothing is overwritten."""
    n = 1
    candidate = target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        n += 1
    return candidate


def copy_out(
    c: Container, files: Sequence[PurePosixPath], folder: PurePosixPath, dest: Path
) -> list[Path]:
    """Copy FILES (under FOLDER in C) into DEST, keeping their paths below FOLDER."""
    copied: list[Path] = []
    for path in files:
        rel = PurePosixPath(path).relative_to(folder)
        if ".." in rel.parts:
            continue
        stream, _ = c.get_archive(str(path))
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            fh = tar.extractfile(member) if member is not None and member.isfile() else None
            data = fh.read() if fh else None
        if data is None:
            continue
        target = _free_name(dest.joinpath(*rel.parts))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            partial.write_bytes(data)
            partial.replace(target)
        except OSError as exc:
            raise MlcError(f"cannot write {target}: {exc.strerror or exc}") from None
        copied.append(target)
    return copied


def host_path(c: Container, inside: PurePosixPath) -> str:
    """INSIDE as its folder on the engine's host, through C's mounts (else as is)."""
    for outside, point in c.mounts:
        if inside == point or point in inside.parents:
            return str(outside / inside.relative_to(point).as_posix())
    return str(inside)


def report(
    c: Container,
    flags: Sequence[str],
    mark_path: str,
    dest: Path | None,
    remote_host: str | None,
    note: Callable[[str], None],
) -> list[Path]:
    """After the run: copy its files to DEST, or on a remote engine say where they are."""
    folder = outdir(flags)
    files = new_files(c, folder, mark_path)
    if dest is not None:
        copied = copy_out(c, files, folder, dest)
        note(f"copied {len(copied)} file(s) from {host_path(c, folder)} to {dest}")
        return copied
    if remote_host and files:
        note(
            f"outputs are on host {remote_host} in {host_path(c, folder)} "
            f"({len(files)} new file(s)); {FETCH_FLAG} DIR copies them here"
        )
    return []
