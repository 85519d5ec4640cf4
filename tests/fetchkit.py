"""What the fetch tests share: a fake model zip, a real local server for it, recipes, a
Progress recorder and views of a models directory.

A test module takes the fixtures by assigning them (``server = fetchkit.server``), so they stay
local to the fetch tests instead of becoming suite-wide plugins.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from httpserver import FileServer
from mlc import fetch
from mlc.recipes import Recipe

CKPT = "fake-model/model.ckpt"
ZIP_PATH = "/public/models/fake-model.zip"


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip of MEMBERS (name -> bytes) and SYMLINKS (name -> target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights() -> bytes:
    return os.urandom(300_000)  # incompressible, so the zip is ~300 kB too


@pytest.fixture(scope="module")
def archive(weights: bytes) -> bytes:
    return make_zip({CKPT: weights, "fake-model/LICENSE.txt": b"licence text\n"})


@pytest.fixture
def server(archive: bytes) -> Iterator[FileServer]:
    with FileServer({ZIP_PATH: archive}) as srv:
        yield srv


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.ENV_MIRROR, raising=False)


def recipe(url: str, **kw) -> Recipe:
    """A recipe for the fake model at URL; KW overrides fields."""
    fields = dict(
        name="fake",
        description="a fake model",
        licence="none",
        source="download",
        urls=(url,),
        archive="zip",
        files=(CKPT,),
        ckpt=CKPT,
    )
    fields.update(kw)
    return Recipe(**fields)


def install(r: Recipe, models: Path, **kw) -> fetch.InstallResult:
    """fetch.install with short retries."""
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 2)
    return fetch.install(r, models, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (state file included) with its bytes."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() if not p.is_symlink() else b"->"
        for p in sorted(root.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.name != fetch.LOCK_FILE
    }


def leftovers(root: Path) -> list[str]:
    """Staging dirs, .part files and downloads that should not survive an install."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(fetch.STAGE_PREFIX)
        or p.name.endswith(".part")
        or p.name == fetch.DOWNLOADS_DIR
    )


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None, int]] = []
        self.advanced = 0
        self.notes: list[str] = []
        self.finished = 0

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self.tasks.append((description, total, completed))

    def advance(self, n: int) -> None:
        self.advanced += n

    def update(self, completed: int, total: int | None = None) -> None:
        self.advanced = completed

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> None:
        self.finished += 1
