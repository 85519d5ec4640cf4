"""In the container: one request to the user's warm engine worker, as events, and the models.

:func:`run` sends an engine command line to the worker (``mlc.engine.client``'s connection:
started on first use, the peer's uid checked, so a user's server only ever reaches that user's
worker) with ``"progress": true``, and hands each message to a callback: ``queued``,
``step``, ``err``, ``out``, ``image`` (with its PNG's bytes as ``png``), at the end
``summary`` (the ``--json`` document) and ``grid`` (with ``png``). Images that are not to be
kept go to a fresh temporary folder, removed afterwards (nothing in the workspace is touched
or overwritten). A worker that dies during the request is restarted and the request resumed
once, after the images already made (the client's crash rule). :func:`cancel` cancels a
request by its tag. :func:`models` lists the checkpoints ``mlc setup`` installed.

No torch, no web library: the relay (:mod:`mlc.serve.relay`) and the in-container server
both use it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlc.engine.checkpoint import legacy_model_hash
from mlc.engine.client import WorkerGone, connect, open_worker, run_request
from mlc.engine.env import ckpt_env
from mlc.engine.options import worker_dir, worker_idle
from mlc.engine.protocol import idle_seconds, private_dir, send
from mlc.errors import WorkerError
from mlc.serve import EngineRequest

STATE_FILE = Path("/etc/mlc/state.json")  # what `mlc setup` recorded (mlc.provision.STATE)

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


def _read(path: str | Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def run(req: EngineRequest, on_event: OnEvent) -> int:
    """Run REQ in the worker, each message to ON_EVENT (see the module's doc); the engine's
    exit code. WorkerError when the worker cannot be reached or stops twice."""
    argv = list(req.argv)
    tmp = None
    if not req.save:
        tmp = tempfile.mkdtemp(prefix="mlc-serve-")
        argv += [f"--outdir={tmp}", "--skip_grid"]
    try:
        return _run(argv, req.tag, on_event)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(argv: list[str], tag: str | None, on_event: OnEvent) -> int:
    d = private_dir(worker_dir())
    idle = idle_seconds(worker_idle())
    saved: list[dict[str, Any]] = []
    out: list[str] = []
    for attempt in range(2):
        try:
            code = _attempt(d, argv, tag, idle, saved, out, on_event)
            break
        except WorkerGone as gone:
            if attempt or not gone.accepted:
                raise WorkerError(
                    f"the engine worker stopped during this request; {len(saved)} image(s) "
                    f"kept; see {d / 'worker.log'}"
                ) from None
            out.clear()
    if code == 0:
        _finish("".join(out), on_event)
    return code


def _attempt(
    d: Path,
    argv: list[str],
    tag: str | None,
    idle: float,
    saved: list[dict[str, Any]],
    out: list[str],
    on_event: OnEvent,
) -> int:
    sock, lines, _hello = open_worker(d, idle)
    with sock:
        given = worker_idle() is not None
        request = run_request(argv, idle if given else None, tag, saved, progress=True)
        try:
            send(sock, request)
        except OSError:
            raise WorkerGone(False) from None
        accepted = False
        while True:
            msg = lines.next()
            if msg is None:
                raise WorkerGone(accepted)
            accepted = True
            if "exit" in msg:
                return int(msg["exit"])
            if "error" in msg:
                raise WorkerError(str(msg["error"]))
            if "image" in msg:
                entry = msg["image"]
                saved.append(entry)
                on_event({"image": entry, "png": _read(entry.get("file") or "")})
                continue
            if "out" in msg:
                out.append(str(msg["out"]))
            on_event(msg)


def _finish(text: str, on_event: OnEvent) -> None:
    """The ``--json`` summary, and the grid's PNG when the run made one."""
    try:
        summary = json.loads(text)
    except ValueError:
        return
    on_event({"summary": summary})
    if isinstance(summary, dict) and summary.get("grid"):
        on_event({"grid": summary["grid"], "png": _read(summary["grid"])})


def cancel(tag: str) -> bool:
    """Cancel the request tagged TAG in the user's worker; whether it was found."""
    got = connect(private_dir(worker_dir()))
    if not got:
        return False
    sock, lines, _ = got
    with sock:
        send(sock, {"op": "cancel", "tag": tag})
        reply = lines.next() or {}
    return reply.get("ok") == "cancelled"


# -- models ----------------------------------------------------------------------------------------


def _state() -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(STATE_FILE.read_text())
        if isinstance(data, dict):
            return data
    return {}


def describe(path: str, recipe: str | None = None) -> dict[str, Any]:
    """One checkpoint as A1111's ``/sdapi/v1/sd-models`` shows it (``hash``: the legacy model
    hash the engine writes into each PNG), plus its ``recipe``."""
    p = Path(path)
    name = p.stem if p.suffix in (".ckpt", ".safetensors") else p.name
    short = legacy_model_hash(p) if p.is_file() else None
    return {
        "title": f"{p.name} [{short}]" if short else p.name,
        "model_name": name,
        "hash": short,
        "sha256": None,
        "filename": str(p),
        "config": None,
        "recipe": recipe,
    }


def models() -> list[dict[str, Any]]:
    """The checkpoints ``mlc setup`` installed (not the tiny VAE), the default first
    (``$MLC_CKPT``, else the last one set up); each marked ``default`` or not."""
    state = _state()
    found = [
        (recipe, str(path))
        for recipe, path in (state.get("models") or {}).items()
        if path and path != state.get("tiny_vae")
    ]
    default = ckpt_env() or state.get("ckpt")
    if default and default not in [p for _, p in found]:
        found.append((None, default))
    found.sort(key=lambda rp: rp[1] != default)
    return [{**describe(path, recipe), "default": path == default} for recipe, path in found]
