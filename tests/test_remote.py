"""Remote Docker engines: `mlc` over ``DOCKER_HOST=ssh://`` (a real sshd on 127.0.0.1 and key
login as a second user), over ``tcp://`` with TLS and client certificates (socat in front of
this machine's Docker socket), and through Docker contexts made by the real docker CLI."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from conftest import _missing
from mlc import paths, results
from mlc.containers import remote
from mlc.containers.spec import remote_dir
from mlc.errors import UsageError
from remotehost import SshServer, TlsFront, make_certs

REMOTE_USER = os.environ.get("MLC_REMOTE_USER", "mlcremote")
SMALL = ("--n_samples", "1", "--n_iter", "1", "--H", "64", "--W", "64", "--ddim_steps", "2",
         "--skip_grid")  # fmt: skip


# -- which engine (no Docker) --------------------------------------------------------------------


def write_context(config: Path, name: str, host: str) -> None:
    """A context as `docker context create NAME --docker host=HOST` stores it."""
    meta = config / "contexts" / "meta" / remote.hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    data = {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}}
    (meta / "meta.json").write_text(json.dumps(data))


def test_engine_is_found_as_the_docker_cli_finds_it(tmp_path: Path) -> None:
    cfg = tmp_path / "docker"
    write_context(cfg, "gpu1", "ssh://me@gpu1")
    write_context(cfg, "gpu2", "tcp://gpu2:2376")
    env = {"DOCKER_CONFIG": str(cfg)}
    assert remote.endpoint(env) == remote.Endpoint("")  # nothing chosen: the local socket
    assert not remote.endpoint(env).remote and remote.remote_host(env) is None
    (cfg / "config.json").write_text(json.dumps({"currentContext": "gpu2"}))
    assert remote.endpoint(env).host == "tcp://gpu2:2376"  # `docker context use gpu2`
    env["DOCKER_CONTEXT"] = "gpu1"
    ep = remote.endpoint(env)
    assert (ep.host, ep.context, ep.hostname, ep.remote) == ("ssh://me@gpu1", "gpu1", "gpu1", True)
    env["DOCKER_HOST"] = "tcp://other:2375"
    assert remote.endpoint(env).host == "tcp://other:2375"  # DOCKER_HOST wins over both
    remote.use_context("gpu2", env)  # `mlc --context gpu2` wins over DOCKER_HOST
    assert "DOCKER_HOST" not in env and remote.remote_host(env) == "gpu2"
    env["DOCKER_CONTEXT"] = "default"
    assert remote.endpoint(env) == remote.Endpoint("")
    env["DOCKER_CONTEXT"] = "missing"
    with pytest.raises(UsageError, match="Docker context 'missing' does not exist"):
        remote.endpoint(env)
    assert remote.Endpoint("unix:///run/user/1000/docker.sock").remote is False


def test_remote_folders_are_taken_as_written() -> None:
    assert remote_dir(Path("/srv/ws/../data"), "data", "gpu1") == Path("/srv/data")
    with pytest.raises(UsageError, match="workspace folder as an absolute path on gpu1"):
        remote_dir(Path("ws"), "workspace", "gpu1")


def test_paths_for_a_remote_container_are_not_looked_up_here(tmp_path: Path) -> None:
    mounts = [(Path("/srv/ws"), PurePosixPath("/workspace"))]
    flags = ["--from-file", "/srv/ws/p.txt", "--ckpt", "/opt/x.ckpt", "--outdir", "out"]
    got = paths.translate_paths(mounts, flags, "sd", remote=True)
    assert got == ["--from-file", "/workspace/p.txt", "--ckpt", "/opt/x.ckpt", "--outdir", "out"]
    with pytest.raises(Exception, match="not inside a folder"):
        paths.translate_paths(mounts, ["--outdir", "/elsewhere"], "sd", remote=True)


def test_fetch_outputs_flag_and_outdir() -> None:
    from mlc.engine.spec import DEFAULT_OUTDIR

    assert results.DEFAULT_OUTDIR == DEFAULT_OUTDIR
    rest, dest = results.take_fetch_flag(["--prompt", "x", "--fetch-outputs", "got", "--plms"])
    assert rest == ["--prompt", "x", "--plms"] and dest == Path("got").absolute()
    assert results.take_fetch_flag(["--fetch-outputs=/tmp/a"])[1] == Path("/tmp/a")
    with pytest.raises(UsageError, match="needs a folder"):
        results.take_fetch_flag(["--fetch-outputs", "--plms"])
    assert results.outdir([]) == PurePosixPath("/workspace/outputs/txt2img-samples")
    assert results.outdir(["--outdir", "bulk"]) == PurePosixPath("/workspace/bulk")
    assert results.outdir(["--outdir=/models/x"]) == PurePosixPath("/models/x")


# -- a real sshd and a real TLS front ------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd():
    if os.getuid() != 0:
        _missing("the sshd tests run as root")
    if not Path("/usr/sbin/sshd").exists() or shutil.which("socat") is None:
        _missing("openssh-server or socat is missing: run tests/support/remoteuser.sh")
    try:
        pwd.getpwnam(REMOTE_USER)
    except KeyError:
        _missing(f"user {REMOTE_USER} is missing: run tests/support/remoteuser.sh")
    try:
        import paramiko  # noqa: F401
    except ImportError:
        _missing("paramiko is missing: pip install 'mlc-toolkit[remote]'")
    # sshd reads the keys file as the user: a folder it can enter (pytest's own is 0700)
    root = Path(tempfile.mkdtemp(prefix="mlc-sshd-"))
    root.chmod(0o755)
    try:
        with SshServer(root, REMOTE_USER) as srv:
            yield srv
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
def test_every_command_over_ssh(mlc, name, tmp_path, sshd, torch_catalog) -> None:
    sshd.client_home(mlc.home)
    env = {"DOCKER_HOST": sshd.url, "MLC_CATALOG": str(torch_catalog)}
    ws = tmp_path / "ws"
    ws.mkdir()
    before = sshd.logins()

    r = mlc("create", name, "Pytorch", "2.13.0-cpu", "-w", "/nonexistent/mlc-ws", env=env)
    assert r.code == 1 and "Traceback" not in r.err
    assert "workspace /nonexistent/mlc-ws does not exist on host 127.0.0.1" in r.err
    assert not Path("/nonexistent/mlc-ws").exists()  # checked there, never made
    r = mlc("create", name, "Pytorch", "2.13.0-cpu", "-w", str(ws), "-g", "none", env=env)
    assert r.code == 0, r.err
    assert f"workspace {ws} on host 127.0.0.1" in r.out
    assert sshd.logins() > before  # it really went through sshd

    r = mlc("list", "--json", env=env)
    assert r.code == 0, r.err
    assert name in [c["name"] for c in json.loads(r.out)]  # (other tests' may be there too)
    r = mlc("open", name, "--", "sh", "-c", "echo hello from $(hostname); exit 3", env=env)
    assert r.code == 3 and f"hello from {name}" in r.out

    r = mlc("setup", name, "demo", env=env, timeout=600)  # the fetch runs in the container
    assert r.code == 0, r.err
    assert (ws / "mlc-demo" / "demo.ckpt").is_file()
    assert "/workspace/mlc-demo/demo.ckpt" in r.out

    r = mlc("txt2img", name, "--prompt", "a cube", *SMALL, env=env, timeout=600)
    assert r.code == 0, r.err
    assert f"outputs are on host 127.0.0.1 in {ws}/outputs/txt2img-samples" in r.err
    got = tmp_path / "got"
    r = mlc("txt2img", name, "--prompt", "a cube", *SMALL, "--fetch-outputs", str(got), env=env,
            timeout=600)  # fmt: skip
    assert r.code == 0, r.err
    assert "copied 1 file(s)" in r.err
    there = ws / "outputs" / "txt2img-samples" / "samples" / "00001.png"
    assert (got / "samples" / "00001.png").read_bytes() == there.read_bytes()
    assert not (got / "samples" / "00000.png").exists()  # only this run's files

    r = mlc("stop", name, "-f", env=env)
    assert r.code == 0, r.err
    r = mlc("remove", name, "-f", env=env)
    assert r.code == 0, r.err
    r = mlc("list", "--json", env=env)
    assert name not in [c["name"] for c in json.loads(r.out)]
    assert ws.is_dir() and there.is_file()  # the workspace is never touched by remove


@pytest.mark.docker
def test_tls_and_contexts(mlc, name, tmp_path, sshd, base_image) -> None:
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    docker_cli = shutil.which("docker")
    cfg = mlc.home / ".docker"
    cfg.mkdir()
    with TlsFront(certs) as front:
        tls = {"DOCKER_HOST": front.url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
        ws = tmp_path / "ws"
        ws.mkdir()
        r = mlc("create", name, "Pytorch", "test", "-w", str(ws), "-g", "none", env=tls)
        assert r.code == 0, r.err
        r = mlc("open", name, "--", "sh", "-c", "id -u; exit 4", env=tls)
        assert r.code == 4 and r.out.strip() == str(os.getuid())
        r = mlc("list", "--json", env={**tls, "DOCKER_TLS_VERIFY": ""})  # no client cert
        assert r.code == 1 and "cannot reach the Docker engine at tcp://" in r.err
        r = mlc("list", env={**tls, "DOCKER_CERT_PATH": str(tmp_path)})  # no certificates
        assert r.code != 0 and "Traceback" not in r.err and len(r.err.splitlines()) == 1

        if docker_cli is None:
            _missing("the docker CLI is missing (it makes the contexts)")
        env = {**os.environ, "DOCKER_CONFIG": str(cfg)}
        env.pop("DOCKER_HOST", None)
        host = f"host={front.url},ca={certs}/ca.pem,cert={certs}/cert.pem,key={certs}/key.pem"
        for ctx, spec in (("mlct-tls", host), ("mlct-ssh", f"host={sshd.url}")):
            subprocess.run([docker_cli, "context", "create", ctx, "--docker", spec], env=env,
                           check=True, capture_output=True)  # fmt: skip
        bogus = {"DOCKER_HOST": "tcp://127.0.0.1:9", "DOCKER_CONFIG": str(cfg)}
        r = mlc("--context", "mlct-tls", "list", "--json", env=bogus)  # the flag wins
        assert r.code == 0, r.err
        assert name in [c["name"] for c in json.loads(r.out)]
        sshd.client_home(mlc.home)
        before = sshd.logins()
        r = mlc("--context", "mlct-ssh", "open", name, "--", "true", env=bogus)
        assert r.code == 0, r.err
        assert sshd.logins() > before
        r = mlc("list", "--json", env={"DOCKER_CONTEXT": "mlct-tls", "DOCKER_CONFIG": str(cfg)})
        assert r.code == 0 and name in [c["name"] for c in json.loads(r.out)], r.err
        subprocess.run([docker_cli, "context", "use", "mlct-tls"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        r = mlc("remove", name, "-f", env={"DOCKER_CONFIG": str(cfg)})  # the current context
        assert r.code == 0, r.err
        r = mlc("--context", "nope", "list", env={"DOCKER_CONFIG": str(cfg)})
        assert r.code == 2 and "Docker context 'nope' does not exist" in r.err
