"""Shared fixtures: the real Docker engine, a local test catalog, `mlc` as a real process."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest

# A suite started from a background job or nohup inherits SIGINT *ignored*, and so would every
# process it starts: the Ctrl-C tests could not deliver their SIGINT. A Python handler here
# is reset to the default in children, which then handle SIGINT as they would in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
BASE_IMAGE = os.environ.get("MLC_TEST_BASE_IMAGE", "mlctest/py311:bookworm-r1")
TORCH_IMAGE = os.environ.get("MLC_TEST_TORCH_IMAGE", "mlctest/torch-cpu:2.13.0-r1")
TEST_USER = os.environ.get("MLC_TEST_USER", "mlctester")
TEST_USER_PYTHON = os.environ.get("MLC_TEST_USER_PYTHON", f"/home/{TEST_USER}/venv/bin/python")
PREFIX = "mlct-"


def _missing(what: str) -> None:
    """In CI a missing prerequisite fails the test; on a laptop it skips it."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: Docker tests must run)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        _missing(f"no Docker engine answers: {exc}")
    return client


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    import docker.errors

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"test image {BASE_IMAGE} is missing: run images/local/build.sh")
    return BASE_IMAGE


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """A folder every local user can read: the test catalog and a copy of the source."""
    d = Path(tempfile.mkdtemp(prefix="mlc-tests-"))
    d.chmod(0o755)
    shutil.copytree(SRC / "mlc", d / "src" / "mlc", ignore=shutil.ignore_patterns("__pycache__"))
    for p in d.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def catalog_file(shared_dir: Path, base_image: str) -> Path:
    path = shared_dir / "catalog.yaml"
    path.write_text(
        "images:\n"
        f"  - {{framework: Pytorch, version: test, arch: [CPU], image: '{base_image}'}}\n"
        "  - {framework: Pytorch, version: nopull, arch: [CPU], image: 'mlctest/absent:1'}\n"
    )
    path.chmod(0o644)
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Mlc:
    """Runs the real `mlc` CLI in a subprocess, as root or as the test user."""

    env: dict[str, str]
    home: Path
    shared: Path

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Result:
        p = subprocess.run(
            [sys.executable, "-m", "mlc", *args],
            capture_output=True,
            text=True,
            input=input,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def as_user(
        self, user: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> Result:
        entry = pwd.getpwnam(user)
        extra = {
            "HOME": entry.pw_dir,
            "USER": user,
            "PYTHONPATH": str(self.shared / "src"),
            "MLC_CATALOG": self.env["MLC_CATALOG"],
            "PATH": os.environ["PATH"],
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        }
        envs = [f"{k}={v}" for k, v in extra.items()]
        cmd = [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            *envs,
            TEST_USER_PYTHON,
            "-m",
            "mlc",
            *args,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def mlc(tmp_path: Path, catalog_file: Path, shared_dir: Path, docker_client) -> Iterator[Mlc]:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "MLC_CATALOG": str(catalog_file),
        "PYTHONPATH": str(SRC),
        "COLUMNS": "200",
    }
    env.pop("MLC_ARCH", None)
    yield Mlc(env, home, shared_dir)


@pytest.fixture
def name(docker_client) -> Iterator[str]:
    """A fresh container name; every container whose name contains it is removed afterwards."""
    value = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    yield value
    # sparse: no inspect per container, so one that another test removes meanwhile is no error
    for c in docker_client.containers.list(all=True, sparse=True, filters={"label": "aime.mlc"}):
        if value in (c.attrs.get("Labels") or {}).get("aime.mlc.NAME", ""):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


@pytest.fixture(scope="session")
def test_user() -> pwd.struct_passwd:
    if os.getuid() != 0:
        _missing("user-mapping tests run as root (they switch to the test user)")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        _missing(f"test user {TEST_USER} is missing: run tests/support/testuser.sh")
    if not os.access(TEST_USER_PYTHON, os.X_OK):
        _missing(f"{TEST_USER_PYTHON} is missing: run tests/support/testuser.sh")
    return entry


@pytest.fixture
def user_dir(test_user) -> Iterator[Path]:
    """A folder owned by the test user (tmp_path is not reachable for other users)."""
    d = Path(tempfile.mkdtemp(prefix="mlc-user-", dir="/tmp"))
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def torch_catalog(docker_client, shared_dir: Path) -> Path:
    """A catalog with the CPU torch test image as `Pytorch 2.13.0-cpu`."""
    import docker.errors

    try:
        docker_client.images.get(TORCH_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"test image {TORCH_IMAGE} is missing: run images/local/build.sh")
    path = shared_dir / "torch-catalog.yaml"
    path.write_text(
        "images: [{framework: Pytorch, version: 2.13.0-cpu, arch: [CPU], "
        f"image: '{TORCH_IMAGE}'}}]\n"
    )
    path.chmod(0o644)
    return path
