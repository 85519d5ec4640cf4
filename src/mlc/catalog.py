"""Image catalog: load YAML and AIME CSV, merge overrides, resolve (framework, version, arch)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mlc.errors import MlcError

OPTIONAL_FIELDS = ("digest", "cuda", "cudnn", "python", "torch", "ubuntu", "min_driver")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Entry:
    """One image the user can create a container from."""

    framework: str
    version: str
    arch: tuple[str, ...]
    image: str
    digest: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    python: str | None = None
    torch: str | None = None
    ubuntu: str | None = None
    min_driver: str | None = None
    build: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    origin: str = field(default="built-in", compare=False)

    @property
    def reference(self) -> str:
        """The image reference to run: pinned by digest when the catalog has one."""
        if self.digest:
            return f"{self.image.split('@')[0]}@{self.digest}"
        return self.image

    @property
    def pin(self) -> str | None:
        """The digest the image is pinned to (``sha256:...``: a registry's manifest digest, or
        for an image that was never pushed, its image ID), or None when it is not pinned."""
        if self.digest:
            return self.digest
        _, at, digest = self.image.partition("@")
        return digest if at else None

    def as_dict(self) -> dict[str, Any]:
        data = {
            "framework": self.framework,
            "version": self.version,
            "arch": list(self.arch),
            "image": self.image,
        }
        data.update({k: getattr(self, k) for k in OPTIONAL_FIELDS if getattr(self, k)})
        return data


@dataclass
class Catalog:
    """Entries in priority order: the first match wins."""

    entries: list[Entry]
    source: str | None = None

    def for_arch(self, arch: str) -> list[Entry]:
        """Entries usable on ARCH, one per (framework, version), highest priority kept."""
        seen: set[tuple[str, str]] = set()
        out = []
        for e in self.entries:
            key = (e.framework.lower(), e.version)
            if arch in e.arch and key not in seen:
                seen.add(key)
                out.append(e)
        return out

    def resolve(self, framework: str, version: str, arch: str) -> Entry:
        """The entry for FRAMEWORK (any case) and VERSION on ARCH, or an error listing choices."""
        usable = self.for_arch(arch)
        if not usable:
            archs = sorted({a for e in self.entries for a in e.arch})
            raise MlcError(
                f"the catalog has no images for architecture {arch}",
                hint=f"known architectures: {', '.join(archs)}; use --arch",
            )
        frameworks = sorted({e.framework for e in usable})
        matching = [e for e in usable if e.framework.lower() == framework.lower()]
        if not matching:
            raise MlcError(
                f"unknown framework '{framework}' for {arch}",
                hint=f"valid: {', '.join(frameworks)}",
            )
        for e in matching:
            if e.version == version:
                return e
        versions = ", ".join(e.version for e in matching)
        raise MlcError(
            f"unknown version '{version}' of {matching[0].framework} for {arch}",
            hint=f"valid: {versions}",
        )


def _check_text(origin: str, key: str, value: str) -> str:
    """VALUE, unless it holds a control character (which Docker would refuse later)."""
    bad = next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise MlcError(
            f"catalog {origin}: the {key} {value!r} has a control character (U+{ord(bad):04X})"
        )
    return value


def _entry(raw: Any, origin: str) -> Entry:
    if not isinstance(raw, dict):
        raise MlcError(f"catalog {origin}: an entry is not a mapping: {str(raw)[:60]!r}")
    missing = [k for k in ("framework", "version", "arch", "image") if not raw.get(k)]
    if missing:
        raise MlcError(f"catalog {origin}: an entry lacks {', '.join(missing)}: {raw}")
    arch = raw["arch"]
    archs = list(arch) if isinstance(arch, (list, tuple)) else [arch]
    extra = {k: str(raw[k]) for k in OPTIONAL_FIELDS if raw.get(k) is not None}
    for key, value in {**raw, "arch": ",".join(map(str, archs)), **extra}.items():
        if isinstance(value, (str, int, float)):
            _check_text(origin, str(key), str(value))
    pinned = [extra.get("digest"), str(raw["image"]).partition("@")[2] or None]
    for digest in filter(None, pinned):
        if not DIGEST_RE.match(digest):
            raise MlcError(
                f"catalog {origin}: the digest {digest!r} of {raw['framework']} "
                f"{raw['version']} is not sha256: and 64 lowercase hex digits"
            )
    if all(pinned) and pinned[0] != pinned[1]:
        raise MlcError(
            f"catalog {origin}: {raw['framework']} {raw['version']} has two different digests "
            "(in image and in digest)"
        )
    return Entry(
        framework=str(raw["framework"]),
        version=str(raw["version"]),
        arch=tuple(str(a).strip().upper() for a in archs),
        image=str(raw["image"]),
        build=raw.get("build"),
        origin=origin,
        **extra,
    )


def _yaml_problem(exc: Exception) -> str:
    """A YAML error as one line: what, and where (line, or the position of a bad character)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)
    if hasattr(exc, "character") and hasattr(exc, "position"):  # yaml's ReaderError
        char = exc.character
        code = ord(char) if isinstance(char, str) else char
        return f"character {code:#04x} at offset {exc.position} is not allowed"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def parse_yaml(text: str, origin: str) -> Catalog:
    """A catalog from YAML text: a mapping with `images:` or a bare list of entries."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MlcError(f"catalog {origin} is not valid YAML: {_yaml_problem(exc)}") from None
    if isinstance(data, list):
        data = {"images": data}
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MlcError(f"catalog {origin} has no 'images:' list")
    return Catalog([_entry(r, origin) for r in data["images"]], source=data.get("source"))


def parse_aime_csv(text: str, origin: str) -> Catalog:
    """AIME's ml_images.repo: `FRAMEWORK, VERSION, ARCH, IMAGE`; ARCH bare (v1) or [A;B] (v2)."""
    entries = []
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise MlcError(f"catalog {origin} is not a valid AIME CSV: {exc}") from None
    for row in rows:
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if len(cells) < 4:
            raise MlcError(f"catalog {origin}: expected 'framework, version, arch, image': {row}")
        framework, version, arch, image = cells[:4]
        archs = [a.strip() for a in arch.strip("[]").split(";") if a.strip()]
        entries.append(
            _entry(
                {"framework": framework, "version": version, "arch": archs, "image": image}, origin
            )
        )
    return Catalog(entries)


def decode(data: bytes, origin: str) -> str:
    """A catalog's bytes as text: UTF-8, or one line saying where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MlcError(
            f"catalog {origin} is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start})",
            hint="save it as UTF-8",
        ) from None


def load_file(path: Path) -> Catalog:
    """A catalog file, YAML or AIME CSV, recognised by content."""
    try:
        text = decode(path.read_bytes(), str(path))
    except OSError as exc:
        raise MlcError(f"cannot read catalog {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml") or text.lstrip().startswith(("images:", "schema:", "-")):
        return parse_yaml(text, str(path))
    return parse_aime_csv(text, str(path))


def builtin_text() -> str:
    """The catalog shipped with the package."""
    return resources.files("mlc").joinpath("images/catalog.yaml").read_text(encoding="utf-8")


def state_dir() -> Path:
    """Where mlc keeps per-user state (the updated catalog)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mlc"


def updated_path() -> Path:
    return state_dir() / "catalog.yaml"


def load(override: str | os.PathLike | None = None) -> Catalog:
    """Built-in catalog, then the one `update-sys` fetched, then MLC_CATALOG / --catalog on top."""
    builtin = parse_yaml(builtin_text(), "built-in")
    layers = [builtin]
    if updated_path().is_file():
        layers.insert(0, load_file(updated_path()))
    user = override or os.environ.get("MLC_CATALOG")
    if user:
        for part in str(user).split(os.pathsep):
            if part:
                layers.insert(0, load_file(Path(part).expanduser()))
    entries = [e for layer in layers for e in layer.entries]
    return Catalog(entries, source=os.environ.get("MLC_CATALOG_URL") or builtin.source)


@dataclass(frozen=True)
class Updated:
    """What `update` did: the stored catalog, its number of images, and whether it changed."""

    path: Path
    count: int
    changed: bool


def meta_path() -> Path:
    """Where `update` remembers the source's validators (ETag, Last-Modified) and checksum."""
    return state_dir() / "catalog.meta.json"


def _read_meta() -> dict[str, Any]:
    try:
        data = json.loads(meta_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update(url: str | None = None, timeout: float = 20.0, force: bool = False) -> Updated:
    """Fetch the catalog from its source, validate it, and replace the stored copy atomically.

    An unchanged source is not downloaded again (a conditional GET with the ETag and
    Last-Modified of the last update) nor rewritten; FORCE downloads it whole (``no-cache``)
    and rewrites it."""
    import requests

    source = url or os.environ.get("MLC_CATALOG_URL") or parse_yaml(builtin_text(), "").source
    if not source:
        raise MlcError("no catalog source is configured", hint="set MLC_CATALOG_URL")
    dest = updated_path()
    meta = _read_meta() if dest.is_file() else {}
    known = not force and meta.get("source") == source
    headers = {"Cache-Control": "no-cache"} if force else {}
    if known and meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if known and meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    try:
        resp = requests.get(source, timeout=timeout, headers=headers)
        resp.raise_for_status()
    except requests.HTTPError as exc:
        raise MlcError(
            f"cannot update the catalog: HTTP {exc.response.status_code} from {source}",
            hint="the current catalog is unchanged",
        ) from None
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise MlcError(
            f"cannot update the catalog: {source} is unreachable ({reason})",
            hint="the current catalog is unchanged",
        ) from None
    if known and resp.status_code == 304:
        return Updated(dest, len(load_file(dest).entries), changed=False)
    digest = hashlib.sha256(resp.content).hexdigest()
    text = decode(resp.content, source)
    fresh = (parse_aime_csv if source.endswith(".repo") or source.endswith(".csv") else parse_yaml)(
        text, source
    )
    if not fresh.entries:
        raise MlcError(f"the catalog at {source} is empty; the current catalog is unchanged")
    meta = {
        "source": source,
        "etag": resp.headers.get("ETag"),
        "last_modified": resp.headers.get("Last-Modified"),
        "sha256": digest,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    changed = force or not known or _read_meta().get("sha256") != digest
    if changed:
        data = {
            "schema": 1,
            "source": source,
            "images": [
                e.as_dict() | ({"build": e.build} if e.build else {}) for e in fresh.entries
            ],
        }
        _write_atomic(dest, yaml.safe_dump(data, sort_keys=False))
    _write_atomic(meta_path(), json.dumps(meta, indent=2) + "\n")
    return Updated(dest, len(fresh.entries), changed=changed)


def _write_atomic(dest: Path, text: str) -> None:
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)
