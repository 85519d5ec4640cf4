"""The `mlc` command line in-process, without Docker: argument spellings, usage and validation
errors as one line through mlc.errors.report, and what stays light."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlc import cli

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A test catalog (as test_containers' fixture has it) and a CPU host."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "images:\n"
        "  - {framework: Pytorch, version: test, arch: [CPU], image: 'mlctest/py311:bookworm-r1'}\n"
    )
    monkeypatch.setenv("MLC_CATALOG", str(catalog))
    monkeypatch.setenv("MLC_ARCH", "CPU")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def mlc(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run(cli.normalise(list(args)))
    got = capsys.readouterr()
    return code, got.out, got.err


def one_line_error(result: tuple[int, str, str], *needles: str) -> str:
    code, _, err = result
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("mlc: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_usage_errors_are_one_line(env, capsys):
    """Moved from test_catalog (it ran each in a subprocess)."""
    for args in (
        ["create", "x"],
        ["stop"],
        ["frob"],
        ["list", "--bogus"],
        ["create", "x", "Pytorch", "2.13.0-cpu", "-g", "foo,"],
        ["create", "x", "Pytorch", "2.13.0-cpu", "--ulimit", "memlock=lots"],
    ):
        one_line_error(mlc(capsys, *args))
    code, _, err = mlc(capsys, "frob")
    assert code == 2 and "No such command 'frob'" in err and "(see `mlc -h`)" in err
    assert mlc(capsys, "stop")[0] == 2  # click's usage errors keep their exit code


def test_create_validation_before_docker(env, capsys):
    """Moved from test_containers.test_errors_are_one_line (it ran them behind the Docker
    fixture): each fails before Docker is asked anything."""
    one_line_error(mlc(capsys, "create", "bad#name", "Pytorch", "test"), "invalid container name")
    one_line_error(mlc(capsys, "create", "a._.b", "Pytorch", "test"), "._.")
    one_line_error(
        mlc(capsys, "create", "sd", "Tensorflow", "1"), "unknown framework", "valid: Pytorch"
    )
    one_line_error(mlc(capsys, "create", "sd", "pytorch", "9.9"), "unknown version", "test")
    afile = env / "file"
    afile.write_text("x")
    one_line_error(mlc(capsys, "create", "sd", "Pytorch", "test", "-w", str(afile)), "is a file")
    one_line_error(mlc(capsys, "create", "sd", "Pytorch", "test", "-g=0,x"), "GPU selection '0,x'")


def test_no_docker_engine_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{env}/none.sock")
    one_line_error(mlc(capsys, "list"), "cannot reach the Docker engine", "start Docker")
    code, out, err = mlc(capsys, "models", "--json")  # without Docker: the recipes still list
    assert code == 0, err
    assert {"demo", "stable-diffusion-v1-5"} <= {m["name"] for m in json.loads(out)}


def test_aime_v2_option_spellings(env, capsys):
    """Moved from test_catalog (it ran each in a subprocess)."""
    for spelling in (
        ["-arch", "CUDA_AMPERE"],
        ["-arch=CUDA_AMPERE"],
        ["--architecture", "CUDA_AMPERE"],
    ):
        code, out, err = mlc(capsys, "images", *spelling)
        assert code == 0, err
        assert "CUDA_AMPERE" in out


def test_version_and_bare_mlc(capsys):
    from mlc import __version__

    assert mlc(capsys, "--version")[:2] == (0, f"mlc {__version__}\n")
    code, out, err = mlc(capsys)
    assert code == 2 and "Usage: mlc" in out and err == ""  # the help, and nothing to add


def test_entry_points_are_the_verbs():
    """The console scripts in pyproject name functions that exist (the Docker test runs them)."""
    from importlib import import_module

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    for exe, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(import_module(module), func)), exe
    verbs = {exe.removeprefix("mlc-") for exe in scripts if exe.startswith("mlc-")}
    assert verbs - {"txt2img"} == {
        "create", "open", "list", "start", "stop", "remove", "stats", "update-sys", "export",
        "import",
    }  # fmt: skip
    for verb in verbs - {"txt2img"}:
        assert getattr(cli, f"main_{verb.replace('-', '_')}").__doc__ == (
            f"`mlc-{verb}`: the same as `mlc {verb}`."
        )


def test_help_does_not_start_docker_or_the_engine():
    """`mlc -h` in a fresh process: what it loads, measured (no time asserted). It needs no
    Docker engine and never imports torch or the engine."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['mlc', '-h']\n"
        "try:\n    runpy.run_module('mlc', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "mods = [m for m in ('torch', 'diffusers', 'mlc.engine') if m in sys.modules]\n"
        "print('LOADED', code, mods)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"DOCKER_HOST": "unix:///nonexistent.sock", "PATH": "/usr/bin:/bin",
             "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    last = p.stdout.strip().splitlines()[-1]
    assert last == "LOADED 0 []", p.stdout + p.stderr


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (signal.SIGINT, 130, "mlc: interrupted"),
        (signal.SIGTERM, 143, "mlc: interrupted (SIGTERM)"),
        (signal.SIGHUP, 129, "mlc: interrupted (SIGHUP)"),
    ],
)
def test_interruptions_are_one_line(tmp_path, sig, code, line):
    """Ctrl-C, `kill`/`timeout` (SIGTERM) and a closed terminal (SIGHUP) while `mlc` waits (on
    a catalog server that accepts and never answers): one line and 128 + the signal."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/catalog.yaml"
    env = {**os.environ, "PYTHONPATH": str(SRC), "XDG_DATA_HOME": str(tmp_path)}
    p = subprocess.Popen(
        [sys.executable, "-m", "mlc", "update-sys", "--url", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        conn, _ = server.accept()  # the request has arrived: mlc is waiting for the answer
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        conn.close()
    finally:
        server.close()
        if p.poll() is None:
            p.kill()
    assert (p.returncode, out, err) == (code, "", line + "\n")
    assert not (tmp_path / "mlc" / "catalog.yaml").exists()


def test_names_are_checked_before_docker(env, capsys, monkeypatch):
    """An empty or overlong name is refused (exit 2) before Docker is asked: the name is also
    the container's host name, which runc refuses beyond 64 characters."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{env}/none.sock")
    long = "a" * 300
    for args in (["create", long, "Pytorch", "test"], ["open", long, "--", "true"]):
        code, _, err = mlc(capsys, *args)
        assert code == 2
        one_line_error((code, "", err), "300 characters, at most 64")
    assert mlc(capsys, "create", "a" * 64, "Pytorch", "test", "-g", "none")[0] == 1  # Docker
    for verb in (["open", ""], ["stop", ""], ["remove", "", "-f"], ["setup", ""], ["txt2img", ""]):
        code, _, err = mlc(capsys, *verb)
        assert code == 2
        one_line_error((code, "", err), "the container name is empty")


def test_bad_docker_host_is_one_line(env, capsys, monkeypatch):
    """A DOCKER_HOST that cannot be used says which and why, not Docker's raw text."""
    for value, needle in (
        ("foo://x", "invalid DOCKER_HOST=foo://x: Invalid bind address protocol"),
        ("tcp://", "invalid DOCKER_HOST=tcp://"),
        ("/var/run/docker.sock", "unix:///var/run/docker.sock"),
        ("tcp://127.0.0.1:9", "cannot reach the Docker engine at tcp://127.0.0.1:9"),
    ):
        monkeypatch.setenv("DOCKER_HOST", value)
        code, _, err = mlc(capsys, "list")
        assert code == 1
        one_line_error((code, "", err), needle)
    try:
        import paramiko  # noqa: F401
    except ImportError:
        monkeypatch.setenv("DOCKER_HOST", "ssh://someone@127.0.0.1")
        one_line_error(mlc(capsys, "list"), "needs the paramiko package", "pip install paramiko")


def test_setup_help_says_the_same_url_is_skipped(env, capsys):
    code, out, _ = mlc(capsys, "setup", "-h")
    assert code == 0
    text = " ".join(out.split())
    assert "same URL" in text and "--force" in text


def test_txt2img_help_lists_the_engine_flags_without_torch_or_a_container():
    """`mlc txt2img -h` and `mlc txt2img NAME ... -h`: the host's help and the engine's flags,
    read from the engine's light argparse module; no torch, no Docker (none answers here)."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['mlc'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('mlc', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "mods = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('LOADED', code, mods)\n"
    )
    env = {"DOCKER_HOST": "unix:///nonexistent.sock", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(SRC), "COLUMNS": "120"}  # fmt: skip
    for args in (["txt2img", "-h"], ["txt2img", "sd", "--prompt", "x", "-h"]):
        p = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env
        )
        assert p.stdout.strip().splitlines()[-1] == "LOADED 0 []", p.stdout + p.stderr
        assert p.stderr == ""
        for flag in ("--no-worker", "--ddim_steps", "--n_samples", "--plms", "--outdir"):
            assert flag in p.stdout, flag
        assert "usage: mlc txt2img NAME" in p.stdout


def test_tables_are_whole_when_piped(tmp_path):
    """`mlc images | grep ...`: a pipe has no width, so rows are never cut at 80 columns (or at
    a small COLUMNS) with an ellipsis."""
    image = "registry.example.com/" + "team/" * 20 + "pytorch:2.13.0-cuda12.8-with-a-long-tag"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        f"images: [{{framework: Pytorch, version: '2.13', arch: [CPU], image: '{image}'}}]\n"
    )
    for columns in (None, "40"):
        env = {**os.environ, "PYTHONPATH": str(SRC), "MLC_CATALOG": str(catalog),
               "XDG_DATA_HOME": str(tmp_path)}  # fmt: skip
        env.pop("COLUMNS", None)
        if columns:
            env["COLUMNS"] = columns
        p = subprocess.run(
            [sys.executable, "-m", "mlc", "images", "--arch", "CPU"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        row = next(line for line in p.stdout.splitlines() if "Pytorch" in line)
        assert row.split() == ["Pytorch", "2.13", "-", "-", "-", "-", "-", image], p.stdout
