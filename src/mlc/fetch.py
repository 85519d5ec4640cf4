"""Download, verify and safely unpack model weights into the models directory.

Data in, data out: nothing here prints. Progress goes through a ``Progress`` object
(``NullProgress`` by default, ``RichProgress`` for the CLI); every failure the user
can hit is one ``MlcError`` line, and a failure leaves the previous state intact.

Layout inside the models directory::

    .mlc-state.json          what was installed: checksums, sizes, sources
    .mlc-lock                held while an install runs
    .mlc-downloads/NAME.zip  the download (NAME.zip.part while incomplete)
    .mlc-stage-*/            unpack staging, renamed into place file by file
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from mlc.errors import ChecksumError, MlcError, NoSpaceError
from mlc.progress import NullProgress, Progress, RichProgress, human_size  # noqa: F401 (re-export)
from mlc.recipes import Recipe

ENV_MIRROR = "MLC_MODELS_MIRROR"
STATE_FILE = ".mlc-state.json"
LOCK_FILE = ".mlc-lock"
DOWNLOADS_DIR = ".mlc-downloads"
STAGE_PREFIX = ".mlc-stage-"
CHUNK = 1 << 20
SPACE_MARGIN = 64 << 20  # keep this much free beyond what we write
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0

Generator = Callable[[Path], None]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DownloadResult:
    """A completed, verified download."""

    path: Path
    sha256: str
    size: int
    resumed: bool = False  # continued a .part file from an earlier attempt or run
    reused: bool = False  # the file was already complete; no request was made


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` did. Paths are absolute."""

    recipe: str
    models_dir: Path
    files: list[Path]
    ckpt: Path
    sha256: str | None  # of the archive (or, for generated weights, of the ckpt)
    sha256_recorded: bool  # the recipe had no sha256; this one was recorded now: show it
    source: str  # "download", "archive", "generate" or "present" (skipped)
    downloaded: bool
    skipped: bool
    url: str | None = None
    archive: Path | None = None  # the archive left on disk (keep_archive), if any
    resumed: bool = False
    state_file: Path | None = None


# --------------------------------------------------------------------------- helpers


def _ca_bundle() -> str | bool:
    """Verify TLS with REQUESTS_CA_BUNDLE, else the host's bundle (which holds a corporate or
    intercepting proxy's CA), not only certifi's list."""
    from mlc import host

    if os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
        return True  # requests reads them itself
    bundle = host.ca_bundle()
    return str(bundle) if bundle else True


def mirror_url(url: str, mirror: str | None = None) -> str:
    """Replace scheme and host of ``url`` with ``mirror`` (default: ``MLC_MODELS_MIRROR``).

    A mirror with a path prefixes it: mirror ``http://m/aime`` turns
    ``http://download.aime.info/public/x.zip`` into ``http://m/aime/public/x.zip``.
    """
    mirror = os.environ.get(ENV_MIRROR, "") if mirror is None else mirror
    mirror = mirror.strip()
    if not mirror:
        return url
    m = urlsplit(mirror)
    if m.scheme not in ("http", "https", "file") or (m.scheme != "file" and not m.netloc):
        raise MlcError(
            f"{ENV_MIRROR}={mirror} is not a URL like http://host[:port][/prefix]",
        )
    u = urlsplit(url)
    rest = u.path + (f"?{u.query}" if u.query else "")
    return mirror.rstrip("/") + rest


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


def _reason(exc: BaseException) -> str:
    """A short reason from a requests/urllib3 exception chain ('Connection refused')."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection broken"
    return type(exc).__name__


def _fsync(fh: IO[bytes]) -> None:
    fh.flush()
    with contextlib.suppress(OSError):
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- download


class _Transient(Exception):
    """A failure worth retrying (connection refused or lost, 5xx, short body)."""


@dataclass
class _PartState:
    """The .part file as it stands, with a running hash of its bytes."""

    path: Path
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    validator: str | None = None  # ETag / Last-Modified of the response that began it

    @property
    def meta(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def reset(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()
        self.validator = None
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def save_validator(self, validator: str | None) -> None:
        self.validator = validator
        if validator:
            self.meta.write_text(json.dumps({"validator": validator}))
        else:
            self.meta.unlink(missing_ok=True)


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    size_hint: int | None = None,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: tuple[float, float] = (15.0, 60.0),
    description: str | None = None,
) -> DownloadResult:
    """Download ``url`` to ``dest``: streamed, resumable, retried, verified, atomic.

    ``dest + '.part'`` collects the bytes and is resumed with an HTTP Range request
    on the next attempt or run (a server that ignores Range restarts cleanly). After
    ``retries`` failed attempts in a row without progress, MlcError. The file is
    checked against ``sha256`` / ``expected_size`` (on mismatch it is deleted) and
    only then renamed to ``dest``. An existing complete ``dest`` that matches
    ``sha256`` (or any, when no checksum is given) is reused without a request.
    ``size_hint`` is used for the free-space check when the server sends no length.
    """
    dest = Path(dest)
    progress = progress or NullProgress()
    description = description or f"Downloading {dest.name}"
    sha256 = sha256.lower() if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.is_file():
        got = sha256_file(dest, progress, f"Checking {dest.name}")
        if sha256 is None or got == sha256:
            return DownloadResult(dest, got, dest.stat().st_size, reused=True)
        dest.unlink()

    part = _PartState(dest.with_name(dest.name + ".part"))
    resumed = False
    if part.path.is_file() and part.path.stat().st_size > 0:
        part.size = part.path.stat().st_size
        with contextlib.suppress(OSError, ValueError, KeyError):
            part.validator = json.loads(part.meta.read_text())["validator"]
        progress.start(f"Checking partial {dest.name}", part.size)
        with open(part.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                part.digest.update(chunk)
                progress.advance(len(chunk))
        progress.finish()
        resumed = True
    else:
        part.reset()

    session = requests.Session()
    session.verify = _ca_bundle()
    failures = 0
    total: int | None = None
    try:
        while True:
            before = part.size
            try:
                total = _attempt(
                    session, url, part, progress, timeout, size_hint or expected_size, description
                )
                break
            except _Transient as exc:
                if part.size > before:
                    failures = 0
                    resumed = True
                failures += 1
                if failures > retries:
                    attempts = f"{failures} attempt{'s' if failures > 1 else ''}"
                    raise MlcError(
                        f"download of {url} failed: {exc} (gave up after {attempts})",
                        hint="check the network or set MLC_MODELS_MIRROR; run again to resume",
                    ) from None
                delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
                progress.note(f"{exc}; retrying in {delay:.1f}s ({failures}/{retries})")
                time.sleep(delay)
    finally:
        session.close()
        progress.finish()

    if total is not None and part.size != total:
        part.reset()
        raise MlcError(f"download of {url} is {part.size} bytes, server said {total}")
    if expected_size is not None and part.size != expected_size:
        part.reset()
        raise MlcError(
            f"download of {url} has the wrong size: expected {expected_size} bytes, "
            f"got {part.size}; the download was removed"
        )
    got = part.digest.hexdigest()
    if sha256 is not None and got != sha256:
        part.reset()
        raise ChecksumError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
            "the download was removed and nothing was installed"
        )
    os.replace(part.path, dest)
    part.meta.unlink(missing_ok=True)
    return DownloadResult(dest, got, dest.stat().st_size, resumed=resumed)


def _attempt(
    session: requests.Session,
    url: str,
    part: _PartState,
    progress: Progress,
    timeout: tuple[float, float],
    size_hint: int | None,
    description: str,
) -> int | None:
    """One GET into the .part file; returns the total size (None if unknown)."""
    headers = {"Accept-Encoding": "identity"}
    if part.size > 0:
        headers["Range"] = f"bytes={part.size}-"
        if part.validator:
            headers["If-Range"] = part.validator
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ) as exc:
        raise MlcError(f"invalid download URL {url}: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise _Transient(f"cannot reach {_host(url)}: {_reason(exc)}") from None

    with resp:
        code = resp.status_code
        if code == 416 and part.size > 0:
            total = _range_total(resp.headers.get("Content-Range"))
            if total == part.size:
                return total  # the .part was already complete
            progress.note("the server refused to resume this download; starting over")
            part.reset()
            raise _Transient("resume refused (HTTP 416)")
        if code == 206 and part.size > 0:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != part.size:
                progress.note("the server resumed at the wrong offset; starting over")
                part.reset()
                raise _Transient("bad resume offset")
            mode = "ab"
        elif code == 200:
            if part.size > 0:
                progress.note("the server did not resume the download; starting over")
                part.reset()
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                total = None  # the length counts encoded bytes; we count decoded ones
            mode = "wb"
        elif code in RETRY_STATUSES:
            raise _Transient(f"HTTP {code} {resp.reason or ''}".strip())
        else:
            raise MlcError(f"download failed: HTTP {code} {resp.reason or ''} for {url}".strip())

        remaining = (total if total is not None else (size_hint or 0)) - part.size
        check_space(part.path.parent, remaining, f"download {url}")
        if mode == "wb":  # If-Range needs a strong validator: no weak ETags
            etag = resp.headers.get("ETag")
            strong = etag if etag and not etag.startswith("W/") else None
            part.save_validator(strong or resp.headers.get("Last-Modified"))
        progress.start(description, total, completed=part.size)
        try:
            with open(part.path, mode) as fh:
                try:
                    for chunk in _body(resp, url, part):
                        fh.write(chunk)
                        part.digest.update(chunk)
                        part.size += len(chunk)
                        progress.advance(len(chunk))
                finally:
                    _fsync(fh)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(
                    f"no space left in {part.path.parent} while downloading {url}",
                    hint="free some space and run again; the download resumes",
                ) from None
            raise MlcError(f"cannot write {part.path}: {exc.strerror or exc}") from None
        if total is not None and part.size < total:
            raise _Transient(
                f"connection to {_host(url)} closed after {part.size} of {total} bytes"
            )
        if total is not None and part.size > total:
            part.reset()
            raise _Transient("the server sent more bytes than announced")
        return total


def _body(resp: requests.Response, url: str, part: _PartState) -> Iterator[bytes]:
    """The response body in chunks as they arrive, so a dropped connection loses
    nothing already received; read errors become _Transient."""
    read1 = getattr(resp.raw, "read1", None)  # urllib3 >= 2
    try:
        if read1 is None:  # pragma: no cover - urllib3 1.x
            yield from resp.iter_content(64 << 10)
            return
        while chunk := read1(CHUNK, decode_content=True):
            yield chunk
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _Transient(
            f"connection to {_host(url)} lost after {part.size} bytes: {_reason(exc)}"
        ) from None


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)


def _range_total(value: str | None) -> int | None:
    m = re.match(r"^\s*bytes\s+(?:\*|\d+-\d+)/(\d+)\s*$", value or "")
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- unpack


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
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.advance(len(chunk))
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
                raise NoSpaceError(f"no space left in {into} while unpacking") from None
            raise MlcError(f"cannot unpack {archive.name}: {exc}") from None
        finally:
            progress.finish()
    return hashes


def _walk_files(root: Path) -> Iterator[Path]:
    """Files and symlinks under ``root`` (not following symlinks), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            yield base / name
        for name in dirnames:
            if (base / name).is_symlink():
                yield base / name


def _commit(stage: Path, dest_dir: Path) -> list[Path]:
    """Rename every file under ``stage`` to the same place under ``dest_dir``.

    Existing files are moved aside first and restored if any rename fails, so the
    previous state survives a failure; other files in ``dest_dir`` are left alone.
    """
    rels = [p.relative_to(stage) for p in _walk_files(stage)]
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
def _staging(dest_dir: Path) -> Iterator[Path]:
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
    with _staging(dest_dir) as stage:
        _stage_archive(archive, stage, kind, target, progress)
        return _commit(stage, dest_dir)


def _stage_archive(
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
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(len(chunk))
    except OSError as exc:
        raise MlcError(f"cannot copy {archive}: {exc.strerror or exc}") from None
    finally:
        progress.finish()
    return {rel: digest.hexdigest()}


# --------------------------------------------------------------------------- state


def state_path(models_dir: str | os.PathLike[str]) -> Path:
    """The state file recording what is installed in ``models_dir``."""
    return Path(models_dir) / STATE_FILE


def read_state(models_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file's content (``{"version": 1, "models": {...}}``); empty if absent."""
    path = state_path(models_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "models": {}}
    except (OSError, ValueError) as exc:
        raise MlcError(
            f"cannot read {path}: {exc}", hint="fix or delete it; it only records checksums"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise MlcError(f"{path} is not an mlc state file", hint="fix or delete it")
    return data


def _write_state(models_dir: Path, state: dict[str, Any]) -> None:
    path = state_path(models_dir)
    fd, tmp = tempfile.mkstemp(prefix=STATE_FILE + ".", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def installed_record(recipe: Recipe, models_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state record of ``recipe`` in ``models_dir``, if any."""
    record = read_state(models_dir)["models"].get(recipe.name)
    return record if isinstance(record, dict) else None


def is_installed(
    recipe: Recipe, models_dir: str | os.PathLike[str], progress: Progress | None = None
) -> bool:
    """True when the recipe's files exist and match the recorded sizes and checksums.

    Files whose size and mtime match the record are trusted; others are re-hashed.
    """
    models_dir = Path(models_dir)
    record = installed_record(recipe, models_dir)
    if record is None:
        return False
    if recipe.sha256 and record.get("sha256") not in (None, recipe.sha256):
        return False  # the recipe now names different weights
    recorded = record.get("files") or {}
    for rel in recipe.files:
        entry = recorded.get(rel)
        path = models_dir / rel
        if not isinstance(entry, dict) or not path.is_file():
            return False
        st = path.stat()
        if st.st_size != entry.get("size"):
            return False
        if st.st_mtime_ns == entry.get("mtime_ns"):
            continue
        if sha256_file(path, progress, f"Verifying {path.name}") != entry.get("sha256"):
            return False
    return True


# --------------------------------------------------------------------------- install


@contextlib.contextmanager
def _lock(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the models directory (POSIX); refuse if busy."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(models_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MlcError(
                f"another mlc setup is running in {models_dir}",
                hint="wait for it to finish",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _archive_name(recipe: Recipe, url: str | None) -> str:
    name = posixpath.basename(unquote(urlsplit(url).path)) if url else ""
    if not name or name in (".", ".."):
        name = recipe.name + (".zip" if recipe.archive == "zip" else "")
    return name


def install(
    recipe: Recipe,
    models_dir: str | os.PathLike[str],
    *,
    url: str | None = None,
    from_archive: str | os.PathLike[str] | None = None,
    keep_archive: bool = False,
    force: bool = False,
    generator: Generator | None = None,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 1.0,
) -> InstallResult:
    """Set up ``recipe``'s weights in ``models_dir``; returns what was done.

    Skipped (nothing fetched) when the files are present and verified, unless
    ``force``, ``url`` or ``from_archive`` is given. Otherwise the weights come from
    ``from_archive`` (a local file, never deleted), ``url``, or the recipe's URLs
    (rewritten by ``MLC_MODELS_MIRROR``, tried in order; ``file://`` URLs are read
    in place). For ``source: generate`` recipes, ``generator(dest_dir)`` must write
    the files into ``dest_dir``. The archive's sha256 is checked against the
    recipe's, or else the one recorded at the first install; when there is neither,
    it is recorded and returned with ``sha256_recorded=True``. Nothing is installed
    unless everything checks out, and a failure leaves the previous state intact.
    """
    models_dir = Path(models_dir).expanduser().absolute()
    progress = progress or NullProgress()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MlcError(f"cannot create models directory {models_dir}: {exc.strerror}") from None

    with _lock(models_dir):
        for stale in models_dir.glob(STAGE_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        record = installed_record(recipe, models_dir) or {}
        explicit = from_archive is not None or url is not None
        if not force and not explicit and is_installed(recipe, models_dir, progress):
            return _result(
                recipe,
                models_dir,
                sha256=record.get("sha256"),
                source="present",
                skipped=True,
                url=record.get("url"),
            )
        if recipe.source == "generate" and not explicit:
            return _install_generated(recipe, models_dir, generator, progress)

        expected = recipe.sha256 or (None if force else record.get("sha256"))
        hint = None
        if expected and not recipe.sha256:
            hint = "the checksum was recorded at the first install; use --force to accept a new one"
        candidates = [url] if url else [mirror_url(u) for u in recipe.urls]
        local = Path(from_archive).expanduser() if from_archive is not None else None
        if local is None and candidates and urlsplit(candidates[0]).scheme == "file":
            local = Path(unquote(urlsplit(candidates[0]).path))

        downloaded = resumed = False
        used_url: str | None = None
        if local is not None:
            if not local.is_file():
                raise MlcError(f"archive {local} does not exist")
            archive, source = local, "archive"
            got = sha256_file(archive, progress, f"Checking {archive.name}")
            if expected and got != expected:
                raise ChecksumError(
                    f"checksum mismatch for {archive}: expected sha256 {expected}, got {got}; "
                    "nothing was installed",
                    hint=hint,
                )
        else:
            if not candidates:
                raise MlcError(f"recipe '{recipe.name}' has no download URL")
            source = "download"
            dl, used_url = _download_any(
                recipe, candidates, models_dir, expected, hint, progress, retries, backoff
            )
            archive, got = dl.path, dl.sha256
            downloaded, resumed = not dl.reused, dl.resumed

        try:
            hashes = _stage_and_commit(recipe, archive, models_dir, progress)
        except NoSpaceError:
            raise  # keep a good download for the next run
        except MlcError:
            if source == "download" and not keep_archive:
                _remove_download(archive)
            raise
        archive_left: Path | None = archive if source == "archive" else None
        if source == "download":
            if keep_archive:
                archive_left = archive
            else:
                _remove_download(archive)

        recorded_now = recipe.sha256 is None and record.get("sha256") != got
        _record(recipe, models_dir, source, used_url or str(archive), got, hashes)
        return _result(
            recipe,
            models_dir,
            sha256=got,
            sha256_recorded=recorded_now,
            source=source,
            downloaded=downloaded,
            url=used_url,
            archive=archive_left,
            resumed=resumed,
        )


def _result(recipe: Recipe, models_dir: Path, **kw: Any) -> InstallResult:
    kw.setdefault("sha256_recorded", False)
    kw.setdefault("downloaded", False)
    kw.setdefault("skipped", False)
    return InstallResult(
        recipe=recipe.name,
        models_dir=models_dir,
        files=[models_dir / rel for rel in recipe.files],
        ckpt=models_dir / recipe.ckpt,
        state_file=state_path(models_dir),
        **kw,
    )


def _download_any(
    recipe: Recipe,
    urls: list[str],
    models_dir: Path,
    expected: str | None,
    hint: str | None,
    progress: Progress,
    retries: int,
    backoff: float,
) -> tuple[DownloadResult, str]:
    """Try each URL in turn; the last error is raised when all fail."""
    last: MlcError | None = None
    for url in urls:
        dest = models_dir / DOWNLOADS_DIR / _archive_name(recipe, url)
        try:
            result = download(
                url,
                dest,
                sha256=expected,
                size_hint=recipe.size,
                progress=progress,
                retries=retries,
                backoff=backoff,
                description=f"Downloading {recipe.name}",
            )
            return result, url
        except ChecksumError as exc:
            _remove_download(dest)
            raise ChecksumError(exc.message, hint=hint or exc.hint) from None
        except MlcError as exc:
            with contextlib.suppress(OSError):
                dest.parent.rmdir()  # only when empty: a .part stays for resuming
            last = exc
            if len(urls) > 1:
                progress.note(f"{exc}; trying the next URL")
    assert last is not None
    raise last


def _remove_download(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        archive.parent.rmdir()  # .mlc-downloads, when empty


def _stage_and_commit(
    recipe: Recipe, archive: Path, models_dir: Path, progress: Progress
) -> dict[str, str]:
    """Unpack into staging, check the expected files, rename into place."""
    with _staging(models_dir) as stage:
        root = stage / recipe.unpack_to if recipe.unpack_to else stage
        root.mkdir(parents=True, exist_ok=True)
        target = None
        if recipe.archive == "file":
            target = posixpath.relpath(recipe.files[0], recipe.unpack_to or ".")
        hashes = _stage_archive(archive, root, recipe.archive, target, progress)
        prefix = recipe.unpack_to + "/" if recipe.unpack_to else ""
        _check_expected(recipe, stage, archive.name)
        _commit(stage, models_dir)
        return {prefix + rel: h for rel, h in hashes.items()}


def _check_expected(recipe: Recipe, stage: Path, what: str) -> None:
    missing = [rel for rel in recipe.files if not (stage / rel).is_file()]
    if missing:
        found = sorted(str(p.relative_to(stage)) for p in _walk_files(stage))
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "") or "nothing"
        raise MlcError(
            f"{what} does not contain {missing[0]} expected by recipe '{recipe.name}' "
            f"(found: {shown}); nothing was installed"
        )


def _install_generated(
    recipe: Recipe, models_dir: Path, generator: Generator | None, progress: Progress
) -> InstallResult:
    if generator is None:
        raise MlcError(
            f"recipe '{recipe.name}' is generated locally "
            f"({' '.join(recipe.generator)} DEST), not downloaded; no generator was given"
        )
    with _staging(models_dir) as stage:
        root = stage / recipe.unpack_to if recipe.unpack_to else stage
        root.mkdir(parents=True, exist_ok=True)
        progress.note(f"Generating {recipe.name} weights")
        generator(root)
        _check_expected(recipe, stage, f"the generator ({' '.join(recipe.generator)})")
        hashes = {
            rel: sha256_file(stage / rel, progress, f"Checking {posixpath.basename(rel)}")
            for rel in recipe.files
        }
        _commit(stage, models_dir)
    got = hashes[recipe.ckpt]
    _record(recipe, models_dir, "generate", " ".join(recipe.generator), got, hashes)
    return _result(recipe, models_dir, sha256=got, source="generate")


def _record(
    recipe: Recipe,
    models_dir: Path,
    source: str,
    origin: str,
    sha256: str,
    hashes: dict[str, str],
) -> None:
    """Write the recipe's entry in the state file (files: size, mtime_ns, sha256)."""
    state = read_state(models_dir)
    files: dict[str, Any] = {}
    for rel, digest in sorted(hashes.items()):
        path = models_dir / rel
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    state["version"] = 1
    state["models"][recipe.name] = {
        "source": source,
        "url": origin,
        "sha256": sha256,
        "ckpt": recipe.ckpt,
        "files": files,
        "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_state(models_dir, state)
