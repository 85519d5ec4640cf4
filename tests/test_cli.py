"""The `mlc` command line in-process, without Docker: argument spellings, usage and validation
errors as one line through mlc.errors.report, and what stays light."""

from __future__ import annotations

import json
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
        "create", "open", "list", "start", "stop", "remove", "stats", "update-sys",
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
