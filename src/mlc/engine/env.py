"""The engine's environment: every ``MLC_*`` variable it reads, and only here (with
``mlc.engine.options``, which re-exports these for the flags' defaults).

Each value is read at call time, not at import, so a test or the warm worker (which applies
each request's ``REQUEST_ENV`` before running it) changes it for the next call. Nothing here
imports torch or argparse: the worker's light client uses this module alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mlc.engine import UsageError
from mlc.engine.spec import DEFAULT_CKPT, Limits

REQUEST_ENV = ("MLC_CKPT", "MLC_TINY_VAE", "MLC_MAX_PIXELS", "MLC_MAX_STEPS", "MLC_MAX_IMAGES")
"""The variables a warm-worker request carries from its client (the rest is the worker's)."""

CACHE_MIN_BYTES = 256 * 2**20  # smaller checkpoints load fast anyway: not worth the disk


def default_ckpt() -> str:
    """``$MLC_CKPT`` (which `mlc setup` sets), else the classic checkpoint path."""
    return ckpt_env() or DEFAULT_CKPT


def ckpt_env() -> str | None:
    """``$MLC_CKPT`` as set, or None when it is unset or empty."""
    return os.environ.get("MLC_CKPT") or None


def tiny_vae_default() -> Path | None:
    """The tiny VAE named by ``$MLC_TINY_VAE`` (set where `mlc setup` installed it), else None.

    The path is returned as given, without checking it exists: ``load_tiny_vae`` then says
    clearly what is wrong with it.
    """
    value = os.environ.get("MLC_TINY_VAE", "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path | None:
    """``$MLC_CACHE_DIR`` (``off`` disables), else ``~/.cache/mlc/converted``."""
    env = os.environ.get("MLC_CACHE_DIR", "")
    if env.lower() in ("0", "off", "no", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlc" / "converted"


def lean_imports() -> bool:
    """``$MLC_LEAN_IMPORTS`` (default on; ``0``/``off``/``no``: off): import the model classes
    with the smallest import graph (``mlc.engine.modelimports``)."""
    return os.environ.get("MLC_LEAN_IMPORTS", "1").strip().lower() not in ("0", "off", "no")


def native_models() -> bool:
    """``$MLC_NATIVE_MODELS`` (default on; ``0``/``off``/``no``: off): build the engine's own
    SD v1 models (``mlc.engine.nets``) from the converted cache instead of diffusers' and
    transformers' classes."""
    return os.environ.get("MLC_NATIVE_MODELS", "1").strip().lower() not in ("0", "off", "no")


def cache_min_bytes() -> int:
    """``$MLC_CACHE_MIN_BYTES``: the smallest checkpoint worth a converted-cache entry."""
    try:
        return int(os.environ.get("MLC_CACHE_MIN_BYTES", CACHE_MIN_BYTES))
    except ValueError:
        return CACHE_MIN_BYTES


def bench_dir() -> Path:
    """``$MLC_BENCH_DIR``, else ``~/.cache/mlc/bench`` (the full-size random checkpoint)."""
    env = os.environ.get("MLC_BENCH_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlc" / "bench"


LIMIT_ENV = {"pixels": "MLC_MAX_PIXELS", "steps": "MLC_MAX_STEPS", "images": "MLC_MAX_IMAGES"}
NO_LIMIT = ("0", "off", "none", "no")


def limit_default(what: str) -> int | None:
    """``$MLC_MAX_PIXELS`` / ``$MLC_MAX_STEPS`` / ``$MLC_MAX_IMAGES`` (``0`` or ``off``: no
    limit), else the built-in limit (``spec.Limits``); UsageError when not a whole number."""
    name = LIMIT_ENV[what]
    raw = os.environ.get(name, "").strip()
    if not raw:
        return getattr(Limits(), what)
    if raw.lower() in NO_LIMIT:
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 1:
        raise UsageError(f"{name} must be a whole number (or 0 or off: no limit), not {raw!r}")
    return value


def worker_dir() -> Path:
    """``$MLC_WORKER_DIR``, else ``/tmp/mlc-<uid>`` (the warm worker's private folder)."""
    return Path(os.environ.get("MLC_WORKER_DIR") or f"/tmp/mlc-{os.getuid()}")


def with_worker_dir(environ: Mapping[str, str], path: Path) -> dict[str, str]:
    """ENVIRON with ``$MLC_WORKER_DIR`` set to PATH (the benchmark's own worker)."""
    return {**environ, "MLC_WORKER_DIR": str(path)}


def worker_idle() -> str | None:
    """``$MLC_WORKER_IDLE`` as given (seconds), or None when unset or empty."""
    return os.environ.get("MLC_WORKER_IDLE") or None


def request_tag() -> str | None:
    """``$MLC_REQUEST_TAG``: the tag a client's request can be cancelled by."""
    return os.environ.get("MLC_REQUEST_TAG")


def request_env() -> dict[str, str]:
    """The REQUEST_ENV variables set in this process (what a client sends its worker)."""
    return {k: os.environ[k] for k in REQUEST_ENV if k in os.environ}


def apply_request_env(env: Mapping[str, str]) -> None:
    """Make REQUEST_ENV exactly a request's ENV (the worker, before running it)."""
    for key in REQUEST_ENV:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


EXEC_ENV = ("MLC_EXEC", "MLC_REQUEST_TAG")
"""What marks the process tree of one ``docker exec`` (the host's tag, which it kills on an
interrupt; the request's cancel tag): never a worker's, which outlives the exec that started it."""


def worker_environ() -> dict[str, str]:
    """This process's environment less ``EXEC_ENV``: what a client starts its worker with.
    Relative ``PYTHONPATH`` entries are made absolute: the worker runs in its own folder, and
    there they would name other code (whose fingerprint differs: a new worker every call)."""
    env = {k: v for k, v in os.environ.items() if k not in EXEC_ENV}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p or os.curdir) for p in env["PYTHONPATH"].split(os.pathsep)
        )
    return env
