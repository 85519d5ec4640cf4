"""Install a recipe's weights into a models directory: skip what is present, else download
(or take a local archive, or run a generator), verify, unpack and record, under a lock.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mlc.errors import ChecksumError, MlcError, NoSpaceError
from mlc.fetch.downloader import DownloadResult, download, mirror_url
from mlc.fetch.files import sha256_file
from mlc.fetch.state import installed_record, is_installed, record_install, state_path
from mlc.fetch.unpacker import STAGE_PREFIX, commit, stage_archive, staging, walk_files
from mlc.progress import NullProgress, Progress
from mlc.recipes import Recipe

LOCK_FILE = ".mlc-lock"
DOWNLOADS_DIR = ".mlc-downloads"

Generator = Callable[[Path], None]


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


def _same_url(url: str, record: dict[str, Any]) -> bool:
    """Whether the install RECORD came from URL (a ``file://`` URL is recorded as its path)."""
    parts = urlsplit(url)
    return record.get("url") in (url, unquote(parts.path) if parts.scheme == "file" else url)


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

    Skipped (nothing fetched) when the files are present and verified, unless ``force``,
    ``from_archive`` or a ``url`` other than the one they came from is given. Otherwise the
    weights come from ``from_archive`` (a local file, never deleted), ``url``, or the
    recipe's URLs (rewritten by ``MLC_MODELS_MIRROR``, tried in order; ``file://`` URLs are
    read in place). For ``source: generate`` recipes, ``generator(dest_dir)`` must write the
    files into ``dest_dir``. The archive's sha256 is checked against the recipe's, or else
    the one recorded at the first install; when there is neither, it is recorded and
    returned with ``sha256_recorded=True``. Nothing is installed unless everything checks
    out, and a failure leaves the previous state intact.
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
        explicit = from_archive is not None or (url is not None and not _same_url(url, record))
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
        record_install(recipe, models_dir, source, used_url or str(archive), got, hashes)
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
    with staging(models_dir) as stage:
        root = stage / recipe.unpack_to if recipe.unpack_to else stage
        root.mkdir(parents=True, exist_ok=True)
        target = None
        if recipe.archive == "file":
            target = posixpath.relpath(recipe.files[0], recipe.unpack_to or ".")
        hashes = stage_archive(archive, root, recipe.archive, target, progress)
        prefix = recipe.unpack_to + "/" if recipe.unpack_to else ""
        _check_expected(recipe, stage, archive.name)
        commit(stage, models_dir)
        return {prefix + rel: h for rel, h in hashes.items()}


def _check_expected(recipe: Recipe, stage: Path, what: str) -> None:
    missing = [rel for rel in recipe.files if not (stage / rel).is_file()]
    if missing:
        found = sorted(str(p.relative_to(stage)) for p in walk_files(stage))
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
    with staging(models_dir) as stage:
        root = stage / recipe.unpack_to if recipe.unpack_to else stage
        root.mkdir(parents=True, exist_ok=True)
        progress.note(f"Generating {recipe.name} weights")
        generator(root)
        _check_expected(recipe, stage, f"the generator ({' '.join(recipe.generator)})")
        hashes = {
            rel: sha256_file(stage / rel, progress, f"Checking {posixpath.basename(rel)}")
            for rel in recipe.files
        }
        commit(stage, models_dir)
    got = hashes[recipe.ckpt]
    record_install(recipe, models_dir, "generate", " ".join(recipe.generator), got, hashes)
    return _result(recipe, models_dir, sha256=got, source="generate")
