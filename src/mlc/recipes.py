"""Model recipes: YAML files under ``mlc/recipes/`` plus the user's ``MLC_RECIPES`` dirs.

A recipe says where a model's weights come from (download URL(s), or generated
locally), what the archive is, how to check it, which files it must leave in the
models directory, and what the container needs to run it. User recipes override
built-ins by name. See docs/models.md for the format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mlc.errors import MlcError, NotFoundError

_Fail = Callable[[str], MlcError]

ENV_RECIPES = "MLC_RECIPES"
SOURCES = ("download", "generate")
ROLES = ("checkpoint", "tiny_vae")  # what the installed `ckpt` file is to the engine
ARCHIVES = ("zip", "file")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("description", "licence", "source", "files", "ckpt")
_KNOWN = {
    "name",
    "description",
    "licence",
    "licence_url",
    "source",
    "urls",
    "archive",
    "size",
    "sha256",
    "unpack_to",
    "files",
    "ckpt",
    "apt",
    "pip",
    "generator",
    "role",
}


@dataclass(frozen=True)
class Recipe:
    """One model recipe. Paths in ``files``, ``ckpt`` and ``unpack_to`` are relative
    to the models directory, with ``/`` separators."""

    name: str
    description: str
    licence: str
    source: str  # "download" (fetch urls) or "generate" (run `generator`)
    files: tuple[str, ...]  # must exist after setup
    ckpt: str  # the main file: the engine's default --ckpt (or --tiny_vae, by role)
    urls: tuple[str, ...] = ()  # tried in order; MLC_MODELS_MIRROR rewrites the host
    archive: str = "zip"  # "zip" or "file" (a single file placed at files[0])
    size: int | None = None  # approximate download size in bytes (space check, display)
    sha256: str | None = None  # of the download; None: recorded at the first download
    unpack_to: str = ""  # where the archive's members go
    licence_url: str | None = None
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    generator: tuple[str, ...] = ()  # command for source=generate; DEST is appended
    role: str = "checkpoint"  # "checkpoint" (--ckpt) or "tiny_vae" (--tiny_vae, TAESD)
    origin: str = field(default="", compare=False)  # the file it was read from

    @property
    def builtin(self) -> bool:
        """True when the recipe ships with mlc."""
        return self.origin.startswith("builtin:")


def builtin_dir() -> Path:
    """The directory holding the shipped recipes."""
    return Path(str(resources.files("mlc").joinpath("recipes")))


def user_dirs() -> list[Path]:
    """The directories named by ``MLC_RECIPES`` (``os.pathsep``-separated)."""
    value = os.environ.get(ENV_RECIPES, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def load_recipes(extra_dir: str | os.PathLike[str] | None = None) -> dict[str, Recipe]:
    """Load the built-in recipes, then ``MLC_RECIPES`` dirs (or ``extra_dir`` when given).

    Later directories override earlier ones by recipe name.
    """
    recipes: dict[str, Recipe] = {}
    for path in _yaml_files(builtin_dir()):
        recipe = load_recipe_file(path, origin=f"builtin:{path.name}")
        recipes[recipe.name] = recipe
    dirs = [Path(extra_dir).expanduser()] if extra_dir is not None else user_dirs()
    for directory in dirs:
        if not directory.is_dir():
            raise MlcError(
                f"recipe directory {directory} does not exist or is not a directory",
                hint=f"check {ENV_RECIPES}",
            )
        for path in _yaml_files(directory):
            recipe = load_recipe_file(path)
            recipes[recipe.name] = recipe
    return recipes


def get_recipe(name: str, extra_dir: str | os.PathLike[str] | None = None) -> Recipe:
    """The recipe called ``name``; NotFoundError listing the valid names otherwise."""
    recipes = load_recipes(extra_dir)
    try:
        return recipes[name]
    except KeyError:
        valid = ", ".join(sorted(recipes)) or "(none)"
        raise NotFoundError(f"unknown recipe '{name}'; valid recipes: {valid}") from None


def load_recipe_file(path: str | os.PathLike[str], origin: str | None = None) -> Recipe:
    """Parse and validate one recipe file; MlcError naming the file on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MlcError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise MlcError(f"recipe {path}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise MlcError(f"recipe {path}: not UTF-8 text") from None
    return parse_recipe(data, default_name=path.stem, origin=origin or str(path))


def parse_recipe(data: Any, *, default_name: str, origin: str) -> Recipe:
    """Validate a recipe mapping (as read from YAML) into a Recipe."""

    def fail(message: str) -> MlcError:
        return MlcError(f"recipe {origin}: {message}")

    if not isinstance(data, dict):
        raise fail("expected a mapping of fields (name, description, source, ...)")
    unknown = sorted(str(k) for k in data if k not in _KNOWN)
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    missing = [k for k in _REQUIRED if data.get(k) in (None, "", [])]
    if missing:
        raise fail(f"missing field(s) {', '.join(missing)}")

    name = _string(data.get("name", default_name), "name", fail)
    if not _NAME_RE.match(name):
        raise fail(f"name '{name}' must be lowercase letters, digits, '.', '_' or '-'")
    source = _string(data["source"], "source", fail)
    if source not in SOURCES:
        raise fail(f"source must be one of {', '.join(SOURCES)}, not '{source}'")
    role = _string(data.get("role", "checkpoint"), "role", fail)
    if role not in ROLES:
        raise fail(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    archive = _string(data.get("archive", "zip"), "archive", fail)
    if archive not in ARCHIVES:
        raise fail(f"archive must be one of {', '.join(ARCHIVES)}, not '{archive}'")

    urls = _strings(data.get("urls", []), "urls", fail)
    generator = _strings(data.get("generator", []), "generator", fail)
    if source == "download":
        if not urls:
            raise fail("source 'download' needs at least one entry in urls")
        for url in urls:
            if not re.match(r"^(https?|file)://", url):
                raise fail(f"url '{url}' must start with http://, https:// or file://")
    elif not generator:
        raise fail("source 'generate' needs a generator command, e.g. [python, -m, mod]")

    files = tuple(_relpath(f, "files", fail) for f in _strings(data["files"], "files", fail))
    ckpt = _relpath(_string(data["ckpt"], "ckpt", fail), "ckpt", fail)
    if ckpt not in files:
        raise fail(f"ckpt '{ckpt}' must be one of the files")
    unpack_to = _string(data.get("unpack_to") or "", "unpack_to", fail)
    if unpack_to:
        unpack_to = _relpath(unpack_to, "unpack_to", fail)
    if archive == "file" and len(files) != 1:
        raise fail("archive 'file' installs exactly one file; list it once in files")
    if unpack_to:
        outside = [f for f in files if not f.startswith(unpack_to + "/")]
        if outside:
            raise fail(f"file '{outside[0]}' is not under unpack_to '{unpack_to}'")

    sha256 = data.get("sha256")
    if sha256 is not None:
        sha256 = _string(sha256, "sha256", fail).lower()
        if not _SHA256_RE.match(sha256):
            raise fail("sha256 must be 64 hex digits (or null when unknown)")
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise fail("size must be a positive number of bytes (or null)")
    licence_url = data.get("licence_url")
    if licence_url is not None:
        licence_url = _string(licence_url, "licence_url", fail)

    return Recipe(
        name=name,
        description=_string(data["description"], "description", fail).strip(),
        licence=_string(data["licence"], "licence", fail).strip(),
        source=source,
        files=files,
        ckpt=ckpt,
        urls=urls,
        archive=archive,
        size=size,
        sha256=sha256,
        unpack_to=unpack_to,
        licence_url=licence_url,
        apt=_strings(data.get("apt") or [], "apt", fail),
        pip=_strings(data.get("pip") or [], "pip", fail),
        role=role,
        generator=generator,
        origin=origin,
    )


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _string(value: Any, key: str, fail: _Fail) -> str:
    if not isinstance(value, str):
        raise fail(f"{key} must be a string, not {type(value).__name__}")
    return value


def _strings(value: Any, key: str, fail: _Fail) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(f"{key} must be a list of strings")
    return tuple(value)


def _relpath(value: str, key: str, fail: _Fail) -> str:
    """A safe relative POSIX path (no absolute paths, no '..'), normalised."""
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or "\\" in value:
        raise fail(f"{key} '{value}' must be a relative path with '/' separators")
    parts = [p for p in PurePosixPath(value).parts if p != "."]
    if not parts or ".." in parts:
        raise fail(f"{key} '{value}' must stay inside the models directory")
    return "/".join(parts)
