"""The explorer: one self-contained HTML page beside a grid to step through its cells.

``<outdir>/explore-NNNN.html`` (the grid's number): inline CSS and JS, no network, no
server; the images are referenced relative to the outdir (``samples/NNNNN.png``), so the
folder can be moved or zipped as a whole. One row of buttons per axis picks a value; the
arrow keys step x (left/right) and y (up/down), PageUp/PageDown step z; a thumbnail table
shows the current z block. The URL fragment (``#x=1&y=0&z=2``) holds the choice: it is
updated on every change and applied on load, through the same code path as the buttons.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlc.engine.outputs import GRID_PATTERN, Numbering, write_claimed

PAGE_PATTERN = re.compile(r"^explore-(\d+)")


def page_numbering(outdir: str | Path, grid: str | Path | None = None) -> Numbering:
    """``<outdir>/explore-NNNN.html``, starting at the grid's number when there is one."""
    numbering = Numbering(Path(outdir), "explore-{:04}.html", PAGE_PATTERN)
    match = GRID_PATTERN.match(Path(grid).name) if grid else None
    if match:
        numbering._next = max(int(match.group(1)), numbering.highest() + 1)
    return numbering


def _relative(path: str | Path, outdir: str | Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(outdir).resolve())).as_posix()


def page_data(
    outdir: str | Path, axes: Sequence[Any], cells: Sequence[dict[str, Any]], grid: Any
) -> dict[str, Any]:
    """What the page's script gets: axes with value labels, cells with relative files."""
    from mlc.engine.axes import format_value

    return {
        "grid": _relative(grid, outdir) if grid else None,
        "axes": [
            {"flag": a.flag, "name": a.name, "values": [format_value(a.name, v) for v in a.values]}
            for a in axes
        ],
        "cells": [
            {
                "at": [c["at"][a.flag] for a in axes],
                "file": _relative(c["file"], outdir),
                "seconds": c["seconds"],
                "parameters": c.get("parameters") or "",
            }
            for c in cells
        ],
    }


def write_page(
    outdir: str | Path, axes: Sequence[Any], cells: Sequence[dict[str, Any]], grid: Any = None
) -> Path:
    """Write the page under the next free ``explore-NNNN.html`` (never overwriting)."""
    data = page_data(outdir, axes, cells, grid)
    title = " × ".join(f"{a['name']}" for a in data["axes"]) or "cells"
    text = render(data, f"mlc explorer: {title}")
    numbering = page_numbering(outdir, grid)
    return write_claimed(numbering, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def render(data: dict[str, Any], title: str) -> str:
    """The page's HTML for DATA (see ``page_data``)."""
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    grid = data["grid"]
    grid_link = f'<a href="{html.escape(grid)}">{html.escape(grid)}</a>' if grid else "none"
    return (
        PAGE.replace("%TITLE%", html.escape(title))
        .replace("%GRID%", grid_link)
        .replace("%DATA%", blob)
    )


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
  :root { color-scheme: light; --accent: #2457c5; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d1f23; }
  header { padding: 12px 20px; background: #1d1f23; color: #fff; }
  header h1 { font-size: 17px; margin: 0; font-weight: 600; }
  header p { margin: 2px 0 0; color: #c9ccd3; font-size: 13px; }
  header a { color: #9fc0ff; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 20px; align-items: flex-start; }
  #controls { flex: 0 1 340px; display: flex; flex-direction: column; gap: 14px; }
  fieldset { border: 1px solid #d5d8de; border-radius: 8px; background: #fff; margin: 0;
             padding: 8px 12px 12px; }
  legend { font-weight: 600; padding: 0 4px; }
  legend kbd { font-weight: 400; }
  .values { display: flex; flex-wrap: wrap; gap: 6px; }
  .values button { font: inherit; padding: 4px 10px; border: 1px solid #b9bec8;
                   border-radius: 6px; background: #fff; cursor: pointer; max-width: 300px;
                   overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .values button[aria-pressed="true"] { background: var(--accent); border-color: var(--accent);
                                        color: #fff; }
  #view-box { flex: 1 1 420px; background: #fff; border: 1px solid #d5d8de; border-radius: 8px;
              padding: 14px; }
  #view { display: block; max-width: 100%; height: auto; image-rendering: pixelated;
          margin: 0 auto 12px; background: #ddd; }
  #now { font-weight: 600; margin: 0 0 4px; }
  #time { color: #3b6e1e; font-weight: 600; }
  pre#params { white-space: pre-wrap; word-break: break-word; background: #f4f5f7;
               border-radius: 6px; padding: 8px 10px; font-size: 13px; margin: 8px 0 0; }
  table#thumbs { border-collapse: collapse; font-size: 12px; }
  #thumbs th { font-weight: 500; padding: 2px 4px; color: #50555e; }
  #thumbs td { padding: 2px; }
  #thumbs img { width: 56px; height: 56px; object-fit: cover; display: block; cursor: pointer;
                border: 2px solid transparent; image-rendering: pixelated; }
  #thumbs img.current { border-color: var(--accent); }
  kbd { border: 1px solid #b9bec8; border-bottom-width: 2px; border-radius: 4px; padding: 0 4px;
        font-size: 12px; background: #fff; color: #1d1f23; }
  .help { color: #50555e; font-size: 13px; }
</style>
</head>
<body>
<header>
  <h1>%TITLE%</h1>
  <p>Grid image: %GRID% &middot; keys: <span id="keys"></span></p>
</header>
<main>
  <section id="controls"></section>
  <section id="view-box">
    <img id="view" alt="selected cell">
    <p id="now"></p>
    <p>Generation time: <span id="time"></span>
       &middot; <a id="file" href="#">open the PNG</a></p>
    <pre id="params"></pre>
  </section>
</main>
<script type="application/json" id="data">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const pos = D.axes.map(() => 0);
const byKey = new Map(D.cells.map(c => [c.at.join(","), c]));
const controls = document.getElementById("controls");
const KEYS = {x: "&larr; &rarr;", y: "&uarr; &darr;", z: "PgUp PgDn"};
document.getElementById("keys").innerHTML = D.axes
  .map(a => `<kbd>${KEYS[a.flag]}</kbd> ${esc(a.name)}`).join(", ");

function esc(s) {
  const map = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
  return String(s).replace(/[&<>"]/g, ch => map[ch]);
}

D.axes.forEach((axis, a) => {
  const box = document.createElement("fieldset");
  box.innerHTML = `<legend>${esc(axis.flag)}: ${esc(axis.name)} `
    + `<kbd>${KEYS[axis.flag] || ""}</kbd></legend>`;
  const row = document.createElement("div");
  row.className = "values";
  axis.values.forEach((value, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = value;
    b.title = value;
    b.dataset.axis = axis.flag;
    b.dataset.index = i;
    b.addEventListener("click", () => select(a, i));
    row.appendChild(b);
  });
  box.appendChild(row);
  controls.appendChild(box);
});

const thumbBox = document.createElement("fieldset");
thumbBox.innerHTML = axisIndex("z") >= 0 ? "<legend>All cells of this z</legend>"
  : "<legend>All cells</legend>";
const thumbs = document.createElement("table");
thumbs.id = "thumbs";
thumbBox.appendChild(thumbs);
controls.appendChild(thumbBox);
const help = document.createElement("p");
help.className = "help";
help.textContent = "Click a value or a thumbnail, or use the keys. The address (#x=..&y=..) "
  + "keeps the choice, so a link opens this view.";
controls.appendChild(help);

function axisIndex(flag) { return D.axes.findIndex(a => a.flag === flag); }

function select(a, i) {
  if (a < 0 || a >= D.axes.length) return;
  pos[a] = Math.max(0, Math.min(D.axes[a].values.length - 1, i));
  render();
}

function step(flag, delta) {
  const a = axisIndex(flag);
  if (a >= 0) select(a, pos[a] + delta);
}

function drawThumbs() {
  const xa = axisIndex("x"), ya = axisIndex("y");
  const xs = xa >= 0 ? D.axes[xa].values : [""];
  const ys = ya >= 0 ? D.axes[ya].values : [""];
  let h = "<tr><th></th>" + xs.map(v => `<th>${esc(v)}</th>`).join("") + "</tr>";
  ys.forEach((yv, j) => {
    h += `<tr><th>${esc(yv)}</th>`;
    xs.forEach((xv, i) => {
      const at = pos.slice();
      if (xa >= 0) at[xa] = i;
      if (ya >= 0) at[ya] = j;
      const c = byKey.get(at.join(","));
      const cur = at.join(",") === pos.join(",") ? " current" : "";
      h += `<td><img class="thumb${cur}" src="${esc(c.file)}" alt="${esc(xv)} ${esc(yv)}"`
        + ` data-x="${i}" data-y="${j}"></td>`;
    });
    h += "</tr>";
  });
  thumbs.innerHTML = h;
  thumbs.querySelectorAll("img").forEach(img => img.addEventListener("click", () => {
    if (xa >= 0) pos[xa] = Number(img.dataset.x);
    if (ya >= 0) pos[ya] = Number(img.dataset.y);
    render();
  }));
}

function render() {
  const cell = byKey.get(pos.join(","));
  document.querySelectorAll(".values button").forEach(b => {
    const a = axisIndex(b.dataset.axis);
    b.setAttribute("aria-pressed", String(pos[a] === Number(b.dataset.index)));
  });
  const view = document.getElementById("view");
  if (view.getAttribute("src") !== cell.file) view.setAttribute("src", cell.file);
  document.getElementById("now").textContent =
    D.axes.map((axis, a) => `${axis.name}: ${axis.values[pos[a]]}`).join(" \\u00b7 ");
  document.getElementById("time").textContent = cell.seconds.toFixed(2) + " s";
  document.getElementById("file").setAttribute("href", cell.file);
  document.getElementById("params").textContent = cell.parameters;
  drawThumbs();
  const hash = "#" + D.axes.map((axis, a) => `${axis.flag}=${pos[a]}`).join("&");
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function applyHash() {
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const [flag, value] = part.split("=");
    const a = axisIndex(flag);
    if (a >= 0 && /^\\d+$/.test(value || "")) pos[a] = Number(value);
  }
  D.axes.forEach((axis, a) => select(a, pos[a]));
}

document.getElementById("view").addEventListener("load", function () {
  // small images (e.g. 64x64) are shown enlarged, in whole multiples, pixels kept sharp
  const n = this.naturalWidth;
  this.style.width = n && n < 320 ? `${n * Math.ceil(320 / n)}px` : "";
});

document.addEventListener("keydown", ev => {
  const moves = {ArrowLeft: ["x", -1], ArrowRight: ["x", 1], ArrowUp: ["y", -1],
                 ArrowDown: ["y", 1], PageUp: ["z", -1], PageDown: ["z", 1]};
  const m = moves[ev.key];
  if (!m || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  ev.preventDefault();
  step(m[0], m[1]);
});
window.addEventListener("hashchange", applyHash);
applyHash();
</script>
</body>
</html>
"""
