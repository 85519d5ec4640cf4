"""Numbering that never overwrites, grids, and PNG metadata.

Layout (as the classic script): ``<outdir>/samples/NNNNN.png`` and ``<outdir>/grid-NNNN.png``.
Numbers continue after the highest existing one (only names of that form count: a stray
``2024-vacation.jpg`` does not shift them; the range a sharded run reserved with a hidden
``.reserved-FIRST-LAST`` file does, see ``mlc.engine.scale.plan``), and each name is claimed
atomically (``O_CREAT | O_EXCL``) before the image is written beside it and renamed over the claim,
so concurrent runs sharing an outdir never overwrite each other's files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlc.errors import NoSpaceError

FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota
GRID_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: a larger grid warns on every open
PARAMETERS_KEY = "parameters"  # A1111's text chunk
JSON_KEY = "mlc"  # our JSON chunk
SAMPLE_PATTERN = re.compile(r"^(\d{5,})\.png$")  # only the engine's own names count
GRID_PATTERN = re.compile(r"^grid-(\d{4,})\.png$")
RESERVED_PATTERN = re.compile(r"^\.reserved-(\d+)-(\d+)$")  # a sharded run's numbers (scale.plan)


@dataclass
class Numbering:
    """Claims ``fmt.format(n)`` names in ``directory``, n rising from the highest existing + 1."""

    directory: Path
    fmt: str  # e.g. "{:05}.png"
    pattern: re.Pattern[str]
    _next: int | None = field(default=None, repr=False)

    def highest(self) -> int:
        """The highest number in use in the directory, -1 if none."""
        best = -1
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                match = self.pattern.match(name)
                if match:
                    best = max(best, int(match.group(1)))
                elif reserved := RESERVED_PATTERN.match(name):
                    best = max(best, int(reserved.group(2)))
        return best

    def claim(self) -> Path:
        """Create and return a new empty file with the next free number."""
        self.directory.mkdir(parents=True, exist_ok=True)
        n = self.highest() + 1 if self._next is None else self._next
        while True:
            path = self.directory / self.fmt.format(n)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                n = max(n + 1, self.highest() + 1)
                continue
            os.close(fd)
            self._next = n + 1
            return path


def sample_numbering(outdir: str | Path) -> Numbering:
    """``<outdir>/samples/NNNNN.png`` (5 digits)."""
    return Numbering(Path(outdir) / "samples", "{:05}.png", SAMPLE_PATTERN)


def grid_numbering(outdir: str | Path) -> Numbering:
    """``<outdir>/grid-NNNN.png`` (4 digits)."""
    return Numbering(Path(outdir), "grid-{:04}.png", GRID_PATTERN)


def write_claimed(numbering: Numbering, write: Callable[[Path], None]) -> Path:
    """Claim the next name, WRITE a temporary file beside it and rename it into place.

    A failure removes both, so no half-written file and no empty claim is left behind. A full
    disk (or quota) is a NoSpaceError naming the file.
    """
    try:
        path = numbering.claim()
    except OSError as err:
        if err.errno in FULL:
            raise NoSpaceError(f"no space left on device in {numbering.directory}") from err
        raise
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(err, OSError) and err.errno in FULL:
            raise NoSpaceError(f"no space left on device writing {path}") from err
        raise
    return path


def save_png(image: Any, numbering: Numbering, parameters: str, data: dict[str, Any]) -> Path:
    """Save ``image`` under the next claimed name, with both metadata chunks; return the path."""
    info = png_info(parameters, data)
    return write_claimed(numbering, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def png_info(parameters: str, data: dict[str, Any]) -> Any:
    """A PngInfo with the A1111 ``parameters`` text and the ``mlc`` JSON chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)  # tEXt, or iTXt when not Latin-1
    info.add_text(JSON_KEY, json.dumps(data, ensure_ascii=False, sort_keys=True))
    return info


def read_metadata(path: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """(A1111 parameters text, JSON dict) from a PNG written by the engine."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    raw = text.get(JSON_KEY)
    return text.get(PARAMETERS_KEY), (json.loads(raw) if raw else None)


def _quote(value: str) -> str:
    """A1111 quotes infotext values that contain separators."""
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def a1111_parameters(prompt: str, negative_prompt: str, fields: Sequence[tuple[str, Any]]) -> str:
    """A1111's infotext: prompt, ``Negative prompt: ...``, then ``Key: value, ...``."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(
        ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields if v is not None and v != "")
    )
    return "\n".join(lines)


def grid_size(
    count: int, size: tuple[int, int], n_per_row: int, padding: int = 2
) -> tuple[int, int]:
    """(width, height) of the grid of COUNT images of SIZE, as ``make_grid`` lays it out."""
    width, height = size
    cols = min(max(n_per_row, 1), max(count, 1))
    rows = math.ceil(count / cols)
    return cols * (width + padding) + padding, rows * (height + padding) + padding


def make_grid(images: Sequence[Any], n_per_row: int, padding: int = 2) -> Any:
    """torchvision ``make_grid`` geometry: ``n_per_row`` images per row, black ``padding``.
    IMAGES are PIL images or PNG paths (opened one at a time: only the grid is in memory)."""
    from PIL import Image

    if not images:
        raise ValueError("no images for a grid")

    def opened(item: Any) -> Any:
        return Image.open(item) if isinstance(item, (str, Path)) else contextlib.nullcontext(item)

    with opened(images[0]) as first:
        width, height = first.size
    cols = min(max(n_per_row, 1), len(images))
    grid = Image.new("RGB", grid_size(len(images), (width, height), n_per_row, padding), 0)
    for i, item in enumerate(images):
        row, col = divmod(i, cols)
        with opened(item) as im:
            grid.paste(
                im.convert("RGB"),
                (col * (width + padding) + padding, row * (height + padding) + padding),
            )
    return grid
