"""Inside a container: apt/pip provisioning, the bundled engine, and a state record. Idempotent."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import docker
from docker.errors import NotFound

import mlc
from mlc import containers
from mlc.containers import Container
from mlc.errors import MlcError
from mlc.host import version_key
from mlc.invocation import engine_env
from mlc.progress import Progress
from mlc.recipes import Recipe

STATE = PurePosixPath("/etc/mlc/state.json")
ENGINE_ROOT = PurePosixPath("/opt/mlc/lib")
TORCH_2_0_PINS = (
    "diffusers==0.31.0",
    "transformers==4.46.3",
    "tokenizers==0.20.3",
    "huggingface-hub==0.26.5",
    "accelerate==1.1.1",
    "safetensors==0.4.5",
    "numpy<2",
    "scipy==1.13.1",
    "Pillow==10.4.0",
)
"""What the engine's packages are held to beside torch 2.0 (the seed's image, AIME's
``Pytorch 2.0.1-aime``; Python 3.8 to 3.11): the last releases that import and run with it
(newer transformers disable a torch older than 2.1 or 2.2; torch 2.0 wheels were built against
numpy 1.x). Newer torch gets no pins besides itself."""


# -- files in a container ----------------------------------------------------------------------


def read_file(c: Container, path: PurePosixPath) -> bytes | None:
    """The bytes of PATH inside C, or None when it does not exist."""
    try:
        stream, _ = c.get_archive(str(path))
    except NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        f = tar.extractfile(member)
        return f.read() if f else None


def write_files(
    c: Container, files: dict[str, bytes], *, root: str = "/", mode: int = 0o644
) -> None:
    """Write FILES (paths relative to ROOT) into C as root, creating folders."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for rel in files:
            parts = PurePosixPath(rel).parts[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(info)
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
    c.exec_run(["mkdir", "-p", root], user="root")
    if not c.put_archive(root, buf.getvalue()):
        raise MlcError(f"cannot write files into container {c.name}")


def load_state(c: Container) -> dict[str, Any]:
    raw = read_file(c, STATE)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def save_state(c: Container, state: dict[str, Any]) -> None:
    data = json.dumps(state, indent=2, sort_keys=True).encode()
    write_files(c, {STATE.name: data}, root=str(STATE.parent))


# -- provisioning ------------------------------------------------------------------------------


@dataclass
class Python:
    """The container's Python: its path, torch version and site-packages."""

    path: str
    torch: str | None
    site: str
    version: str = ""


@dataclass
class Provisioned:
    python: Python
    apt_installed: list[str] = field(default_factory=list)
    pip_installed: list[str] = field(default_factory=list)
    engine_copied: bool = False


def find_python(c: Container) -> Python:
    """The Python the image puts first on PATH (a venv or conda env counts)."""
    probe = (
        "import json, site, sys, sysconfig\n"
        "try:\n    import torch; tv = torch.__version__\nexcept Exception:\n    tv = None\n"
        # pip compares its own record: PyPI's torch 2.0.1 says 2.0.1+cu117 but is 2.0.1
        "try:\n    from importlib.metadata import version; tv = tv and version('torch')\n"
        "except Exception:\n    pass\n"
        "print(json.dumps({'path': sys.executable, 'torch': tv, 'version': '%d.%d' %"
        " sys.version_info[:2], 'site': sysconfig.get_paths()['purelib']}))\n"
    )
    for exe in ("python3", "python"):
        code, out = c.exec_run([exe, "-c", probe], user="root")
        if code == 0:
            return Python(**json.loads(out.decode().strip().splitlines()[-1]))
    raise MlcError(
        f"container {c.name} has no Python",
        hint="create it from a PyTorch image of the catalog (`mlc images`)",
    )


def check_engine_support(py: Python, name: str) -> None:
    """The engine needs Python >= 3.10 and torch >= 2.0 (in the image, never replaced)."""
    if version_key(py.version) < (3, 10) or (py.torch and version_key(py.torch) < (2, 0)):
        raise MlcError(
            f"the engine needs Python >= 3.10 and torch >= 2.0; container {name} has "
            f"Python {py.version}, torch {py.torch or 'none'}",
            hint="create the container from a newer image, e.g. Pytorch 2.5.1 (`mlc images`)",
        )


def constraints(torch: str | None) -> list[str]:
    """The pip constraints for a container whose torch is TORCH: torch itself (pip must never
    replace it), and for torch 2.0 the package versions that still support it."""
    if not torch:
        return []
    pins = list(TORCH_2_0_PINS) if version_key(torch)[:2] < (2, 1) else []
    return [f"torch=={torch}", *pins]


def _run(dc: docker.DockerClient, c: Container, cmd: list[str]) -> int:
    # PEP 668 images (Ubuntu 24.04, Debian 12 without a venv) refuse system-wide pip otherwise.
    env = {"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    return containers.exec_stream(dc, c, cmd, user="root", workdir="/", env=env)


def apt_install(
    dc: docker.DockerClient, c: Container, packages: list[str], progress: Progress
) -> None:
    progress.note(f"apt: installing {' '.join(packages)}")
    script = (
        "export DEBIAN_FRONTEND=noninteractive; "
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends " + " ".join(packages)
    )
    if _run(dc, c, ["sh", "-c", script]) != 0:
        code, out = c.exec_run(
            ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages], user="root"
        )
        lines = out.decode().splitlines()
        ok = {line.split()[0] for line in lines if "install ok installed" in line}
        missing = [p for p in packages if p not in ok] or packages
        raise MlcError(
            f"apt could not install {', '.join(missing)}",
            hint="the container is unchanged otherwise; check its network and retry",
        )


def pip_install(
    dc: docker.DockerClient, c: Container, py: Python, reqs: list[str], progress: Progress
) -> None:
    pins = constraints(py.torch)
    kept = f" (keeping torch {py.torch}" + (", with versions for it)" if pins[1:] else ")")
    progress.note(f"pip: installing {' '.join(reqs)}" + (kept if py.torch else ""))
    text = "".join(f"{pin}\n" for pin in pins)
    write_files(c, {"constraints.txt": text.encode()}, root="/etc/mlc")
    cmd = [
        py.path,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-input",
        "--disable-pip-version-check",
        "-c",
        "/etc/mlc/constraints.txt",
        *reqs,
    ]
    if _run(dc, c, cmd) != 0:
        raise MlcError(
            f"pip could not install {' '.join(reqs)}",
            hint="torch was kept; the container is usable; check its network and retry",
        )


def engine_files() -> dict[str, bytes]:
    """The mlc package as files (the engine is inside it), relative to ENGINE_ROOT."""
    root = Path(mlc.__file__).resolve().parent
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"mlc/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files


def install_engine(c: Container, py: Python, state: dict[str, Any]) -> bool:
    """Copy the bundled engine into C (no network, no git host); returns whether it changed."""
    files = engine_files()
    digest = hashlib.sha256()
    for rel, data in files.items():
        digest.update(rel.encode() + b"\0" + data)
    if (
        state.get("engine", {}).get("digest") == digest.hexdigest()
        and read_file(c, PurePosixPath(py.site) / "mlc-engine.pth") is not None
    ):
        return False
    c.exec_run(["rm", "-rf", str(ENGINE_ROOT / "mlc")], user="root")
    write_files(c, files, root=str(ENGINE_ROOT))
    write_files(c, {"mlc-engine.pth": f"{ENGINE_ROOT}\n".encode()}, root=py.site)
    launcher = f'#!/bin/sh\nexec {py.path} -m mlc.engine.txt2img "$@"\n'.encode()
    write_files(c, {"mlc-txt2img": launcher}, root="/usr/local/bin", mode=0o755)
    # worker: `mlc txt2img` may use the warm engine (mlc.engine.client) of this copy
    state["engine"] = {"digest": digest.hexdigest(), "version": mlc.__version__, "worker": 1}
    return True


def provision(
    dc: docker.DockerClient,
    c: Container,
    recipe: Recipe,
    progress: Progress,
    extra_pip: Sequence[str] = (),
) -> Provisioned:
    """Apt packages, pip requirements (RECIPE's, then EXTRA_PIP: ``mlc setup --serve``'s web
    packages) and the engine for RECIPE; a re-run skips what is done."""
    state = load_state(c)
    py = find_python(c)
    check_engine_support(py, c.name)
    done = Provisioned(py)
    apt_done = set(state.get("apt", []))
    if todo := [p for p in recipe.apt if p not in apt_done]:
        apt_install(dc, c, todo, progress)
        state["apt"] = sorted(apt_done | set(todo))
        done.apt_installed = todo
        save_state(c, state)
    pip_done = set(state.get("pip", []))
    wanted = list(dict.fromkeys([*recipe.pip, *extra_pip]))
    if todo := [r for r in wanted if r not in pip_done]:
        pip_install(dc, c, py, todo, progress)
        state["pip"] = sorted(pip_done | set(todo))
        done.pip_installed = todo
        save_state(c, state)
    state["python"] = py.path
    done.engine_copied = install_engine(c, py, state)
    save_state(c, state)
    return done


def record_model(c: Container, recipe: Recipe, ckpt_inside: str, models_inside: str) -> None:
    """Remember the installed model: `mlc txt2img` and the engine default to its checkpoint,
    and keep the engine's converted-weights cache beside the models (not in the container's
    own layer, where gigabytes would grow unseen and vanish with `mlc remove`)."""
    state = load_state(c)
    state.setdefault("models", {})[recipe.name] = ckpt_inside
    state["tiny_vae" if recipe.role == "tiny_vae" else "ckpt"] = ckpt_inside
    state["cache_dir"] = f"{models_inside.rstrip('/')}/.mlc-cache"
    save_state(c, state)
    write_files(c, {"mlc-engine.sh": profile(engine_env(state)).encode()}, root="/etc/profile.d")


def profile(env: dict[str, str]) -> str:
    """ENV as a login-shell profile (``/etc/profile.d``), each value quoted for sh: a models
    folder may hold ``'``, ``$`` or spaces."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
