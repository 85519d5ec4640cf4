"""Through Docker: the engine worker pre-warmed when a container starts, and `mlc txt2img`
straight to its socket (the fast path), with every fallback; never a timing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

FLAGS = ("--H", "64", "--W", "64", "--ddim_steps", "2", "--n_samples", "1", "--n_iter", "1",
         "--skip_grid", "--json")  # fmt: skip
TEST_USER_PYTHON = os.environ.get("MLC_TEST_USER_PYTHON", "/home/mlctester/venv/bin/python")
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
"""The slow path cannot reach Docker with this: a call that succeeds took the fast path."""


def _worker(mlc, name: str, env: dict[str, str]) -> dict | None:
    r = mlc("list", "--json", env=env)
    assert r.code == 0, r.err
    return next(row for row in json.loads(r.out) if row["name"] == name)["worker"]


def _until(mlc, name: str, env: dict[str, str], state: str) -> dict:
    """The worker's status once it says STATE (asked, never timed; a generous bound only)."""
    deadline = time.monotonic() + 300
    while True:
        found = _worker(mlc, name, env)
        if found and found["state"] == state:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def _host_dir(mlc, name: str) -> Path:
    return mlc.home / ".local" / "state" / "mlc" / "workers" / name


def test_prewarm_and_the_fast_path(mlc, name, tmp_path, torch_catalog, docker_client):
    env = {"MLC_CATALOG": str(torch_catalog)}
    ws = tmp_path / "ws"
    r = mlc("create", name, "Pytorch", "2.13.0-cpu", "-w", str(ws), "-m", str(tmp_path / "m"),
            env=env)  # fmt: skip
    assert r.code == 0, r.err
    d = _host_dir(mlc, name)
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    assert c.labels["mlc.worker"] == str(d) and "mlc.prewarm" not in c.labels

    # The end of setup pre-warms: the worker says it holds the model before any call.
    r = mlc("setup", name, "demo", env=env, timeout=600)
    assert r.code == 0, r.err
    assert f"[{name}] engine worker: loading demo.ckpt in the background" in r.err
    ready = _until(mlc, name, env, "ready")
    assert ready["model"].endswith("/demo.ckpt") and ready["served"] == 0
    r = mlc("stats", "--json", env=env)
    assert r.code == 0, r.err
    row = next(s for s in json.loads(r.out) if s["name"] == name)
    assert row["worker"]["state"] == "ready" and row["worker"]["pid"] == ready["pid"]
    assert f"ready {Path(ready['model']).stem}" in mlc("list", env={**env, "COLUMNS": "250"}).out

    # The first call finds it loaded, through the socket alone (Docker unreachable).
    r = mlc("txt2img", name, *FLAGS, "--seed", "3", env={**env, **NO_DOCKER}, timeout=600)
    assert r.code == 0, r.err
    fast = json.loads(r.out)
    assert fast["timings"]["load_s"] == 0 and fast["worker"]["pid"] == ready["pid"]
    assert (ws / "outputs" / "txt2img-samples" / "samples" / "00000.png").is_file()
    # ... and says what the slow path says, on the same worker.
    slow = mlc("txt2img", name, *FLAGS, "--seed", "3", env={**env, "MLC_FASTPATH": "0"},
               timeout=600)  # fmt: skip
    assert slow.code == 0, slow.err
    slow_summary = json.loads(slow.out)
    assert slow_summary["worker"]["pid"] == ready["pid"]
    assert slow_summary["images"][0]["seed"] == fast["images"][0]["seed"] == 3
    fast_err, slow_err = r.err.splitlines(), slow.err.splitlines()
    assert len(fast_err) == len(slow_err) == 2 and fast_err[0] == slow_err[0]
    assert fast_err[1].startswith("[1/1] seed 3 ") and slow_err[1].startswith("[1/1] seed 3 ")
    for extra in ([], ["MLC_FASTPATH=0"]):
        e = {**env, **dict(x.split("=") for x in extra), **({} if extra else NO_DOCKER)}
        bad = mlc("txt2img", name, "--H", "63", "--n_samples", "1", env=e)
        assert (bad.code, bad.err) == (2, "mlc-txt2img: error: --H 63 is not a multiple of 8; "
                                          "use 56 or 64\n")  # fmt: skip
    # A host path is translated as the slow path does.
    prompts = ws / "prompts.txt"
    prompts.write_text("a red cube\n")
    r = mlc("txt2img", name, *FLAGS, "--from-file", str(prompts), "--outdir", str(ws / "host"),
            env={**env, **NO_DOCKER}, timeout=600)  # fmt: skip
    assert r.code == 0, r.err
    assert [p.name for p in (ws / "host" / "samples").iterdir()] == ["00000.png"]

    # A killed worker: the stale socket is not used, the slow path starts a new one.
    c.exec_run(["kill", "-9", str(ready["pid"])])
    while _worker(mlc, name, env) is not None:
        time.sleep(0.2)
    r = mlc("txt2img", name, *FLAGS, env=env, timeout=600)
    assert r.code == 0, r.err
    again = json.loads(r.out)
    assert again["worker"]["pid"] != ready["pid"] and again["timings"]["load_s"] > 0
    # Without Docker and without a worker: the fast path falls back, the slow path says why.
    c.exec_run(["kill", "-9", str(again["worker"]["pid"])])
    while _worker(mlc, name, env) is not None:
        time.sleep(0.2)
    r = mlc("txt2img", name, *FLAGS, env={**env, **NO_DOCKER}, timeout=120)
    assert r.code != 0 and "cannot reach the Docker engine" in r.err

    # A call that arrives while the pre-warm still loads waits for it: one load in all.
    assert mlc("stop", name, "-f", env=env).code == 0
    log = d / "worker.log"
    log.unlink(missing_ok=True)
    r = mlc("start", name, env=env)
    assert r.code == 0 and "loading demo.ckpt in the background" in r.err, r.err
    r = mlc("txt2img", name, *FLAGS, "--seed", "5", env=env, timeout=600)
    assert r.code == 0, r.err
    waited = json.loads(r.out)
    assert [Path(f).name for f in waited["files"]] == ["00003.png"]
    assert log.read_text().count("] loaded ") == 1
    assert _worker(mlc, name, env)["pid"] == waited["worker"]["pid"]

    # Opt-outs: per call (flag, environment); the worker of a stopped container is gone.
    for args, extra in ((["--no-prewarm"], {}), ([], {"MLC_PREWARM": "0"})):
        assert mlc("stop", name, "-f", env=env).code == 0
        r = mlc("start", name, *args, env={**env, **extra})
        assert r.code == 0 and "engine worker" not in r.err, r.err
        assert _worker(mlc, name, env) is None
    r = mlc("open", "--no-prewarm", name, "--", "true", env=env)
    assert r.code == 0 and "engine worker" not in r.err


def test_no_prewarm_container_and_another_user(
    mlc, name, tmp_path, torch_catalog, docker_client, test_user
):
    """`mlc create --no-prewarm` sticks; another user can neither reach the socket nor send
    the fast path to it."""
    env = {"MLC_CATALOG": str(torch_catalog)}
    ws = tmp_path / "ws"
    r = mlc("create", name, "Pytorch", "2.13.0-cpu", "-w", str(ws), "-m", str(tmp_path / "m"),
            "--no-prewarm", env=env)  # fmt: skip
    assert r.code == 0, r.err
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    assert c.labels["mlc.prewarm"] == "off"
    r = mlc("setup", name, "demo", env=env, timeout=600)
    assert r.code == 0 and "engine worker" not in r.err, r.err
    r = mlc("start", name, env=env)
    assert r.code == 0 and "engine worker" not in r.err, r.err
    assert _worker(mlc, name, env) is None
    r = mlc("txt2img", name, *FLAGS, env=env, timeout=600)  # starts the worker on first use
    assert r.code == 0, r.err
    assert _worker(mlc, name, env)["state"] == "ready"

    # `mlc prewarm`: now by name, and the setting changed after create, both ways
    r = mlc("prewarm", name, env=env)
    assert r.code == 0 and "ready demo (nothing to load)" in r.out, r.err
    assert mlc("prewarm", name, "--on", "--off", env=env).code == 2
    for setting, loads in (("--on", True), ("--off", False)):
        r = mlc("prewarm", name, setting, env=env)
        assert r.code == 0 and f"pre-warm {setting[2:]}" in r.out, r.err
        assert mlc("stop", name, "-f", env=env).code == 0
        r = mlc("start", name, env=env)
        assert r.code == 0 and ("engine worker: loading demo.ckpt" in r.err) is loads, r.err
    r = mlc("prewarm", name, env=env)  # asked by name: whatever the setting
    assert r.code == 0 and "loading demo.ckpt in the background" in r.out, r.err
    _until(mlc, name, env, "ready")

    # The socket sits in a 0700 folder of the owner's: another user gets EACCES.
    sock = _host_dir(mlc, name) / "engine.sock"
    assert sock.exists()
    os.chmod(mlc.home, 0o755)  # only the worker folder itself keeps others out
    for parent in list(mlc.home.parents)[:-2]:
        if parent.stat().st_uid == os.getuid():
            os.chmod(parent, parent.stat().st_mode | 0o005)
    probe = (  # a socket path is short: reach it from its folder's parent (if one may)
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    os.chdir(os.path.dirname(os.path.dirname(sys.argv[1])))\n"
        "    s.connect(os.path.relpath(sys.argv[1]))\n"
        "except PermissionError:\n    print('EACCES')\n"
        "else:\n    print('CONNECTED')\n"
    )
    p = subprocess.run(["runuser", "-u", test_user.pw_name, "--", TEST_USER_PYTHON, "-c", probe,
                        str(sock)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.stdout.strip() == "EACCES", p.stderr
    # The other user's `mlc txt2img NAME` looks in their own folder only: the slow path
    # refuses the owner's container.
    r = mlc.as_user(test_user.pw_name, "txt2img", name, *FLAGS, env={"XDG_STATE_HOME": ""})
    assert r.code != 0 and "belongs to" in r.err, r.err
    # Even pointed at the owner's folder, the fast path does not use a folder not its own.
    r = mlc.as_user(test_user.pw_name, "txt2img", name, *FLAGS,
                    env={"XDG_STATE_HOME": str(mlc.home / ".local" / "state")})  # fmt: skip
    assert r.code != 0 and "belongs to" in r.err and "seed" not in r.out, r.err
