"""Container lifecycle end to end: the real `mlc` CLI against the real Docker engine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.docker


def _create(mlc, name: str, ws: Path, *extra: str):
    r = mlc("create", name, "pytorch", "test", "-w", str(ws), *extra)
    assert r.code == 0, r.err
    return r


def _one_line_error(r, *needles: str) -> None:
    assert r.code != 0
    assert "Traceback" not in r.err
    lines = [line for line in r.err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mlc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.err  # progress may come before it
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_create_list_open_stop_remove(mlc, name, tmp_path, docker_client):
    ws = tmp_path / "ws"
    r = _create(mlc, name, ws)
    assert f"[{name}] ready" in r.out
    assert ws.is_dir()  # created when missing
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    labels = c.labels
    for key in (
        "aime.mlc",
        "aime.mlc.NAME",
        "aime.mlc.USER",
        "aime.mlc.FRAMEWORK",
        "aime.mlc.GPUS",
        "aime.mlc.ARCH",
        "aime.mlc.WORK_MOUNT",
        "aime.mlc.DATA_MOUNT",
        "aime.mlc.MODELS_MOUNT",
        "mlc.schema",
    ):
        assert key in labels, key
    assert labels["aime.mlc.NAME"] == name and labels["aime.mlc.WORK_MOUNT"] == str(ws)
    assert c.attrs["HostConfig"]["Init"] is True
    assert c.attrs["HostConfig"]["IpcMode"] == "host"

    rows = json.loads(mlc("list", "--json").out)
    row = next(r for r in rows if r["name"] == name)
    for key in ("name", "framework", "version", "status", "user", "workspace", "gpus", "image"):
        assert key in row
    assert (row["framework"], row["version"], row["status"]) == ("Pytorch", "test", "running")
    assert name in mlc("list").out

    # A command: runs in /workspace, its output streams back, its exit code is ours.
    r = mlc(
        "open", name, "--", "sh", "-c", "pwd; echo hello > /workspace/f.txt; echo oops >&2; exit 7"
    )
    assert r.code == 7
    assert r.out.strip() == "/workspace" and "oops" in r.err
    assert (ws / "f.txt").read_text() == "hello\n"
    # open started it, so it stopped it once the command was done
    c.reload()
    assert c.status == "exited"

    # `mlc start` keeps it running across an open.
    assert mlc("start", name).code == 0
    assert mlc("open", name, "--", "true").code == 0
    c.reload()
    assert c.status == "running"
    r = mlc("stop", name, "-f")
    assert r.code == 0
    c.reload()
    assert c.status == "exited"
    assert c.attrs["State"]["ExitCode"] == 143  # SIGTERM reached the init: no 10 s kill
    r = mlc("stop", name)  # already stopped: nothing to do, as with `docker stop`
    assert (r.code, r.err) == (0, f"[{name}] is not running\n")

    r = mlc("remove", name, "-f")
    assert r.code == 0 and str(ws) in r.out
    assert (ws / "f.txt").exists()  # the workspace is kept
    assert name not in mlc("list").out


def test_aime_spelling_and_shims(mlc, name, tmp_path):
    ws = tmp_path / "aime ws"
    shim = Path(__file__).resolve().parents[1] / "mlc" / "mlc-create"
    import subprocess

    p = subprocess.run(
        [str(shim), name, "Pytorch", "test", f"-w={ws}", "-g=none"],
        capture_output=True,
        text=True,
        env={**mlc.env, "MLC_PYTHON": sys.executable},
    )
    assert p.returncode == 0, p.stderr
    assert ws.is_dir()
    rows = json.loads(mlc("list", "--json").out)
    assert any(r["name"] == name and r["workspace"] == str(ws) for r in rows)


def test_remove_running_asks_first(mlc, name, tmp_path, docker_client):
    _create(mlc, name, tmp_path / "ws")
    r = mlc("remove", name, input="n\n")
    assert r.code != 0  # not a terminal and no -f: nothing happens
    assert docker_client.containers.get(f"{name}._.{os.getuid()}").status == "running"
    # At a terminal: "n" cancels; end of input (Ctrl-D) at the prompt is an interruption.
    for answer, line, code in (
        ("n\r", "mlc: error: cancelled", 1),
        ("\x04", "mlc: interrupted", 130),
    ):
        child = pexpect.spawn(
            sys.executable, ["-m", "mlc", "remove", name], env=mlc.env, encoding="utf-8", timeout=30
        )
        child.expect(r"Stop and remove it\? \[y/N\]")
        child.send(answer)
        child.expect(line)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == code
    assert docker_client.containers.get(f"{name}._.{os.getuid()}").status == "running"
    assert mlc("remove", name, "--force").code == 0


def test_uid_gid_mapping_with_real_user(mlc, name, user_dir, test_user, docker_client):
    ws = user_dir / "ws"
    r = mlc.as_user(test_user.pw_name, "create", name, "Pytorch", "test", "-w", str(ws))
    assert r.code == 0, r.err
    assert ws.stat().st_uid == test_user.pw_uid  # created owned by the user
    r = mlc.as_user(
        test_user.pw_name,
        "open",
        name,
        "--",
        "sh",
        "-c",
        "id -un; id -u; id -g; echo $HOME; touch /workspace/made-inside; sudo -n id -u",
    )
    assert r.code == 0, r.err
    user, uid, gid, home, sudo_uid = r.out.split()
    assert (user, int(uid), int(gid)) == (test_user.pw_name, test_user.pw_uid, test_user.pw_gid)
    assert home == f"/home/{test_user.pw_name}" and sudo_uid == "0"
    made = ws / "made-inside"
    assert (made.stat().st_uid, made.stat().st_gid) == (test_user.pw_uid, test_user.pw_gid)


def test_image_with_a_user_holding_the_uid(
    mlc, name, user_dir, test_user, docker_client, base_image
):
    """Ubuntu 24.04 images ship `ubuntu` with uid 1000: mlc takes that account over."""
    uid, gid = test_user.pw_uid, test_user.pw_gid
    builder = docker_client.containers.run(
        base_image,
        ["sh", "-c", f"groupadd -g {gid} ubuntu && useradd -m -u {uid} -g {gid} ubuntu"],
        detach=True,
    )
    assert builder.wait()["StatusCode"] == 0
    image = builder.commit(repository="mlctest/with-uid", tag=name)
    builder.remove()
    catalog = user_dir / "cat.yaml"
    catalog.write_text(
        f"images: [{{framework: Pytorch, version: taken, arch: [CPU], image: '{image.tags[0]}'}}]\n"
    )
    try:
        r = mlc.as_user(
            test_user.pw_name,
            "create",
            name,
            "Pytorch",
            "taken",
            "-w",
            str(user_dir / "ws"),
            env={"MLC_CATALOG": str(catalog)},
        )
        assert r.code == 0, r.err
        r = mlc.as_user(
            test_user.pw_name,
            "open",
            name,
            "--",
            "sh",
            "-c",
            "id -un; sudo -n true",
            env={"MLC_CATALOG": str(catalog)},
        )
        assert r.code == 0, r.err
        assert r.out.split() == [test_user.pw_name]
    finally:
        for c in docker_client.containers.list(all=True, filters={"ancestor": image.id}):
            c.remove(force=True)
        docker_client.images.remove(image.id, force=True)


def test_users_do_not_see_each_others_containers(mlc, name, tmp_path, test_user, user_dir):
    _create(mlc, name, tmp_path / "ws")  # made by root
    r = mlc.as_user(test_user.pw_name, "list", "--json")
    assert r.code == 0, r.err
    assert name not in r.out
    for verb in ("open", "stop", "remove"):
        args = ["--", "true"] if verb == "open" else ["-f"]
        r = mlc.as_user(test_user.pw_name, verb, name, *args)
        _one_line_error(r, "belongs to")
    assert name in mlc.as_user(test_user.pw_name, "list", "--all-users").out


def test_aime_made_container_shows_up(mlc, name, tmp_path, docker_client, base_image):
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    labels = {
        "aime.mlc": user,
        "aime.mlc.NAME": name,
        "aime.mlc.USER": user,
        "aime.mlc.MLC_VERSION": "4",
        "aime.mlc.FRAMEWORK": "Pytorch-2.5.1",
        "aime.mlc.GPUS": "all",
        "aime.mlc.WORK_MOUNT": str(tmp_path),
        "aime.mlc.DATA_MOUNT": "-",
        "aime.mlc.MODELS_MOUNT": "-",
        "aime.mlc.ARCH": "CUDA_ADA",
    }
    docker_client.containers.create(
        base_image, ["bash"], name=f"{name}._.{os.getuid()}", labels=labels
    )
    rows = json.loads(mlc("list", "--json").out)
    row = next(r for r in rows if r["name"] == name)
    assert (row["framework"], row["version"], row["status"]) == ("Pytorch", "2.5.1", "created")


def test_interactive_shell_stops_after_last_exit(mlc, name, tmp_path, docker_client):
    _create(mlc, name, tmp_path / "ws")
    mlc("stop", name, "-f")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "mlc", "open", name],
        env=mlc.env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 160),
    )
    prompt = rf"\[{name}\] \S+@{name}:/workspace[#$] "
    child.expect(prompt)
    child.sendline("echo first-$((6*7))")
    child.expect("first-42")
    child.expect(prompt)
    child.send("\x10")  # Ctrl-P: bash's previous-history, not Docker's detach prefix
    child.send("\r")
    child.expect("first-42")
    child.expect(prompt)
    child.sendline("tty")
    child.expect("/dev/pts/")
    child.sendline("exit 4")
    child.expect("container stopped")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    assert docker_client.containers.get(f"{name}._.{os.getuid()}").status == "exited"


def test_gpu_fallback_and_explicit_error(mlc, name, tmp_path, docker_client):
    if any("nvidia" in r for r in docker_client.info().get("Runtimes", {})):
        pytest.skip("this host has an NVIDIA runtime")
    r = _create(mlc, name, tmp_path / "ws")  # default -g all
    warnings = [line for line in r.err.splitlines() if "NVIDIA" in line]
    assert len(warnings) == 1
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    assert c.status == "running" and not c.attrs["HostConfig"].get("DeviceRequests")

    other = name + "-gpu"
    r = mlc("create", other, "Pytorch", "test", "-w", str(tmp_path / "ws2"), "-g", "device=0")
    _one_line_error(r, "NVIDIA")
    assert not docker_client.containers.list(all=True, filters={"name": f"^{other}"})


def test_network_settings_forwarded(mlc, name, tmp_path):
    proxy = {"HTTPS_PROXY": "http://127.0.0.1:3128", "NO_PROXY": "localhost"}
    r = mlc("create", name, "Pytorch", "test", "-w", str(tmp_path / "ws"), env=proxy)
    assert r.code == 0, r.err
    r = mlc(
        "open",
        name,
        "--",
        "sh",
        "-c",
        'echo "$https_proxy $HTTPS_PROXY $no_proxy"; cat "$SSL_CERT_FILE" | head -c 100',
    )
    assert r.code == 0, r.err
    first, rest = r.out.split("\n", 1)
    assert first == "http://127.0.0.1:3128 http://127.0.0.1:3128 localhost"
    from mlc import host

    assert rest[:100] == host.ca_bundle().read_text()[:100]

    other = name + "-plain"
    r = mlc(
        "create",
        other,
        "Pytorch",
        "test",
        "-w",
        str(tmp_path / "ws"),
        "--no-forward-network",
        env=proxy,
    )
    assert r.code == 0, r.err
    r = mlc("open", other, "--", "sh", "-c", 'echo "[$HTTPS_PROXY][$SSL_CERT_FILE]"')
    assert r.out.strip() == "[][]"


def test_pip_inside_works_through_intercepting_proxy(mlc, name, tmp_path):
    """The host CA bundle makes HTTPS from the container work (this machine intercepts TLS)."""
    _create(mlc, name, tmp_path / "ws")
    r = mlc(
        "open",
        name,
        "--",
        "python3",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        "/tmp/dl",
        "six",
        timeout=300,
    )
    assert r.code == 0, r.err


def test_stats(mlc, name, tmp_path):
    _create(mlc, name, tmp_path / "ws")
    r = mlc("stats", "--json")
    assert r.code == 0, r.err
    row = next(s for s in json.loads(r.out) if s["name"] == name)
    assert row["mem_limit"] > 0 and row["pids"] >= 1
    assert name in mlc("stats").out


@pytest.mark.docker
def test_stats_leaves_out_a_container_removed_while_sampled(mlc, name, tmp_path, docker_client):
    """Another shell removes a container between `mlc stats` listing and sampling it: the
    others are still shown (a test machine removes containers all the time)."""
    from mlc import containers, host

    _create(mlc, name, tmp_path / "ws")
    _create(mlc, f"{name}-b", tmp_path / "ws-b")
    for n in (name, f"{name}-b"):
        assert mlc("start", n, "--no-prewarm").code == 0
    mine = [c for c in containers.mine(docker_client, host.current_user()) if name in c.name]
    assert sorted(c.name for c in mine) == [name, f"{name}-b"]
    docker_client.containers.get(f"{name}-b._.{os.getuid()}").remove(force=True)
    assert [s.name for s in containers.stats(mine)] == [name]


def test_pull_failure_and_build_recipe(mlc, name, tmp_path, docker_client, base_image):
    r = mlc("create", name, "Pytorch", "nopull", "-w", str(tmp_path / "ws"))
    _one_line_error(r, "cannot pull image mlctest/absent:1")
    assert not docker_client.containers.list(all=True, filters={"name": f"^{name}"})

    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "Dockerfile").write_text(f"FROM {base_image}\nARG MARK=x\nRUN echo $MARK > /built\n")
    image = f"mlctest/built:{name}"
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(
        f"images: [{{framework: Pytorch, version: buildme, arch: [CPU], "
        f"image: '{image}', build: {{dockerfile: {recipe}/Dockerfile, "
        f"args: {{MARK: from-recipe}}}}}}]\n"
    )
    env = {"MLC_CATALOG": str(catalog)}
    try:
        r = mlc("create", name, "Pytorch", "buildme", "-w", str(tmp_path / "ws"), env=env)
        _one_line_error(r, "--build")
        r = mlc(
            "create", name, "Pytorch", "buildme", "-w", str(tmp_path / "ws"), "--build", env=env
        )
        assert r.code == 0, r.err
        assert mlc("open", name, "--", "cat", "/built", env=env).out.strip() == "from-recipe"
    finally:
        mlc("remove", name, "-f", env=env)
        docker_client.images.remove(image, force=True)


def test_errors_are_one_line(mlc, name, tmp_path):
    """The checks that need no Docker (bad names, catalog, folders, no engine) are in
    test_cli.test_create_validation_before_docker and test_no_docker_engine_is_one_line."""
    _create(mlc, name, tmp_path / "ws")
    _one_line_error(
        mlc("create", name, "Pytorch", "test", "-w", str(tmp_path / "ws")), "already exists"
    )
    for verb in ("open", "start", "stop", "remove"):
        _one_line_error(mlc(verb, name + "x"), "no container named")


def test_exact_name_match(mlc, name, tmp_path):
    _create(mlc, name, tmp_path / "ws")
    longer = "x" + name
    r = mlc("create", longer, "Pytorch", "test", "-w", str(tmp_path / "ws2"))
    assert r.code == 0, r.err  # `x<name>` is not taken because `<name>` exists
    _one_line_error(mlc("open", name[:-1], "--", "true"), "no container named")


def test_socket_permission_denied(mlc, test_user, user_dir):
    sock_path = Path("/tmp") / f"mlc-root-only-{os.getpid()}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.listen(1)
    sock_path.chmod(0o600)
    try:
        r = mlc.as_user(test_user.pw_name, "list", env={"DOCKER_HOST": f"unix://{sock_path}"})
        _one_line_error(r, "permission denied", "docker group")
    finally:
        s.close()
        sock_path.unlink()


def test_container_id_prefix_is_not_a_name(mlc, name, tmp_path, docker_client):
    """Docker resolves ID prefixes too; `mlc remove <prefix>` must never hit that container."""
    _create(mlc, name, tmp_path / "ws")
    cid = docker_client.containers.get(f"{name}._.{os.getuid()}").id
    for prefix in (cid[:4], cid[:12]):
        _one_line_error(mlc("remove", prefix, "-f"), "no container named")
    assert docker_client.containers.get(cid).status == "running"


def test_default_workspace_data_models_and_last_shell(mlc, name, tmp_path, docker_client):
    """No -w: ~/workspace is made; -d/-m mount; the container stops when the LAST open ends."""
    import subprocess
    import time

    r = mlc(
        "create",
        name,
        "Pytorch",
        "test",
        "-d",
        str(tmp_path / "data"),
        "-m",
        str(tmp_path / "models"),
    )
    assert r.code == 0, r.err
    ws = mlc.home / "workspace"
    assert ws.is_dir()
    r = mlc("open", name, "--", "sh", "-c", "touch /data/d /models/m /workspace/w")
    assert r.code == 0, r.err
    assert (tmp_path / "data" / "d").exists() and (tmp_path / "models" / "m").exists()
    assert (ws / "w").exists()

    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    slow = subprocess.Popen(
        [sys.executable, "-m", "mlc", "open", name, "--", "sleep", "4"],
        env=mlc.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(100):  # wait until the slow command runs inside
        c.reload()
        if c.status == "running" and any(
            docker_client.api.exec_inspect(e)["Running"] for e in c.attrs.get("ExecIDs") or []
        ):
            break
        time.sleep(0.1)
    assert mlc("open", name, "--", "true").code == 0
    c.reload()
    assert c.status == "running"  # another open is still busy: not stopped under it
    assert slow.wait(timeout=60) == 0
    c.reload()
    assert c.status == "exited"  # the last one stopped it


def test_console_scripts_are_the_verbs(mlc, name, tmp_path):
    import shutil
    import subprocess

    for verb in ("create", "open", "list", "start", "stop", "remove", "stats", "update-sys"):
        exe = shutil.which(f"mlc-{verb}")
        assert exe, f"mlc-{verb} is not installed"
        p = subprocess.run([exe, "-h"], capture_output=True, text=True, env=mlc.env)
        assert p.returncode == 0 and f"mlc {verb}" in p.stdout, p.stdout
    r = subprocess.run(
        [shutil.which("mlc-create"), name, "Pytorch", "test", "-w", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        env=mlc.env,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [shutil.which("mlc-remove"), name, "-Y"], capture_output=True, text=True, env=mlc.env
    )  # AIME's -Y
    assert r.returncode == 0, r.stderr


def test_driver_older_than_the_image_needs_is_refused_before_anything_is_made(
    mlc, name, tmp_path, docker_client, base_image
):
    """A fake nvidia-smi stands in for the GPU driver (none exists here): the catalog's
    min_driver is checked before the image, folders or container are touched."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in *driver_version*) echo 470.57.02;; *compute_cap*) echo 8.6;; esac\n'
    )
    smi.chmod(0o755)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "images:\n"
        f"  - {{framework: Pytorch, version: drv, arch: [CPU, CUDA_AMPERE], image: '{base_image}',"
        " min_driver: '535'}\n"
    )
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MLC_CATALOG": str(catalog)}
    ws = tmp_path / "ws"
    r = mlc("create", name, "Pytorch", "drv", "-w", str(ws), env=env)
    _one_line_error(r, "the NVIDIA driver 470.57.02 is too old for")
    assert ">= 535" in r.err
    assert not ws.exists()
    assert not docker_client.containers.list(all=True, filters={"name": f"^{name}"})
    r = mlc("images", env=env)
    assert r.code == 0 and ">= 535" in r.out
    r = mlc("create", name, "Pytorch", "drv", "-w", str(ws), "-g", "none", env=env)
    assert r.code == 0, r.err  # no GPUs asked for: the driver does not matter


def _container(docker_client, name: str):
    return docker_client.containers.get(f"{name}._.{os.getuid()}")


def _commands(c) -> list[str]:
    """The command lines running in C."""
    return [p[-1] for p in c.top(ps_args="-eo pid,args")["Processes"]]


def _wait(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def _exited(c) -> bool:
    c.reload()
    return c.status == "exited"


def test_closed_terminal_ends_the_shell_and_the_auto_stop_still_works(
    mlc, name, tmp_path, docker_client
):
    """Closing the terminal of `mlc open` (SIGHUP) ends the shell it started in the container;
    a container `mlc start` did not start stops, as after `exit`."""
    _create(mlc, name, tmp_path / "ws")
    c = _container(docker_client, name)
    prompt = rf"\[{name}\] \S+@{name}:/workspace[#$] "
    for keep in (True, False):
        assert mlc("stop", name, "-f").code == 0
        if keep:
            assert mlc("start", name).code == 0
        child = pexpect.spawn(
            sys.executable, ["-m", "mlc", "open", name], env=mlc.env, encoding="utf-8",
            timeout=30, dimensions=(40, 160),
        )  # fmt: skip
        child.expect(prompt)
        if keep:  # a nohup job outlives the terminal, as on a host
            child.sendline("nohup sleep 4321 >/dev/null 2>&1 &")
            child.expect(prompt)
        child.sendline("sleep 1234")
        _wait(lambda c=c: "sleep 1234" in _commands(c), "the shell's command")
        child.ptyproc.fileobj.close()  # the terminal window goes away: SIGHUP
        _wait(lambda child=child: not child.ptyproc.isalive(), "mlc to end", timeout=60)
        assert child.ptyproc.exitstatus == 129, child.ptyproc.signalstatus
        c.reload()
        if keep:
            assert c.status == "running"
            left = [a for a in _commands(c) if "bash" in a or "sleep 1234" in a]
            assert left == []
            assert "sleep 4321" in _commands(c)
        else:
            assert c.status == "exited"


def test_interrupted_command_ends_in_the_container(mlc, name, tmp_path, docker_client):
    """Docker passes no signal to an exec: mlc passes Ctrl-C and SIGTERM on itself."""
    _create(mlc, name, tmp_path / "ws")
    assert mlc("start", name).code == 0  # keeps running: what is left inside can be seen
    c = _container(docker_client, name)
    for sig, code, line in (
        (signal.SIGINT, 130, "mlc: interrupted"),
        (signal.SIGTERM, 143, "mlc: interrupted (SIGTERM)"),
    ):
        p = subprocess.Popen(
            [sys.executable, "-m", "mlc", "open", name, "--", "sh", "-c",
             "echo started; exec sleep 1234"],
            env=mlc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert p.stdout is not None and p.stdout.readline() == "started\n"
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        assert (p.returncode, err) == (code, line + "\n")
        assert not [a for a in _commands(c) if "sleep 1234" in a]

    # `mlc open NAME -- CMD | head -1`: the pipe closes, CMD gets SIGPIPE as it would on a host
    p = subprocess.Popen(
        [sys.executable, "-m", "mlc", "open", name, "--", "sh", "-c", "exec yes mlc-yes"],
        env=mlc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdout is not None and p.stdout.readline() == b"mlc-yes\n"
    p.stdout.close()
    p.wait(timeout=60)
    assert not [a for a in _commands(c) if "mlc-yes" in a]


def test_background_job_stops_the_container_when_it_ends(mlc, name, tmp_path, docker_client):
    """What outlives `mlc open` (a background job, the engine worker) keeps the container up;
    once it has ended, a watcher inside stops the container, unless `mlc start` marked it."""
    _create(mlc, name, tmp_path / "ws")
    c = _container(docker_client, name)
    job = "setsid sleep 3 >/dev/null 2>&1 </dev/null &"
    assert mlc("open", name, "--", "sh", "-c", job).code == 0
    c.reload()
    assert c.status == "running"  # the job still runs
    _wait(lambda: _exited(c), "the container to stop after the job")
    assert c.attrs["State"]["ExitCode"] == 143  # its command got SIGTERM, as from docker stop

    job = "setsid sleep 30 >/dev/null 2>&1 </dev/null &"
    assert mlc("open", name, "--", "sh", "-c", job).code == 0  # started by open: watched
    assert mlc("start", name).code == 0  # ... until `mlc start` keeps it running

    def watching() -> bool:
        c.reload()
        execs = [docker_client.api.exec_inspect(e) for e in c.attrs.get("ExecIDs") or []]
        return any(e["Running"] and "mlc-idle" in e["ProcessConfig"]["arguments"] for e in execs)

    _wait(lambda: not watching(), "the watcher to leave")
    c.reload()
    assert c.status == "running"


def test_missing_workspace_is_named(mlc, name, tmp_path):
    ws = tmp_path / "ws"
    _create(mlc, name, ws)
    assert mlc("stop", name, "-f").code == 0
    ws.rmdir()
    for verb in (["open", name, "--", "true"], ["start", name]):
        _one_line_error(mlc(*verb), f"its workspace folder {ws} is missing", "mkdir -p")
    assert not ws.exists()  # not made behind the user's back


def test_create_where_the_user_may_not(mlc, name, test_user):
    """A folder inside another user's home (root's, 0700 here) or one the user cannot write."""
    locked = Path(tempfile.mkdtemp(prefix="mlc-locked-", dir="/tmp"))  # 0700, root's
    readonly = Path(tempfile.mkdtemp(prefix="mlc-readonly-", dir="/tmp"))
    readonly.chmod(0o755)
    try:
        for ws, needle in (
            (locked / "ws", f"cannot use {locked / 'ws'} as the workspace folder: Permission"),
            (readonly / "ws", f"cannot create directory {readonly / 'ws'}: Permission"),
        ):
            r = mlc.as_user(test_user.pw_name, "create", name, "Pytorch", "test", "-w", str(ws))
            _one_line_error(r, needle)
            assert r.code == 1
    finally:
        shutil.rmtree(locked)
        shutil.rmtree(readonly)


def test_ca_bundle_is_mounted_alone(mlc, name, tmp_path, docker_client):
    """MLC_CA_BUNDLE=~/corp-ca.pem: the container sees that file, not the rest of the folder."""
    from mlc import host

    home = tmp_path / "home-like"
    home.mkdir()
    bundle = home / "corp-ca.pem"
    bundle.write_bytes(host.ca_bundle().read_bytes())
    (home / "id_ed25519").write_text("PRIVATE KEY\n")
    r = mlc("create", name, "Pytorch", "test", "-w", str(tmp_path / "ws"),
            env={"MLC_CA_BUNDLE": str(bundle)})  # fmt: skip
    assert r.code == 0, r.err
    r = mlc(
        "open", name, "--", "sh", "-c",
        'sha256sum < "$SSL_CERT_FILE"; ls -A "$(dirname "$SSL_CERT_FILE")"; '
        'grep -rl "PRIVATE KEY" /usr/local/share/mlc 2>/dev/null; true',
    )  # fmt: skip
    assert r.code == 0, r.err
    digest, listing, *found = r.out.splitlines()
    assert digest.split()[0] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert listing == "corp-ca.pem" and found == []
    sources = {m["Source"]: m for m in _container(docker_client, name).attrs["Mounts"]}
    assert str(home) not in sources
    assert sources[str(bundle)]["RW"] is False


@pytest.mark.docker
def test_interrupted_while_docker_starts_it_leaves_no_container(
    name, tmp_path, catalog_file, docker_client, monkeypatch
):
    """Ctrl-C or SIGTERM that lands while Docker starts the new container: it is removed (and
    the folders create made), as for any other failure of create."""
    from docker.models.containers import Container as DockerContainer

    from mlc import containers

    real_start = DockerContainer.start

    def start_then_interrupted(self, *args, **kwargs):
        real_start(self, *args, **kwargs)
        raise KeyboardInterrupt  # the signal arrives just as the start returns

    monkeypatch.setattr(DockerContainer, "start", start_then_interrupted)
    ws = tmp_path / "ws"
    spec = containers.new_spec(
        name, "Pytorch", "test", workspace=ws, gpus="none", catalog_path=str(catalog_file)
    )
    with pytest.raises(KeyboardInterrupt):
        containers.create(docker_client, spec)
    assert not docker_client.containers.list(all=True, filters={"name": name})
    assert not ws.exists()
