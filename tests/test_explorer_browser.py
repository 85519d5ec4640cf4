"""The explorer page in a real browser: headless Chromium (Debian's ``chromium`` package).

Chromium is driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
NUL-terminated JSON on fds 3 and 4), so no websocket library and no network are needed.
The page is loaded from a ``file://`` URL; a value button is clicked with real mouse
events, arrow keys are pressed, the URL fragment is applied, and after each step the
shown image, its parameters and its time are checked; the screenshot is compared with the
cell's PNG and saved (``$MLC_TEST_SCREENSHOTS`` or the test's tmp folder).
Fails, not skips, when CI is set and chromium is missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1200,800",
]
TIMEOUT = 30.0


def chromium_binary() -> str:
    """$MLC_CHROMIUM, else chromium on PATH; fails in CI, skips elsewhere, when missing."""
    found = os.environ.get("MLC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).is_file():
        message = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the browser test must run")
        pytest.skip(message)
    return found


class Chrome:
    """A headless Chromium and a minimal CDP client over its debugging pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds_3_and_4() -> None:  # in the child: chromium reads fd 3, writes fd 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds_3_and_4,
            close_fds=False,  # our pipe ends are close-on-exec; fds 3 and 4 are inherited
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call METHOD (in the page's session once attached); return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The next event METHOD (already received ones first)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def open_page(self) -> None:
        """A new tab, attached (flat session), with page events on."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        self.send("Page.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )

    def navigate(self, url: str, *, same_document: bool = False) -> None:
        """Load URL and wait for its load event (or, for a new fragment, the navigation)."""
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.navigatedWithinDocument" if same_document else "Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """Evaluate EXPRESSION in the page (promises awaited); its JSON value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse events) in the middle of SELECTOR's element."""
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
            )

    def key(self, key: str, code: int) -> None:
        """Press and release KEY (e.g. ArrowDown, virtual key code 40)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code},
            )

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        """Ask chromium to quit; kill it if it does not."""
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real 2x2 grid (sampler x steps) with the tiny demo model, and its summary."""
    from mlc.engine import txt2img
    from mlc.engine.demo import build_demo_checkpoint

    root = tmp_path_factory.mktemp("explorer")
    ckpt = build_demo_checkpoint(root / "model")
    out = io.StringIO()
    argv = [
        "--ckpt", str(ckpt), "--H", "64", "--W", "64", "--ddim_steps", "2",
        "--outdir", str(root / "out"), "--json",
        "--x", "sampler=ddim,euler_a", "--y", "steps=2,3",
        "--prompt", "a red cube, black background",
    ]  # fmt: skip
    with contextlib.redirect_stdout(out):
        assert txt2img.main(argv) == 0
    return json.loads(out.getvalue())


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Chrome]:
    browser = Chrome(chromium_binary(), tmp_path / "profile")
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()


def _shown(chrome: Chrome) -> dict[str, Any]:
    """What the page shows once its image has loaded."""
    return chrome.js(
        """new Promise(done => {
          const img = document.getElementById("view");
          const report = () => done({
            src: img.getAttribute("src"), natural: img.naturalWidth,
            hash: location.hash, now: document.getElementById("now").textContent,
            time: document.getElementById("time").textContent,
            params: document.getElementById("params").textContent,
            pressed: [...document.querySelectorAll('button[aria-pressed="true"]')]
              .map(b => b.dataset.axis + b.dataset.index),
            box: (r => [r.x, r.y, r.width, r.height])(img.getBoundingClientRect()),
          });
          if (img.complete) report(); else img.addEventListener("load", report, {once: true});
        })"""
    )


def _cell(summary: dict[str, Any], x: int, y: int) -> dict[str, Any]:
    return next(c for c in summary["cells"] if c["at"] == {"x": x, "y": y})


def _expect(shown: dict[str, Any], summary: dict[str, Any], x: int, y: int) -> None:
    cell = _cell(summary, x, y)
    rel = Path(cell["file"]).relative_to(summary["outdir"]).as_posix()
    assert shown["src"] == rel and shown["natural"] == 64  # loaded over file://, relative
    assert shown["hash"] == f"#x={x}&y={y}"
    assert shown["pressed"] == [f"x{x}", f"y{y}"]
    assert shown["params"] == cell["parameters"]
    assert shown["time"] == f"{cell['seconds']:.2f} s"
    assert shown["now"] == f"sampler: {cell['values']['sampler']} · steps: {cell['steps']}"


@pytest.mark.slow
def test_explorer_in_chromium(grid_run: dict[str, Any], chrome: Chrome, tmp_path: Path):
    page = Path(grid_run["explorer"])
    assert page.name == "explore-0000.html" and page.parent == Path(grid_run["outdir"])
    url = page.resolve().as_uri()
    chrome.navigate(url)
    _expect(_shown(chrome), grid_run, 0, 0)

    chrome.click('button[data-axis="x"][data-index="1"]')  # a control: x = euler_a
    shown = _shown(chrome)
    _expect(shown, grid_run, 1, 0)
    assert "Sampler: Euler a" in shown["params"]

    chrome.key("ArrowDown", 40)  # keyboard: y = 3 steps
    _expect(_shown(chrome), grid_run, 1, 1)
    chrome.key("ArrowLeft", 37)
    _expect(_shown(chrome), grid_run, 0, 1)
    chrome.key("ArrowLeft", 37)  # stays at the first value
    _expect(_shown(chrome), grid_run, 0, 1)

    chrome.click('#thumbs img[data-x="1"][data-y="0"]')  # a thumbnail picks x and y
    _expect(_shown(chrome), grid_run, 1, 0)

    chrome.navigate(url + "#x=0&y=1", same_document=True)  # hashchange: same code path
    _expect(_shown(chrome), grid_run, 0, 1)
    chrome.navigate("about:blank")
    chrome.navigate(url + "#x=1&y=1")  # a link to a view, applied on load
    _expect(_shown(chrome), grid_run, 1, 1)

    png = chrome.screenshot()
    where = Path(os.environ.get("MLC_TEST_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    (where / "explorer.png").write_bytes(png)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert shot.shape == (800, 1200, 3)
    # the screenshot really shows the selected cell: sample the enlarged image's pixels
    x, y, w, h = _shown(chrome)["box"]
    assert w == h and w % 64 == 0 and w >= 320
    scale = int(w // 64)
    cell = np.asarray(Image.open(_cell(grid_run, 1, 1)["file"]).convert("RGB")).astype(int)
    ys = (int(y) + np.arange(64) * scale + scale // 2)[:, None]
    xs = (int(x) + np.arange(64) * scale + scale // 2)[None, :]
    assert np.abs(shot[ys, xs] - cell).max() <= 8
    other = np.asarray(Image.open(_cell(grid_run, 0, 0)["file"]).convert("RGB")).astype(int)
    assert np.abs(shot[ys, xs] - other).max() > 8
