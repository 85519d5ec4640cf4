"""`mlc txt2img` through the fast path (mlc.fastpath) to a real engine worker, with no Docker at
all: the host folder and route file laid out as `mlc create` and `mlc start` leave them, the
worker pre-warmed as the detached exec starts it. DOCKER_HOST points nowhere, so a call that
succeeds took the fast path and one that falls back says it cannot reach Docker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from mlc import fastpath, warmpath
from mlc.engine import env as engine_env
from mlc.engine import protocol

from .conftest import SIZE, STEPS, TinyModel

NAME = "box"
FLAGS = ("--H", str(SIZE), "--W", str(SIZE), "--ddim_steps", str(STEPS), "--n_samples", "1",
         "--n_iter", "1", "--skip_grid")  # fmt: skip
NEVER = ("docker", "typer", "rich", "requests", "click", "torch")
UNREACHABLE = "cannot reach the Docker engine"


class Box:
    """A worker folder at the fast path's host path, its route, and the worker in it."""

    def __init__(self, root: Path, tiny: TinyModel) -> None:
        self.root, self.tiny = root, tiny
        self.state = root / "s"
        self.dir = warmpath.make_host_dir(self.state / "mlc" / "workers" / NAME)
        self.ws = root / "ws"
        self.ws.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root),
            "XDG_STATE_HOME": str(self.state),
            "DOCKER_HOST": "unix:///nonexistent/docker.sock",
            "DOCKER_CONFIG": str(self.root / "docker-config"),
            "MLC_WORKER_DIR": str(self.dir),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **extra,
        }

    def route(self) -> None:
        inside = PurePosixPath(str(self.ws))  # the "container" sees the workspace where it is
        warmpath.write_route(
            self.dir,
            container_id="c0",
            state={"engine": {"worker": 1}, "ckpt": str(self.tiny.safetensors)},
            mounts=[(self.ws, inside)],
            container_env=["MLC_MAX_STEPS=50", "PATH=/usr/bin"],
            workdir=str(self.ws),
        )

    def warm(self) -> int:
        """Start the worker and have it load the model (what `mlc start` runs in the box)."""
        p = subprocess.run(
            [sys.executable, "-m", "mlc.engine.client", "--warm", "--ckpt",
             str(self.tiny.safetensors)],
            capture_output=True, text=True, env=self.env(), cwd=self.ws, timeout=300,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 300
        while (found := warmpath.status(self.dir)) is None or found["state"] != "ready":
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        return int(found["pid"])

    def mlc(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlc", *args], capture_output=True, text=True,
            env=self.env(**env), cwd=self.root, timeout=300,
        )  # fmt: skip

    def stop(self) -> None:
        if (found := warmpath.status(self.dir)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(found["pid"]), signal.SIGKILL)


@pytest.fixture
def box(tiny: TinyModel, tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path, tiny)
    yield b
    b.stop()


def _imported(stderr: str) -> set[str]:
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def test_the_wire_names_agree_with_the_engine():
    """warmpath keeps the engine out of every `mlc` start (stdlib only): its copies agree."""
    assert warmpath.SOCKET == protocol.SOCKET and warmpath.STATUS == protocol.STATUS
    assert warmpath.REQUEST_ENV == engine_env.REQUEST_ENV


def test_a_warm_call_takes_the_socket_and_imports_no_docker(box: Box):
    pid = box.warm()
    box.route()
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlc", "txt2img", NAME, *FLAGS, "--json",
         "--outdir", str(box.ws / "out")],
        capture_output=True, text=True, env=box.env(), cwd=box.root, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["worker"]["pid"] == pid and summary["timings"]["load_s"] == 0
    assert [Path(f).name for f in summary["files"]] == ["00000.png"]
    assert Path(summary["files"][0]).parent == box.ws / "out" / "samples"
    assert _imported(p.stderr) & set(NEVER) == set()
    assert "mlc" in _imported(p.stderr)  # the check sees what is imported

    # The request environment is the container's (a step limit set at create) and the
    # engine's one-line errors and exit codes are the worker's, as in the slow path.
    r = box.mlc("txt2img", NAME, *FLAGS[:4], "--ddim_steps", "80")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("mlc-txt2img: error: ") and "50" in r.stderr
    r = box.mlc("txt2img", NAME, "--H", "63", "--n_samples", "1")
    assert (r.returncode, r.stderr) == (
        2,
        "mlc-txt2img: error: --H 63 is not a multiple of 8; use 56 or 64\n",
    )
    # A file that is not in a mount: the fast path leaves it to the slow path, which says so
    # (here: that Docker cannot be reached, since it is asked first).
    outside = box.root / "prompts.txt"
    outside.write_text("x\n")
    r = box.mlc("txt2img", NAME, *FLAGS, "--from-file", str(outside))
    assert r.returncode != 0 and UNREACHABLE in r.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--no-worker"], {}),
        (["--stop-worker"], {}),
        (["--help"], {}),
        (["--gpus", "all"], {}),  # sharded runs go one-shot (mlc.scaleout)
        (["--devices=cpu,cpu"], {}),
        (["--resume"], {}),
        (["--ray", "local"], {}),
        ([], {"MLC_FASTPATH": "0"}),
        ([], {"MLC_WORKER_IDLE": "30"}),
        ([], {"DOCKER_CONTEXT": "elsewhere"}),
        ([], {"DOCKER_HOST": "ssh://someone@elsewhere"}),
    ],
)
def test_what_the_fast_path_leaves_to_the_full_cli(box: Box, args, env):
    box.route()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket nobody may try
    listening.bind(str(box.dir / protocol.SOCKET))
    listening.listen(4)
    listening.setblocking(False)
    try:
        r = box.mlc("txt2img", NAME, *FLAGS, *args, **env)
        with pytest.raises(BlockingIOError):  # no connection was made to it
            listening.accept()
    finally:
        listening.close()
    if "--help" in args:
        assert r.returncode == 0 and "The engine's flags" in r.stdout
    else:
        assert r.returncode != 0 and ("Docker" in r.stderr or "docker" in r.stderr), r.stderr


def test_no_route_a_dead_worker_or_a_folder_not_private_falls_back(box: Box):
    r = box.mlc("txt2img", NAME, *FLAGS)  # no route yet
    assert r.returncode != 0 and UNREACHABLE in r.stderr
    pid = box.warm()
    box.route()
    assert box.mlc("txt2img", NAME, *FLAGS).returncode == 0
    os.chmod(box.dir, 0o750)  # not private: not used (and not trusted)
    r = box.mlc("txt2img", NAME, *FLAGS)
    assert r.returncode != 0 and UNREACHABLE in r.stderr
    os.chmod(box.dir, 0o700)
    os.kill(pid, signal.SIGKILL)  # its socket file stays: refused, then the slow path
    deadline = time.monotonic() + 60
    while warmpath.status(box.dir) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (box.dir / protocol.SOCKET).exists()
    r = box.mlc("txt2img", NAME, *FLAGS)
    assert r.returncode != 0 and UNREACHABLE in r.stderr and "[1/" not in r.stderr


def test_a_signal_cancels_the_request_and_the_worker_stays(box: Box):
    pid = box.warm()
    box.route()
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlc", "txt2img", NAME, *FLAGS[:-3], "--n_iter", "300",
             "--skip_grid", "--outdir", f"cut-{sig.name}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=box.env(),
            cwd=box.root,
        )  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("[2/"):
                proc.send_signal(sig)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=120)
        name = "SIGTERM" if sig == signal.SIGTERM else None
        want = f"mlc: interrupted ({name})\n" if name else "mlc: interrupted\n"
        assert (proc.returncode, rest) == (128 + sig, want)
        r = box.mlc("txt2img", NAME, *FLAGS, "--json")
        assert r.returncode == 0 and "ahead" not in r.stderr, r.stderr
        assert json.loads(r.stdout)["worker"]["pid"] == pid
        kept = list((box.ws / f"cut-{sig.name}" / "samples").iterdir())
        assert 1 <= len(kept) < 300


def test_fastpath_enabled_reads_only_the_environment_and_the_docker_config(tmp_path: Path):
    config = tmp_path / "config.json"
    base = {"DOCKER_CONFIG": str(tmp_path)}
    assert fastpath.enabled(base)
    config.write_text(json.dumps({"currentContext": "remote"}))
    assert not fastpath.enabled(base)
    config.write_text(json.dumps({"currentContext": "default"}))
    assert fastpath.enabled(base)
    assert fastpath.enabled({**base, "DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert not fastpath.enabled({**base, "DOCKER_HOST": "tcp://gpu1:2376"})
    assert not fastpath.enabled({**base, "MLC_FASTPATH": "0"})


def test_a_name_mlc_would_refuse_never_becomes_a_path(box: Box, monkeypatch):
    box.route()
    monkeypatch.setenv("XDG_STATE_HOME", str(box.state))
    monkeypatch.setenv("DOCKER_CONFIG", str(box.root))
    for name in (f"../workers/{NAME}", f"{NAME}/", f"{NAME}._.0", ""):
        assert fastpath.txt2img([name, *FLAGS]) is None
