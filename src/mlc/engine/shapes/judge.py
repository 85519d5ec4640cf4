"""A programmatic judge: does an image show the scene its prompt asks for?

From pixel statistics alone (numpy and PIL, no model): the background colour is the median
of the border pixels, named by the nearest colour of ``scenes.COLOURS``; the object is the
largest connected region that differs from the background; its colour is the named colour
most of its pixels are nearest to; its shape is the one whose drawing, made by
``scenes.draw`` in the object's bounding box with the found colours, matches the image best
(a template match against the drawer's own output), provided its mask overlaps the object's
well enough. ``judge(image, shape, colour, background)`` says whether all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlc.engine.shapes import scenes

OBJECT_DISTANCE = 35.0  # RGB distance from the background that counts as object
MIN_AREA = 0.03  # the object covers at least this share of the cells
MIN_MAIN = 0.85  # the largest region holds at least this share of all object cells
COLOUR_CANDIDATES = 2  # colours tried in the template match (the most voted)
NOISE_FLOOR = 20.0  # distances from the background below this count as background (noise)
MIN_IOU = 0.7  # overlap of the object's and the drawing's coverage maps (see _coverage)
REFINE = 3  # shapes per colour whose fit is refined (the best at the first guess of the box)
SEARCH = 6.0  # pixels: the box search steps (side +-SEARCH, centre +-SEARCH/2)

_NAMES = list(scenes.COLOURS)
_PALETTE = np.array([scenes.COLOURS[n] for n in _NAMES], dtype=np.float32)


@dataclass
class Reading:
    """What the judge sees in an image (None where it sees nothing it can name)."""

    background: str | None
    colour: str | None
    shape: str | None
    iou: float = 0.0  # of the fitted drawing with the image (see MIN_IOU)
    errors: dict[str, float] = field(default_factory=dict)  # "shape colour": mean abs error
    note: str = ""


@dataclass
class Verdict:
    """The judge's answer for one image and the scene it should show."""

    ok: bool
    reading: Reading
    wanted: tuple[str, str, str]

    @property
    def reason(self) -> str:
        """Why not (empty when ok)."""
        if self.ok:
            return ""
        r, (shape, colour, background) = self.reading, self.wanted
        if r.note:
            return r.note
        wrong = [
            f"{what} {got} (wanted {want})"
            for what, got, want in (
                ("background", r.background, background),
                ("colour", r.colour, colour),
                ("shape", r.shape, shape),
            )
            if got != want
        ]
        return ", ".join(wrong)


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette of the nearest named colour, for every RGB row of ``rgb``."""
    d = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def cells(image: Any) -> np.ndarray:
    """An image (PIL or array, any multiple of GRID per side) -> its (GRID, GRID, 3) cell means."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"expected a square RGB image, got an array of shape {arr.shape}")
    if arr.shape[0] % scenes.GRID:
        raise ValueError(f"image side {arr.shape[0]} is not a multiple of {scenes.GRID}")
    k = arr.shape[0] // scenes.GRID
    grid = arr.astype(np.float32).reshape(scenes.GRID, k, scenes.GRID, k, 3)
    return grid.mean(axis=(1, 3))


def _largest_region(fg: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean mask (a boolean mask itself)."""
    h, w = fg.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(fg), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(fg)


def _error(grid: np.ndarray, scene: scenes.Scene) -> float:
    return float(np.abs(scenes.thumbnail(scene).astype(np.float32) - grid).mean())


def _fit(grid: np.ndarray, shape: str, colour: str, background: str, box: tuple) -> tuple:
    """The best (error, scene) for ``shape`` near ``box`` = (x, y, side) in pixels."""
    x, y, side = box
    best: tuple[float, scenes.Scene] | None = None
    for ds in (-SEARCH, 0, SEARCH):
        for dx in (-SEARCH / 2, 0, SEARCH / 2):
            for dy in (-SEARCH / 2, 0, SEARCH / 2):
                s = side + ds
                scene = scenes.Scene(shape, colour, background, x + dx - ds / 2, y + dy - ds / 2, s)
                err = _error(grid, scene)
                if best is None or err < best[0]:
                    best = (err, scene)
    assert best is not None
    return best


def _extent(profile: np.ndarray) -> tuple[float, float]:
    """First and last edge, in cells, of a coverage profile (max coverage per column): the
    outermost cells are covered only partly, by as much as the shape reaches into them."""
    idx = np.nonzero(profile > 0)[0]
    lo, hi = int(idx[0]), int(idx[-1])
    return lo + 1 - float(profile[lo]), hi + float(profile[hi])


def _box(main: np.ndarray, dist: np.ndarray) -> tuple[float, float, float] | None:
    """The object's box (x, y, side) in pixels, from its cells' coverage; None if not square."""
    near = main.copy()  # the object and the cells around it, where slivers of it may lie
    near[1:] |= main[:-1]
    near[:-1] |= main[1:]
    near[:, 1:] |= near[:, :-1].copy()
    near[:, :-1] |= near[:, 1:].copy()
    full = np.percentile(dist[main], 90)
    cover = np.where(near, np.clip((dist - NOISE_FLOOR) / max(full - NOISE_FLOOR, 1), 0, 1), 0)
    x0, x1 = _extent(cover.max(axis=0))
    y0, y1 = _extent(cover.max(axis=1))
    w, h = x1 - x0, y1 - y0
    if min(w, h) < 0.6 * max(w, h):
        return None
    c, side = scenes.CELL, (w + h) / 2
    return ((x0 + x1 - side) / 2 * c, (y0 + y1 - side) / 2 * c, side * c)


def _coverage(dist: np.ndarray, main: np.ndarray | None = None) -> np.ndarray:
    """How much of each cell the object covers (0..1), from its distance to the background:
    scaled by the object's own full distance, so that the shape is read apart from its shade."""
    inside = dist[main] if main is not None else dist[dist > OBJECT_DISTANCE]
    if inside.size == 0:
        return np.zeros_like(dist)
    full = float(np.percentile(inside, 90))
    return np.clip((dist - NOISE_FLOOR) / max(full - NOISE_FLOOR, 1.0), 0.0, 1.0)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Soft intersection over union of two coverage maps."""
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def read(image: Any) -> Reading:
    """What the image shows: background colour, object colour and shape (on cell means)."""
    grid = cells(image)
    frame = np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])
    bg_rgb = np.median(frame, axis=0)
    background = _NAMES[int(nearest_colour(bg_rgb))]

    dist = np.sqrt(((grid - bg_rgb) ** 2).sum(-1))
    fg = dist > OBJECT_DISTANCE
    if fg.mean() < MIN_AREA:
        return Reading(background, None, None, note="no object")
    main = _largest_region(fg)
    if main.sum() < MIN_MAIN * fg.sum():
        return Reading(background, None, None, note="more than one object")

    # candidate colours: the named colours nearest to the object's cells, weighted by the
    # square of how far each cell is from the background (edge cells mix the two colours)
    votes = np.bincount(nearest_colour(grid[main]), weights=dist[main] ** 2, minlength=len(_NAMES))
    colours = [_NAMES[i] for i in np.argsort(-votes)[:COLOUR_CANDIDATES] if votes[i] > 0]

    box = _box(main, dist)
    if box is None:
        return Reading(background, colours[0], None, note="object is not in a square box")
    coarse = {
        (shape, colour): _error(grid, scenes.Scene(shape, colour, background, *box))
        for shape in scenes.SHAPES
        for colour in colours
    }
    fits: dict[tuple[str, str], tuple[float, scenes.Scene]] = {}
    for colour in colours:
        mine = sorted((p for p in coarse if p[1] == colour), key=coarse.__getitem__)
        for pair in mine[:REFINE]:
            fits[pair] = _fit(grid, *pair, background, box)
    shape, colour = min(fits, key=lambda pair: fits[pair][0])
    errors = {f"{s} {k}": round(e, 2) for (s, k), (e, _) in fits.items()}
    drawn = scenes.thumbnail(fits[shape, colour][1]).astype(np.float32)
    # the drawing's coverage against its own (named) background, the image's against the
    # background it has: a tinted background must not count as object in either
    drawn_bg = np.array(scenes.COLOURS[background], dtype=np.float32)
    drawn_dist = np.sqrt(((drawn - drawn_bg) ** 2).sum(-1))
    iou = _overlap(_coverage(dist, main), _coverage(drawn_dist))
    if iou < MIN_IOU:
        return Reading(background, colour, None, iou, errors, "no shape fits")
    return Reading(background, colour, shape, iou, errors)


def judge(image: Any, shape: str, colour: str, background: str) -> Verdict:
    """Whether ``image`` shows a ``colour`` ``shape`` on a ``background`` background."""
    reading = read(image)
    ok = (reading.shape, reading.colour, reading.background) == (shape, colour, background)
    return Verdict(ok, reading, (shape, colour, background))


def score(images: list[Any], combos: list[tuple[str, str, str]]) -> tuple[float, list[Verdict]]:
    """The share of images judged to show their combination, and every verdict."""
    verdicts = [judge(im, *t) for im, t in zip(images, combos, strict=True)]
    return sum(v.ok for v in verdicts) / max(len(verdicts), 1), verdicts
