"""Procedural scenes for the shapes model: one coloured shape on a plain background.

A scene is a shape word, an object colour, a background colour and a box (where the shape
sits and how big it is). ``draw`` renders it (anti-aliased by drawing at 4x and averaging);
``caption`` writes its prompt in the demo's style, "a photo of a pink cube, black background".
Training data comes from ``random_scenes`` with a seeded generator: nothing is downloaded.
A fixed set of shape-colour-background combinations, ``HELD_OUT``, never appears in training.

Pure numpy and PIL (no torch), so the judge can use the same drawer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
"""Pixels per side of a training image (the model's native size)."""
CELL = 8
"""Pixels per latent cell (the autoencoder's factor): images are pixel art of CELL-sized blocks."""
GRID = SIZE // CELL
"""Cells per side (the latent's size)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "cube")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "teal": (0, 140, 150),
    "blue": (40, 80, 220),
    "purple": (125, 50, 190),
    "pink": (250, 120, 190),
    "brown": (125, 80, 40),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
"""Every named colour and its RGB value; each name is one CLIP token."""

BACKGROUNDS: tuple[str, ...] = ("black", "white", "gray", "blue", "green", "yellow")
"""Colours a background may have (objects may have any colour of COLOURS but the background's)."""

HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("circle", "purple", "white"),
    ("circle", "orange", "blue"),
    ("circle", "gray", "yellow"),
    ("circle", "teal", "black"),
    ("circle", "white", "green"),
    ("square", "pink", "gray"),
    ("square", "yellow", "black"),
    ("square", "brown", "white"),
    ("square", "blue", "green"),
    ("square", "white", "blue"),
    ("triangle", "red", "black"),
    ("triangle", "green", "white"),
    ("triangle", "purple", "yellow"),
    ("triangle", "orange", "gray"),
    ("triangle", "teal", "blue"),
    ("star", "yellow", "blue"),
    ("star", "pink", "white"),
    ("star", "black", "green"),
    ("star", "brown", "gray"),
    ("star", "red", "yellow"),
    ("ring", "blue", "black"),
    ("ring", "black", "gray"),
    ("ring", "green", "yellow"),
    ("ring", "gray", "blue"),
    ("ring", "pink", "green"),
    ("cross", "white", "gray"),
    ("cross", "brown", "black"),
    ("cross", "teal", "yellow"),
    ("cross", "purple", "green"),
    ("cross", "yellow", "white"),
    ("cube", "green", "gray"),
    ("cube", "red", "white"),
    ("cube", "blue", "yellow"),
    ("cube", "black", "blue"),
    ("cube", "orange", "green"),
    ("cube", "gray", "black"),
)
"""Shape-colour-background combinations never drawn in training: the generalisation test.
Every shape appears 5 or 6 times, every colour 3 times, every background 6 times; each word
and each pair of words still appears in training, only these triples do not."""

DEMO_PROMPT = "a photo of a pink cube, black background"

MIN_BOX = 68  # the shape's box side, in pixels at SIZE
MAX_BOX = 76
JITTER = 4  # pixels: how far the box's centre may be from the image's, either way
CELL_SS = 8  # the sharp drawing's pixels per cell (its coverage steps are 1/64)
CUBE_DEPTH = 0.3  # share of the box taken by the cube's top and side faces
RING_HOLE = 0.5  # the ring's hole diameter as a share of its box
LIGHTER = 0.25  # the cube's top face: this share of the way to white
DARKER = 0.78  # the cube's side face: its colour times this


@dataclass(frozen=True)
class Scene:
    """One image: what to draw and where (box corner and side in pixels at SIZE)."""

    shape: str
    colour: str
    background: str
    x: float
    y: float
    side: float

    @property
    def caption(self) -> str:
        """The scene's prompt."""
        return caption(self.shape, self.colour, self.background)


def caption(shape: str, colour: str, background: str) -> str:
    """The prompt for a scene: "a photo of a pink cube, black background"."""
    return f"a photo of a {colour} {shape}, {background} background"


def all_combos() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) whose object and background colours differ."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS if c != b]


def train_combos() -> list[tuple[str, str, str]]:
    """The combinations training may draw: all but HELD_OUT."""
    held = set(HELD_OUT)
    return [t for t in all_combos() if t not in held]


def held_out_prompts() -> list[str]:
    """The prompts of HELD_OUT, in order."""
    return [caption(*t) for t in HELD_OUT]


def centred(shape: str, colour: str, background: str) -> Scene:
    """The scene drawn for a combination with a mid-sized box in the middle."""
    side = (MIN_BOX + MAX_BOX) / 2
    return Scene(shape, colour, background, (SIZE - side) / 2, (SIZE - side) / 2, side)


def random_scene(rng: np.random.Generator, combos: list[tuple[str, str, str]]) -> Scene:
    """A scene of a random combination from ``combos``, near the middle, of random size."""
    shape, colour, background = combos[int(rng.integers(len(combos)))]
    side = float(rng.uniform(MIN_BOX, MAX_BOX))
    x = (SIZE - side) / 2 + float(rng.uniform(-JITTER, JITTER))
    y = (SIZE - side) / 2 + float(rng.uniform(-JITTER, JITTER))
    return Scene(shape, colour, background, x, y, side)


def random_scenes(
    rng: np.random.Generator, n: int, combos: list[tuple[str, str, str]] | None = None
) -> list[Scene]:
    """``n`` random scenes (from the training combinations unless ``combos`` is given)."""
    pool = combos if combos is not None else train_combos()
    return [random_scene(rng, pool) for _ in range(n)]


# -- drawing ----------------------------------------------------------------------------------
# Each shape is a list of parts in the unit box [0, 1]^2: (kind, points, tone), kind
# "polygon" or "ellipse" (points = its box), tone "base", "light", "dark" or "hole" (drawn in
# the background colour). Every shape touches all four sides of its box, so the bounding box
# of a drawn shape is its box: the judge relies on that.


def _star() -> list[tuple[float, float]]:
    outer, inner = 1.0, 0.42
    pts = []
    for i in range(10):
        r = outer if i % 2 == 0 else inner
        angle = np.pi / 2 + i * np.pi / 5
        pts.append((r * np.cos(angle), -r * np.sin(angle)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [((px - x0) / (x1 - x0), (py - y0) / (y1 - y0)) for px, py in pts]


def _parts(shape: str) -> list[tuple[str, list[tuple[float, float]], str]]:
    d, a, h = CUBE_DEPTH, 1 / 3, (1 - RING_HOLE) / 2
    table: dict[str, list[tuple[str, list[tuple[float, float]], str]]] = {
        "circle": [("ellipse", [(0, 0), (1, 1)], "base")],
        "square": [("polygon", [(0, 0), (1, 0), (1, 1), (0, 1)], "base")],
        "triangle": [("polygon", [(0.5, 0), (1, 1), (0, 1)], "base")],
        "star": [("polygon", _star(), "base")],
        "ring": [
            ("ellipse", [(0, 0), (1, 1)], "base"),
            ("ellipse", [(h, h), (1 - h, 1 - h)], "hole"),
        ],
        "cross": [
            ("polygon", [(a, 0), (1 - a, 0), (1 - a, 1), (a, 1)], "base"),
            ("polygon", [(0, a), (1, a), (1, 1 - a), (0, 1 - a)], "base"),
        ],
        "cube": [
            ("polygon", [(0, d), (1 - d, d), (1 - d, 1), (0, 1)], "base"),
            ("polygon", [(0, d), (d, 0), (1, 0), (1 - d, d)], "light"),
            ("polygon", [(1 - d, d), (1, 0), (1, 1 - d), (1 - d, 1)], "dark"),
        ],
    }
    try:
        return table[shape]
    except KeyError:
        raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}") from None


def tones(colour: str, background: str) -> dict[str, tuple[int, int, int]]:
    """The RGB of each tone of an object of ``colour`` on ``background``."""
    base = np.array(COLOURS[colour], dtype=float)
    light = base + (255 - base) * LIGHTER
    dark = base * DARKER
    return {
        "base": tuple(int(round(v)) for v in base),
        "light": tuple(int(round(v)) for v in light),
        "dark": tuple(int(round(v)) for v in dark),
        "hole": COLOURS[background],
    }


def _render(scene: Scene, fills: dict[str, object], mode: str, ground: object) -> Image.Image:
    """The scene drawn sharp at CELL_SS pixels per cell, then averaged down to GRID x GRID."""
    big = GRID * CELL_SS
    k = big / SIZE
    image = Image.new(mode, (big, big), ground)
    pen = ImageDraw.Draw(image)
    x0, y0, side = scene.x * k, scene.y * k, scene.side * k
    span = side - 1  # PIL fills up to and including the last coordinate
    for kind, points, tone in _parts(scene.shape):
        xy = [(x0 + px * span, y0 + py * span) for px, py in points]
        if kind == "ellipse":
            pen.ellipse([xy[0], xy[1]], fill=fills[tone])
        else:
            pen.polygon(xy, fill=fills[tone])
    return image.resize((GRID, GRID), Image.Resampling.BOX)


def thumbnail(scene: Scene) -> np.ndarray:
    """The scene at one pixel per cell: uint8 (GRID, GRID, 3), each cell the mean colour
    of the sharp drawing over it (edges mix the two colours by coverage)."""
    fills = tones(scene.colour, scene.background)
    return np.asarray(_render(scene, fills, "RGB", COLOURS[scene.background]))


def coverage(scene: Scene) -> np.ndarray:
    """The share of each cell the object covers: float32 (GRID, GRID) in [0, 1]."""
    fills = {"base": 255, "light": 255, "dark": 255, "hole": 0}
    return np.asarray(_render(scene, fills, "L", 0), dtype=np.float32) / 255.0


def upscale(cells: np.ndarray) -> np.ndarray:
    """A (GRID, GRID, 3) thumbnail -> the (SIZE, SIZE, 3) image: each cell a CELL x CELL block."""
    return np.repeat(np.repeat(cells, CELL, axis=0), CELL, axis=1)


def draw(scene: Scene) -> Image.Image:
    """The scene as the model's training image: SIZE x SIZE pixels, pixel art with one
    block per latent cell (the thumbnail, each cell repeated over CELL x CELL pixels)."""
    return Image.fromarray(upscale(thumbnail(scene)))


def draw_batch(scenes: list[Scene]) -> np.ndarray:
    """Scenes as one uint8 array (N, SIZE, SIZE, 3)."""
    return np.stack([upscale(thumbnail(s)) for s in scenes])


def thumbnail_batch(scenes: list[Scene]) -> np.ndarray:
    """Thumbnails as one uint8 array (N, GRID, GRID, 3)."""
    return np.stack([thumbnail(s) for s in scenes])
