"""`mlc list` and `mlc stop` on the quick path (the local engine's socket, no Docker SDK, no
Typer): the same output and exit codes as the full CLI (``MLC_FASTPATH=0``), against the real
Docker engine, and the full CLI whenever the quick path cannot be sure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlc.cli import quick
from mlc.containers import engineapi

pytestmark = pytest.mark.docker

FULL = {"MLC_FASTPATH": "0"}
HEAVY = {"docker", "typer", "click", "requests", "urllib3", "paramiko", "yaml"}


def _imports(mlc, *args: str) -> set[str]:
    """The top-level packages `python -m mlc ARGS` imports (the mlc fixture's environment)."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlc", *args],
        capture_output=True, text=True, timeout=120, env=mlc.env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in p.stderr.splitlines()
        if line.startswith("import time:")
    }


def _same(mlc, *args: str) -> object:
    """Run ARGS on the quick path and on the full CLI: the same exit code, stdout, stderr."""
    quick_run, full_run = mlc(*args, input=""), mlc(*args, input="", env=FULL)
    assert (quick_run.code, quick_run.out, quick_run.err) == (
        full_run.code,
        full_run.out,
        full_run.err,
    ), args
    return quick_run


def test_list_prints_what_the_full_cli_prints_without_the_sdk(mlc, name, tmp_path: Path):
    for n, suffix in enumerate(("-a", "-b")):
        r = mlc("create", name + suffix, "pytorch", "test", "-w", str(tmp_path / f"ws{n}"))
        assert r.code == 0, r.err
    assert mlc("start", name + "-a", "--no-prewarm").code == 0
    assert mlc("stop", name + "-b", "-f").code == 0

    for args in (["list"], ["list", "--json"], ["list", "-a"], ["list", "--json", "--all-users"]):
        r = _same(mlc, *args)
        assert r.code == 0
    rows = {row["name"]: row for row in json.loads(mlc("list", "--json").out)}
    assert rows[name + "-a"]["status"] == "running" and rows[name + "-b"]["status"] == "exited"
    assert f"[{name}-a]" in mlc("list").out

    assert _imports(mlc, "list") & HEAVY == set()
    assert {"docker", "typer"} <= _imports(mlc, "list", "--no-such-flag")  # the full CLI


def test_stop_says_and_does_what_the_full_cli_does(mlc, name, tmp_path: Path, docker_client):
    r = mlc("create", name, "pytorch", "test", "-w", str(tmp_path / "ws"))
    assert r.code == 0, r.err
    docker_name = f"{name}._.{os.getuid()}"
    refused = _same(mlc, "stop", name)  # stdin is not a terminal: not confirmed, still running
    assert refused.code != 0 and "-f" in refused.err
    assert docker_client.containers.get(docker_name).status == "running"

    assert _imports(mlc, "stop", f"{name}-none", "-f") & HEAVY == set()
    r = mlc("stop", "--force", name)
    assert (r.code, r.out.strip()) == (0, f"[{name}] stopped"), r.err
    assert docker_client.containers.get(docker_name).status == "exited"
    # not running, no such container (with and without -f): the same lines and codes
    for args in ([name], [name, "-f"], [f"{name}-none", "-f"], [f"{name}-none"]):
        _same(mlc, "stop", *args)
    assert mlc("stop", name, "-f").err.strip() == f"[{name}] is not running"


def test_another_users_container_is_refused_as_by_the_full_cli(mlc, name, user_dir, test_user):
    ws = user_dir / "ws"
    r = mlc.as_user(test_user.pw_name, "create", name, "pytorch", "test", "-w", str(ws))
    assert r.code == 0, r.err
    quick_run, full_run = mlc("stop", name, "-f"), mlc("stop", name, "-f", env=FULL)
    assert (quick_run.code, quick_run.err) == (full_run.code, full_run.err)
    assert quick_run.code != 0 and "belongs to" in quick_run.err
    assert name not in mlc("list").out
    assert name in _same(mlc, "list", "-a").out


def test_an_unreachable_engine_goes_to_the_full_cli(mlc, tmp_path: Path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    r = mlc("list", env=env)
    assert r.code != 0 and "Traceback" not in r.err
    assert r.err.startswith("mlc: error: cannot reach the Docker engine"), r.err


def test_quick_path_declines_what_it_does_not_handle(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    assert quick.dispatch(["list"]) is None  # no engine there: the full CLI says so
    monkeypatch.setenv("DOCKER_HOST", "ssh://someone@gpu1")
    assert quick.dispatch(["list"]) is None  # a remote engine: always the SDK
    assert engineapi.socket_path({"DOCKER_HOST": "tcp://1.2.3.4:2375"}) is None
    assert engineapi.socket_path({}) == engineapi.DEFAULT_SOCKET
    assert engineapi.socket_path({"DOCKER_HOST": "unix:///x/d.sock"}) == "/x/d.sock"
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("MLC_FASTPATH", "0")
    assert quick.dispatch(["list"]) is None
    monkeypatch.delenv("MLC_FASTPATH")
    with engineapi.Engine(engineapi.DEFAULT_SOCKET) as engine:
        assert quick.list_(engine, ["--bogus"]) is None
        assert quick.stop(engine, []) is None
        assert quick.stop(engine, ["a", "b"]) is None
        assert quick.stop(engine, ["--what", "-f"]) is None
