"""The export file: a tar archive (gzip-compressed when its name ends in ``.gz`` or ``.tgz``).

Members, in order:

``mlc-export.json``
    the header: ``kind`` (``mlc-export``), ``format`` (this file's layout, :data:`FORMAT`),
    and what mlc knows about the container (:mod:`.exporting` writes it).
``image/...``
    the image as ``docker load`` takes it (``manifest.json``, the config, the layers above
    the base image, or every layer).
``workspace/...``, ``data/...``, ``models/...``
    a host folder's contents, only when the export was asked for them.
``mlc-export.sha256``
    last: ``sha256sum``-style lines, one per file and symlink member before it (a
    symlink's sum is that of ``symlink:TARGET``).

A reader checks the header first (not an export, a newer format: refused at once), then the
sum of every member against the last one; a member missing, added, changed or cut short is
refused with one line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mlc.errors import ChecksumError, MlcError, NotFoundError
from mlc.progress import NullProgress, Progress

FORMAT = 1
KIND = "mlc-export"
HEADER = "mlc-export.json"
SUMS = "mlc-export.sha256"
GZIP_SUFFIXES = (".gz", ".tgz")
GZIP_LEVEL = 3  # a diff layer compresses well even at a low level, and much faster
CHUNK = 1 << 20
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def compressed(path: Path) -> bool:
    """Whether an export to PATH is gzip-compressed (its name says so)."""
    return path.name.endswith(GZIP_SUFFIXES)


def link_sum(target: str) -> str:
    return hashlib.sha256(f"symlink:{target}".encode()).hexdigest()


class _Hashing(io.RawIOBase):
    """Reads of SRC, hashed into DIGEST and reported to PROGRESS (what a tar member's data
    passes through, written or read)."""

    def __init__(
        self,
        src: IO[bytes],
        digest: Any,
        progress: Progress,
        failed: Callable[[BaseException], Exception] | None = None,
    ) -> None:
        self.src = src
        self.digest = digest
        self.progress = progress
        self.failed = failed

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.src.read(size)
        except READ_ERRORS as exc:
            if self.failed is None:
                raise
            raise self.failed(exc) from None
        self.digest.update(data)
        self.progress.advance(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Counting(io.RawIOBase):
    """A file written through, its bytes counted and hashed (the whole file's sum)."""

    def __init__(self, dst: IO[bytes]) -> None:
        self.dst = dst
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.dst.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class Writer:
    """An export being written to DEST: a hidden ``.part`` file beside it until
    :meth:`commit` links it into place (never over an existing file); :meth:`abort`
    removes it."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        if dest.exists() or dest.is_symlink():
            raise MlcError(f"{dest} already exists", hint="pick another file name")
        if not dest.parent.is_dir():
            raise MlcError(f"cannot write {dest}: the folder {dest.parent} does not exist")
        self.part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        try:
            self.file = open(self.part, "xb")  # noqa: SIM115 - closed by commit or abort
        except OSError as exc:
            raise MlcError(f"cannot write {dest}: {exc.strerror or exc}") from None
        self.out = _Counting(self.file)
        self.gz = (
            gzip.GzipFile(fileobj=self.out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
            if compressed(dest)
            else None
        )
        self.tar = tarfile.open(  # noqa: SIM115 - closed by commit or abort
            fileobj=self.gz or self.out, mode="w|", format=tarfile.PAX_FORMAT
        )
        self.sums: dict[str, str] = {}

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        self.add(info, io.BytesIO(data))

    def add(
        self, info: tarfile.TarInfo, data: IO[bytes] | None = None, progress: Progress | None = None
    ) -> None:
        """One member; a file's DATA (INFO.size bytes) is hashed on the way."""
        if info.name in self.sums:
            raise MlcError(f"internal: member {info.name} written twice")
        if info.isfile():
            digest = hashlib.sha256()
            self.tar.addfile(
                info, _Hashing(data or io.BytesIO(), digest, progress or NullProgress())
            )
            self.sums[info.name] = digest.hexdigest()
            return
        if info.issym():
            self.sums[info.name] = link_sum(info.linkname)
        self.tar.addfile(info)

    def commit(self) -> tuple[int, str]:
        """Write the sums, close, and link the file into place; (its size, its sha256)."""
        lines = "".join(f"{digest}  {name}\n" for name, digest in self.sums.items())
        self.add_bytes(SUMS, lines.encode())
        self.tar.close()
        if self.gz is not None:
            self.gz.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            os.link(self.part, self.dest)  # fails, rather than replace, when DEST appeared
        except FileExistsError:
            self.abort()
            raise MlcError(f"{self.dest} already exists", hint="pick another file name") from None
        except OSError:  # a filesystem without hard links
            if self.dest.exists():
                self.abort()
                raise MlcError(
                    f"{self.dest} already exists", hint="pick another file name"
                ) from None
            os.replace(self.part, self.dest)
        self.part.unlink(missing_ok=True)
        return self.out.size, self.out.digest.hexdigest()

    def abort(self) -> None:
        """Remove the unfinished file."""
        for close in (self.tar.close, *([self.gz.close] if self.gz else []), self.file.close):
            with contextlib.suppress(Exception):
                close()
        self.part.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------


class Reader:
    """An export file opened for one pass: :attr:`header` at once, then :meth:`members`,
    every member checked against the sums at the end of the pass."""

    def __init__(self, path: Path, progress: Progress | None = None, what: str = "reading") -> None:
        self.path = path
        self.progress = progress or NullProgress()
        try:
            self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
            size = os.fstat(self.file.fileno()).st_size
        except FileNotFoundError:
            raise NotFoundError(f"no such file: {path}") from None
        except OSError as exc:
            raise MlcError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.progress.start(f"{what} {path.name}", size)
        counted = _Hashing(self.file, _Ignore(), self.progress)
        try:
            self.tar = tarfile.open(  # noqa: SIM115 - closed by close()
                fileobj=io.BufferedReader(counted, CHUNK), mode="r|*"
            )
            first = self.tar.next()
        except READ_ERRORS:
            self.close()
            raise self.not_an_export() from None
        if first is None or first.name != HEADER or not first.isfile() or first.size > 16 << 20:
            self.close()
            raise self.not_an_export()
        self.first = first
        self.sums: dict[str, str] = {}
        self.expected: dict[str, str] | None = None
        data = self._read_all(first)
        self.header = self._parse_header(data)

    def not_an_export(self) -> MlcError:
        return MlcError(f"{self.path} is not an mlc export", hint="make one with `mlc export`")

    def damaged(self, why: str) -> MlcError:
        return MlcError(
            f"{self.path} is truncated or damaged ({why})",
            hint="copy it again, or export again",
        )

    def _damaged_by(self, exc: BaseException) -> MlcError:
        return self.damaged(str(exc) or type(exc).__name__)

    def _read_all(self, info: tarfile.TarInfo) -> bytes:
        digest = hashlib.sha256()
        try:
            src = self.tar.extractfile(info)
            data = src.read() if src else b""
        except READ_ERRORS as exc:
            raise self.damaged(str(exc) or type(exc).__name__) from None
        if len(data) != info.size:
            raise self.damaged(f"{info.name} is cut short")
        digest.update(data)
        self.sums[info.name] = digest.hexdigest()
        return data

    def _parse_header(self, data: bytes) -> dict[str, Any]:
        try:
            header = json.loads(data)
        except ValueError:
            self.close()
            raise self.not_an_export() from None
        if not isinstance(header, dict) or header.get("kind") != KIND:
            self.close()
            raise self.not_an_export()
        version = header.get("format")
        if not isinstance(version, int) or version < 1:
            self.close()
            raise self.damaged(f"its format {version!r} is not a version number")
        if version > FORMAT:
            self.close()
            raise MlcError(
                f"{self.path} was written by a newer mlc (export format {version}; this mlc "
                f"reads format {FORMAT})",
                hint="upgrade mlc to import it",
            )
        return header

    def members(self) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        """Every member between the header and the sums, with a readable file for each
        regular file (read it or not: it is hashed to the end either way). At the end, the
        sums are compared: a ChecksumError or a damaged-file error names the first fault."""
        try:
            for info in self.tar:
                if info is self.first:  # tarfile's iteration starts again from the top
                    continue
                if self.expected is not None:
                    raise self.damaged(f"{info.name} follows the sums")
                if info.name == SUMS and info.isfile():
                    self.expected = self._parse_sums(self._read_all(info))
                    continue
                if info.name in self.sums:
                    raise self.damaged(f"{info.name} is in it twice")
                if info.isfile():
                    src = self.tar.extractfile(info)
                    assert src is not None
                    reader = _Hashing(src, hashlib.sha256(), NullProgress(), self._damaged_by)
                    yield info, reader  # type: ignore[misc]
                    self._finish(info, reader)  # before tarfile moves on to the next header
                else:
                    if info.issym():
                        self.sums[info.name] = link_sum(info.linkname)
                    yield info, None
        except READ_ERRORS as exc:
            raise self.damaged(str(exc) or type(exc).__name__) from None
        self._verify()

    def _finish(self, info: tarfile.TarInfo, reader: _Hashing) -> None:
        while reader.read(CHUNK):
            pass
        self.sums[info.name] = reader.digest.hexdigest()

    def _parse_sums(self, data: bytes) -> dict[str, str]:
        sums = {}
        for line in data.decode("utf-8", "replace").splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise self.damaged("its list of sums is unreadable")
            sums[name] = digest
        return sums

    def _verify(self) -> None:
        if self.expected is None:
            raise self.damaged("it ends before its list of sums")
        for name, digest in self.sums.items():
            if name == SUMS:
                continue
            want = self.expected.get(name)
            if want is None:
                raise ChecksumError(
                    f"{self.path} was changed: {name} is not in its list of sums",
                    hint="copy it again from the original, or export again",
                )
            if want != digest:
                raise ChecksumError(
                    f"{self.path} was changed or damaged: the sha256 of {name} is {digest}, "
                    f"its list says {want}",
                    hint="copy it again from the original, or export again",
                )
        missing = sorted(set(self.expected) - set(self.sums))
        if missing:
            raise self.damaged(f"{missing[0]} is missing")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tar.close()
        with contextlib.suppress(Exception):
            self.file.close()
        self.progress.finish()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Ignore:
    def update(self, data: bytes) -> None:
        """Count nothing."""
