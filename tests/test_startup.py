"""The host CLI's start-up: what each entry imports (never a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _imports(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> set[str]:
    """The top-level packages a fresh `python -m mlc ARGS` (or `python -c CODE`) imports."""
    argv = ["-c", code] if code else ["-m", "mlc", *args]
    p = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
    )  # fmt: skip
    found = {
        line.split("|")[-1].strip().split(".")[0]
        for line in p.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "mlc" in found or "typer" in found or code, p.stderr[-2000:]
    return found


def test_the_entry_points_import_nothing_heavy():
    heavy = {"docker", "typer", "rich", "requests", "yaml", "click", "paramiko"}
    assert _imports(code="import mlc.cli, mlc.fastpath, mlc.invocation") & heavy == set()


def test_help_needs_typer_but_not_the_docker_sdk():
    found = _imports("--help")
    assert "typer" in found
    assert found & {"docker", "requests", "paramiko", "urllib3", "yaml"} == set()
    # typer's help formatter imports these, mlc's app never calls them (mlc.cli.lean)
    assert found & {"markdown_it", "pygments"} == set()
    assert {"markdown_it", "pygments"} <= _imports("--help", env={"MLC_LEAN_IMPORTS": "0"})


@pytest.mark.parametrize("args", [["--help"], ["create", "--help"], ["txt2img", "--help"]])
def test_help_reads_the_same_with_the_deferred_modules(args):
    def run(env: dict[str, str]) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "mlc", *args], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "120", **env},
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert run({}) == run({"MLC_LEAN_IMPORTS": "0"})


def test_a_deferred_module_is_the_real_one_once_used():
    code = (
        "import sys\n"
        "from mlc.cli import lean\n"
        "lean.defer()\n"
        "import typer.rich_utils\n"
        "assert 'markdown_it' not in sys.modules\n"
        "from rich.markdown import Markdown\n"
        "from rich.text import Text\n"
        "from rich.console import Console\n"
        "assert Markdown | Text\n"
        "Console(width=40).print(Markdown('*deferred* works'))\n"
        "import rich.markdown\n"
        "assert isinstance(rich.markdown.Markdown('x'), Markdown)\n"
        "assert type(sys.modules['rich.markdown']).__name__ == 'module'\n"
        "from rich.traceback import Traceback\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError as exc:\n"
        "    Traceback.from_exception(type(exc), exc, exc.__traceback__)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "deferred works" in p.stdout


@pytest.mark.parametrize(
    ("args", "env", "blocked"),
    [
        (["list"], {}, True),
        (["--context", "gpu1", "list"], {}, False),
        (["list"], {"DOCKER_HOST": "ssh://someone@gpu1"}, False),
        (["list"], {"DOCKER_HOST": "unix:///var/run/docker.sock"}, True),
        (["list"], {"DOCKER_CONTEXT": "gpu1"}, False),
    ],
)
def test_paramiko_is_kept_out_only_for_the_local_engine(tmp_path, args, env, blocked):
    code = (
        "import sys\n"
        "from mlc.cli import entry\n"
        f"entry.skip_ssh_transport({args!r})\n"
        "import docker\n"
        "print('paramiko' in sys.modules and sys.modules['paramiko'] is None)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC), "DOCKER_CONFIG": str(tmp_path), **env},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().lower()) is blocked
