"""Labelled grids: cells in rows and columns, axis values written above and beside them.

One block per z value, stacked top to bottom, each under its own title line. Text uses
Pillow's built-in font (``ImageFont.load_default(size=...)``, offline, Pillow >= 10.1),
black on white, wrapped to the cell width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GAP = 2  # px of white between cells (as make_grid's padding)
MAX_LINES = 4  # a label longer than this is cut with an ellipsis


def font_size(cell_w: int, cell_h: int) -> int:
    """Readable at every size: 14 px for tiny cells, (w+h)/32 for big ones (32 px at 512)."""
    return max(14, (cell_w + cell_h) // 32)


def load_font(size: int) -> Any:
    """Pillow's built-in scalable font (no font files needed)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap to ``width`` px; over-long words are broken; at most MAX_LINES."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:  # break a word that is wider than the cell
                if line and font.getlength(line + ch) > width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    if len(lines) > MAX_LINES:
        last = lines[MAX_LINES - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = [*lines[: MAX_LINES - 1], last + "…"]
    return lines


@dataclass(frozen=True)
class Layout:
    """Where everything goes in a labelled grid (all in pixels)."""

    cols: int
    rows: int
    blocks: int
    cell_w: int
    cell_h: int
    left: int  # width of the y-label column (0 without y labels)
    header: int  # height of the x-label row (0 without x labels)
    title: int  # height of each block's z title (0 without z titles)
    block_gap: int  # white space between z blocks
    font_size: int

    @property
    def block_h(self) -> int:
        """Height of one z block, titles and labels included."""
        return self.title + self.header + self.rows * (self.cell_h + GAP) + GAP

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole image."""
        width = self.left + self.cols * (self.cell_w + GAP) + GAP
        return width, self.blocks * self.block_h + (self.blocks - 1) * self.block_gap

    def cell_box(self, col: int, row: int, block: int = 0) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell's slot."""
        x = self.left + GAP + col * (self.cell_w + GAP)
        y = block * (self.block_h + self.block_gap) + self.title + self.header + GAP
        y += row * (self.cell_h + GAP)
        return x, y, x + self.cell_w, y + self.cell_h


def plan_layout(
    sizes: Sequence[tuple[int, int]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    z_titles: Sequence[str],
) -> tuple[Layout, dict[str, Any]]:
    """The layout for cells of these sizes, and the wrapped label lines it was made for.

    A slot is as wide as the widest image, or the widest word of an x label if wider.
    """
    cell_w = max(w for w, _ in sizes)
    cell_h = max(h for _, h in sizes)
    size = font_size(cell_w, cell_h)
    font = load_font(size)
    words = (font.getlength(word) for t in x_labels for word in t.split())
    cell_w = max(cell_w, int(max(words, default=0)) + 4)  # no word broken in a column label
    pad = max(4, size // 3)
    line_h = size + size // 4
    x_lines = [wrap(t, font, cell_w - 2) for t in x_labels]
    header = max((len(lines) for lines in x_lines), default=0) * line_h
    header = header + 2 * pad if header else 0
    y_width = max(cell_w, 10 * size)
    y_lines = [wrap(t, font, y_width) for t in y_labels]
    widest = max((font.getlength(line) for lines in y_lines for line in lines), default=0)
    left = int(widest) + 2 * pad if widest else 0
    title = line_h + 2 * pad if z_titles else 0
    layout = Layout(
        cols=max(1, len(x_labels)),
        rows=max(1, len(y_labels)),
        blocks=max(1, len(z_titles)),
        cell_w=cell_w,
        cell_h=cell_h,
        left=left,
        header=header,
        title=title,
        block_gap=line_h if z_titles else 0,
        font_size=size,
    )
    return layout, {"font": font, "pad": pad, "line_h": line_h, "x": x_lines, "y": y_lines}


def labelled_grid(
    cells: Sequence[Sequence[Sequence[Any]]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    z_titles: Sequence[str] = (),
) -> tuple[Any, Layout]:
    """Draw ``cells[block][row][col]`` (PIL images) with their labels; returns (image, layout).

    Smaller images are centred in their slot; empty label lists draw no label row/column.
    """
    from PIL import Image, ImageDraw

    sizes = [im.size for block in cells for row in block for im in row]
    layout, text = plan_layout(sizes, x_labels, y_labels, z_titles)
    font, pad, line_h = text["font"], text["pad"], text["line_h"]
    image = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(image)
    for b, block in enumerate(cells):
        top = b * (layout.block_h + layout.block_gap)
        if z_titles:
            draw.text((pad, top + pad), z_titles[b], fill="black", font=font)
        for c, lines in enumerate(text["x"]):
            x0, y0, x1, _ = layout.cell_box(c, 0, b)
            y = top + layout.title + pad
            for line in lines:
                draw.text(((x0 + x1) // 2, y), line, fill="black", font=font, anchor="ma")
                y += line_h
        for r, lines in enumerate(text["y"]):
            _, y0, _, y1 = layout.cell_box(0, r, b)
            y = (y0 + y1) // 2 - len(lines) * line_h // 2
            for line in lines:
                draw.text((layout.left - pad, y), line, fill="black", font=font, anchor="ra")
                y += line_h
        for r, row in enumerate(block):
            for c, im in enumerate(row):
                x0, y0, _, _ = layout.cell_box(c, r, b)
                w, h = im.size
                image.paste(im, (x0 + (layout.cell_w - w) // 2, y0 + (layout.cell_h - h) // 2))
    return image, layout
