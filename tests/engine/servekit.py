"""A real `mlc serve` process for the tests: started on a free port, read back from its banner,
stopped (with its worker) at the end."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

BANNER = re.compile(r" at (http://\S+) \(AUTOMATIC1111 API")


def needed(module: str) -> ModuleType:
    """MODULE (the test extra has it); without it the tests skip, or fail when CI is set."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{module} is missing: pip install -e '.[test]'", allow_module_level=True)


class Served:
    """``python -m mlc.serve --port 0 FLAGS`` (or another COMMAND) in CWD, with its own
    worker folder; ``url`` once it listens."""

    def __init__(
        self,
        cwd: Path,
        ckpt: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mlc-s-", dir="/tmp"))  # short socket path
        self.tmp.chmod(0o755)
        self.worker_dir = self.tmp / "w"
        self.tmpdir = self.tmp / "t"  # the server's (and its worker's) temporary folders
        self.tmpdir.mkdir()
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MLC_WORKER_DIR": str(self.worker_dir),
            "MLC_CKPT": str(ckpt),
            "TMPDIR": str(self.tmpdir),
            **(env or {}),
        }
        argv = command or [sys.executable, "-m", "mlc.serve"]
        self.proc = subprocess.Popen(
            [*argv, "--port", "0", *flags],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = BANNER.search(line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=self._drain, daemon=True).start()
        assert self.url, "".join(self.lines)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def api(self) -> str:
        return f"{self.url}/sdapi/v1"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(f"{self.api}/{path}", timeout=300, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(f"{self.api}/{path}", json=body, timeout=300, **kw)

    def idle(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until no job runs; the last progress answer."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.get("progress").json()
            if p["state"]["job_count"] == 0 or time.monotonic() > deadline:
                return p
            time.sleep(0.1)

    def stop(self) -> int:
        """Ctrl-C the server; its exit code. Its worker is killed too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.worker_dir / "worker.pid").read_text()), signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.proc.returncode
