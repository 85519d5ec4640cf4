"""Download one URL to a file: streamed, resumed with HTTP Range, retried, verified, atomic.

``DEST.part`` collects the bytes (``DEST.part.json`` keeps the validator that If-Range needs);
only a complete, verified file is renamed to ``DEST``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from mlc.errors import ChecksumError, MlcError
from mlc.fetch.files import CHUNK, check_space, copy_hashed, sha256_file
from mlc.progress import NullProgress, Progress

ENV_MIRROR = "MLC_MODELS_MIRROR"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class DownloadResult:
    """A completed, verified download."""

    path: Path
    sha256: str
    size: int
    resumed: bool = False  # continued a .part file from an earlier attempt or run
    reused: bool = False  # the file was already complete; no request was made


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

    def update(self, chunk: bytes) -> None:
        """Hash and count CHUNK, just appended to the file (a Hasher for copy_hashed)."""
        self.digest.update(chunk)
        self.size += len(chunk)

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
            copy_hashed(fh, None, part.digest, progress)
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
                copy_hashed(
                    _body(resp, url, part),
                    fh,
                    part,
                    progress,
                    fsync=True,
                    what=f"downloading {url}",
                    hint="free some space and run again; the download resumes",
                )
        except OSError as exc:
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
