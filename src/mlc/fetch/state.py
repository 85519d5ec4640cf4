"""The state file of a models directory (``.mlc-state.json``): what is installed, with the
size, mtime and sha256 of every file, so a re-run can skip what is present and verified.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlc.errors import MlcError
from mlc.fetch.files import sha256_file
from mlc.progress import Progress
from mlc.recipes import Recipe

STATE_FILE = ".mlc-state.json"


def state_path(models_dir: str | os.PathLike[str]) -> Path:
    """The state file recording what is installed in ``models_dir``."""
    return Path(models_dir) / STATE_FILE


def read_state(models_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file's content (``{"version": 1, "models": {...}}``); empty if absent."""
    path = state_path(models_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "models": {}}
    except (OSError, ValueError) as exc:
        raise MlcError(
            f"cannot read {path}: {exc}", hint="fix or delete it; it only records checksums"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise MlcError(f"{path} is not an mlc state file", hint="fix or delete it")
    return data


def _write_state(models_dir: Path, state: dict[str, Any]) -> None:
    path = state_path(models_dir)
    fd, tmp = tempfile.mkstemp(prefix=STATE_FILE + ".", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def installed_record(recipe: Recipe, models_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state record of ``recipe`` in ``models_dir``, if any."""
    record = read_state(models_dir)["models"].get(recipe.name)
    return record if isinstance(record, dict) else None


def is_installed(
    recipe: Recipe, models_dir: str | os.PathLike[str], progress: Progress | None = None
) -> bool:
    """True when the recipe's files exist and match the recorded sizes and checksums.

    Files whose size and mtime match the record are trusted; others are re-hashed.
    """
    models_dir = Path(models_dir)
    record = installed_record(recipe, models_dir)
    if record is None:
        return False
    if recipe.sha256 and record.get("sha256") not in (None, recipe.sha256):
        return False  # the recipe now names different weights
    recorded = record.get("files") or {}
    for rel in recipe.files:
        entry = recorded.get(rel)
        path = models_dir / rel
        if not isinstance(entry, dict) or not path.is_file():
            return False
        st = path.stat()
        if st.st_size != entry.get("size"):
            return False
        if st.st_mtime_ns == entry.get("mtime_ns"):
            continue
        if sha256_file(path, progress, f"Verifying {path.name}") != entry.get("sha256"):
            return False
    return True


def record_install(
    recipe: Recipe,
    models_dir: Path,
    source: str,
    origin: str,
    sha256: str,
    hashes: dict[str, str],
) -> None:
    """Write the recipe's entry in the state file (files: size, mtime_ns, sha256)."""
    state = read_state(models_dir)
    files: dict[str, Any] = {}
    for rel, digest in sorted(hashes.items()):
        path = models_dir / rel
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    state["version"] = 1
    state["models"][recipe.name] = {
        "source": source,
        "url": origin,
        "sha256": sha256,
        "ckpt": recipe.ckpt,
        "files": files,
        "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_state(models_dir, state)
