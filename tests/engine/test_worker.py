"""The warm engine worker as real processes: reuse, idle exit, restart, queueing, Ctrl-C,
refusal of another user, and the one-shot engine's errors and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlc.engine import txt2img
from mlc.engine.protocol import LOG, PIDFILE, SOCKET

from .conftest import SIZE, STEPS, TinyModel, copy_model, small_run

TEST_USER = os.environ.get("MLC_TEST_USER", "mlctester")
TEST_USER_PYTHON = os.environ.get("MLC_TEST_USER_PYTHON", f"/home/{TEST_USER}/venv/bin/python")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


class Workers:
    """A private worker folder; every worker started in it is killed at the end."""

    def __init__(self, d: Path, tiny: TinyModel, cwd: Path) -> None:
        self.dir, self.tiny, self.cwd = d, tiny, cwd
        self.pids: set[int] = set()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MLC_WORKER_DIR": str(self.dir),
            **extra,
        }

    def argv(self, *args: str, ckpt: Path | None = None) -> list[str]:
        return [
            sys.executable, "-m", "mlc.engine.client",
            "--ckpt", str(ckpt or self.tiny.safetensors),
            "--H", str(SIZE), "--W", str(SIZE), "--ddim_steps", str(STEPS),
            "--n_samples", "1", "--n_iter", "1", "--skip_grid", *args,
        ]  # fmt: skip

    def run(self, *args: str, ckpt: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        p = subprocess.run(
            self.argv(*args, ckpt=ckpt),
            capture_output=True, text=True, env=self.env(**env), cwd=self.cwd, timeout=300,
        )  # fmt: skip
        self.note_pid()
        return p

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.env(**env), cwd=self.cwd,
        )  # fmt: skip

    def json(self, *args: str, ckpt: Path | None = None, **env: str) -> dict:
        p = self.run("--json", *args, ckpt=ckpt, **env)
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout)
        self.pids.add(summary["worker"]["pid"])
        return summary

    def pid(self) -> int | None:
        try:
            return int((self.dir / PIDFILE).read_text())
        except (OSError, ValueError):
            return None

    def note_pid(self) -> None:
        if (pid := self.pid()) is not None:
            self.pids.add(pid)

    def kill_all(self) -> None:
        self.note_pid()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _workers(tiny: TinyModel, cwd: Path) -> Iterator[Workers]:
    d = Path(tempfile.mkdtemp(prefix="mlc-w-", dir="/tmp"))  # short: socket paths are limited
    d.chmod(0o755)  # only the worker folder inside is private
    cwd.mkdir()
    w = Workers(d / "w", tiny, cwd)
    yield w
    w.kill_all()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workers(tiny: TinyModel, tmp_path: Path) -> Iterator[Workers]:
    """A worker folder of its own (for tests that kill or stop the worker)."""
    yield from _workers(tiny, tmp_path / "work")


@pytest.fixture(scope="module")
def warm(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """One worker shared by the tests that leave it running (each uses its own --outdir)."""
    yield from _workers(tiny, tmp_path_factory.mktemp("warm") / "work")


def _png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_reuse_same_pixels_and_reload(warm: Workers, tiny: TinyModel, tmp_path: Path, capsys):
    workers = warm
    first = workers.json("--seed", "7", "--outdir", "reuse")
    pid = first["worker"]["pid"]
    second = workers.json("--seed", "7", "--outdir", "reuse")
    assert second["timings"]["load_s"] == 0  # the model stayed loaded
    assert second["worker"] == {"pid": pid, "requests": first["worker"]["requests"] + 1}
    # Outputs are relative to the client's folder, numbered on; pixels are the one-shot's.
    files = [Path(workers.cwd, f) for f in first["files"] + second["files"]]
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    assert all(f.is_file() and f.parent.parent == workers.cwd / "reuse" for f in files)
    code = txt2img.main(
        [
            *small_run(tiny.safetensors),
            "--n_samples",
            "1",
            "--n_iter",
            "1",
            "--skip_grid",
            "--seed",
            "7",
            "--outdir",
            str(tmp_path / "one-shot"),
            "--json",
        ]
    )
    one_shot = json.loads(capsys.readouterr().out)
    assert code == 0
    assert np.array_equal(_png(files[1]), _png(one_shot["files"][0]))
    # Another checkpoint: loaded in the same worker. MLC_CKPT is taken per request.
    other = copy_model(tiny, tmp_path / "other")
    third = workers.json("--outdir", "reuse", ckpt=other)
    assert third["timings"]["load_s"] > 0 and third["worker"]["pid"] == pid
    p = subprocess.run(
        workers.argv("--json")[:3] + ["--H", str(SIZE), "--W", str(SIZE), "--ddim_steps", "2",
                                      "--n_samples", "1", "--n_iter", "1", "--json",
                                      "--outdir", "reuse"],
        capture_output=True, text=True, env=workers.env(MLC_CKPT=str(other)), cwd=workers.cwd,
        timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    fourth = json.loads(p.stdout)
    assert fourth["timings"]["load_s"] == 0 and fourth["model"] == "tiny"
    assert fourth["worker"]["pid"] == pid


def test_errors_match_the_one_shot_engine(warm: Workers, tiny: TinyModel, capsys):
    workers = warm
    workers.json("--outdir", "errors")
    missing = str(workers.cwd / "missing.safetensors")
    for args in (["--H", "63"], ["--sampler", "nope"], ["--ckpt", missing]):
        p = workers.run(*args)
        code = txt2img.main(["--ckpt", str(tiny.safetensors), "--n_samples", "1", *args])
        _, err = capsys.readouterr()
        assert (p.returncode, p.stderr) == (code, err)
        assert code in (1, 2) and len(err.splitlines()) == 1 and err.startswith("mlc-txt2img: ")
    assert workers.run("--H", "63").returncode == 2
    pid = workers.pid()
    assert pid is not None and _alive(pid)  # errors do not stop the worker


def test_a_request_from_a_missing_folder_is_one_error_line(warm: Workers):
    """The worker's own failures go through the same error table as the engine's."""
    from mlc.engine.client import connect
    from mlc.engine.protocol import send

    workers = warm
    workers.json("--outdir", "missing-cwd")  # the worker runs
    got = connect(workers.dir)
    assert got is not None
    sock, lines, hello = got
    with sock:
        request = {"op": "run", "argv": ["--n_samples", "1"], "cwd": "/nonexistent/where"}
        send(sock, {**request, "env": {}, "umask": 0o022, "idle": None, "tag": None})
        replies = [lines.next(), lines.next()]
    assert replies[0] is not None and replies[0]["err"].startswith(
        "mlc-txt2img: error: cannot enter /nonexistent/where: [Errno 2]"
    )
    assert replies[0]["err"].count("\n") == 1 and replies[1] == {"exit": 1}
    assert workers.pid() == hello["pid"] and _alive(hello["pid"])  # and it serves on


def test_stop_worker(workers: Workers):
    pid = workers.json()["worker"]["pid"]
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--stop-worker"],
        capture_output=True,
        text=True,
        env=workers.env(),
        timeout=60,
    )
    assert p.returncode == 0 and "stops" in p.stderr
    assert _wait_gone(pid)
    assert not (workers.dir / SOCKET).exists()
    assert "exits after" in (workers.dir / LOG).read_text()


def test_the_worker_does_not_keep_the_exec_tags(workers: Workers):
    """The host kills the processes whose environment holds MLC_EXEC=<its exec's tag> when
    that exec is interrupted: the worker, which outlives it, must never be one of them."""
    summary = workers.json(MLC_EXEC="exec-tag-1", MLC_REQUEST_TAG="req-tag-1")
    pid = summary["worker"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {item.partition(b"=")[0].decode() for item in raw if item}
    assert "MLC_EXEC" not in names and "MLC_REQUEST_TAG" not in names
    assert "MLC_WORKER_DIR" in names and "PATH" in names  # the rest is kept


def test_idle_exit(workers: Workers):
    first = workers.json("--idle", "2")
    pid = first["worker"]["pid"]
    assert _wait_gone(pid, 60)
    assert not (workers.dir / SOCKET).exists()
    assert "idle for 2 s: exiting" in (workers.dir / LOG).read_text()
    second = workers.json(MLC_WORKER_IDLE="30")  # started again on demand
    assert second["worker"]["pid"] != pid and second["timings"]["load_s"] > 0


def _kill_worker_at_first_image(workers: Workers, proc: subprocess.Popen, times: int) -> list[str]:
    """Kill the worker at the first image of each try (a retry resumes after the saved ones)."""
    assert proc.stderr is not None
    lines: list[str] = []
    kills = 0
    armed = True
    for line in proc.stderr:
        lines.append(line)
        if "restarting it and retrying" in line:
            armed = True
        elif line.startswith("[") and armed and kills < times:
            pid = workers.pid()
            assert pid is not None
            workers.pids.add(pid)
            os.kill(pid, signal.SIGKILL)
            kills += 1
            armed = False
    proc.wait(timeout=300)
    return lines


def test_restart_after_crashes(workers: Workers):
    pid = workers.json()["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)  # between requests: its socket stays behind, stale
    assert _wait_gone(pid)
    assert (workers.dir / SOCKET).exists()
    p = workers.run("--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["worker"]["pid"] != pid
    assert "restarting" not in p.stderr  # nothing was running: nothing to retry
    # During a request: the worker is started again and the request retried once.
    proc = workers.popen("--n_iter", "20")
    err = _kill_worker_at_first_image(workers, proc, times=1)
    assert proc.returncode == 0, err
    assert sum("stopped unexpectedly; restarting it and retrying" in e for e in err) == 1
    assert err[-1].startswith("[20/20]")
    # A second crash of the same request is one clear error.
    proc = workers.popen("--n_iter", "20")
    err = _kill_worker_at_first_image(workers, proc, times=2)
    assert proc.returncode == 1
    assert err[-1].startswith("mlc-txt2img: error: the engine worker stopped twice")
    assert "image" in err[-1] and "of this run" in err[-1]  # says what was kept
    assert "Traceback" not in "".join(err)


def test_concurrent_requests_queue(warm: Workers):
    workers = warm
    pid = workers.json("--outdir", "queue")["worker"]["pid"]
    long = workers.popen("--n_iter", "30", "--outdir", "queue")
    assert long.stderr is not None
    for line in long.stderr:
        if line.startswith("[1/"):
            break
    procs = [
        workers.popen("--json", "--n_iter", "2", "--seed", str(i), "--outdir", "queue")
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    long.wait(timeout=300)
    assert [p.returncode for p in (long, *procs)] == [0, 0, 0], results
    summaries = [json.loads(out) for out, _ in results]
    assert {s["worker"]["pid"] for s in summaries} == {pid}
    assert all(s["timings"]["load_s"] == 0 for s in summaries)
    assert all("waiting for the engine worker (" in err for _, err in results)
    files = [f for s in summaries for f in s["files"]]
    assert len(set(files)) == 4  # nothing overwritten, each numbered on its own
    names = sorted(p.name for p in (workers.cwd / "queue/samples").iterdir())
    assert names == [f"{i:05d}.png" for i in range(35)]


def test_ctrl_c_cancels_and_the_worker_stays(warm: Workers):
    workers = warm
    pid = workers.json("--outdir", "ctrl-c")["worker"]["pid"]
    proc = workers.popen("--n_iter", "40", "--outdir", "cancelled")
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("[1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130
    assert rest.strip().splitlines()[-1] == "mlc-txt2img: interrupted"
    after = workers.json("--outdir", "ctrl-c")
    assert after["worker"]["pid"] == pid and after["timings"]["load_s"] == 0
    made = list((workers.cwd / "cancelled" / "samples").glob("*.png"))
    assert 1 <= len(made) < 40  # the worker stopped the request
    log = (workers.dir / LOG).read_text()
    assert "the client left: cancelling the running request" in log
    assert "the client left: stopped " in log  # at a step, or before the next image


def test_cancel_by_tag_running_and_queued(warm: Workers):
    """What `mlc txt2img` does on Ctrl-C: docker exec passes no signals, so it cancels by tag."""
    workers = warm
    pid = workers.json("--outdir", "tagged")["worker"]["pid"]
    running = workers.popen("--n_iter", "40", "--outdir", "tagged", MLC_REQUEST_TAG="run-1")
    assert running.stderr is not None
    for line in running.stderr:
        if line.startswith("[1/"):
            break
    queued = workers.popen("--outdir", "tagged", MLC_REQUEST_TAG="queued-1")
    assert queued.stderr is not None
    assert queued.stderr.readline().startswith("mlc-txt2img: waiting for the engine worker")

    def cancel(tag: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "mlc.engine.client", "--cancel", tag],
            capture_output=True,
            text=True,
            env=workers.env(),
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return p.stderr

    assert cancel("queued-1") == "mlc-txt2img: cancelled\n"
    assert cancel("run-1") == "mlc-txt2img: cancelled\n"
    assert cancel("no-such-tag") == "mlc-txt2img: no such request\n"
    for proc in (running, queued):
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130
        assert rest.strip().splitlines()[-1] == "mlc-txt2img: interrupted"
    assert len(list((workers.cwd / "tagged" / "samples").glob("*.png"))) < 41
    assert workers.json("--outdir", "tagged")["worker"]["pid"] == pid


def test_cancel_works_in_a_worker_started_with_sigint_ignored(workers: Workers):
    """nohup, `&` in scripts and daemons hand their children SIGINT ignored; the worker's
    cancel (which simulates SIGINT in the engine) must work there too."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    running = subprocess.Popen(
        workers.argv("--n_iter", "40", "--outdir", "ignored"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=workers.env(MLC_REQUEST_TAG="bg-1"),
        cwd=workers.cwd,
        preexec_fn=ignore_sigint,
    )  # this client starts the worker, which inherits SIGINT ignored
    assert running.stderr is not None
    for line in running.stderr:
        if line.startswith("[1/"):
            break
    workers.note_pid()
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--cancel", "bg-1"],
        capture_output=True, text=True, env=workers.env(), timeout=60,
    )  # fmt: skip
    assert p.stderr == "mlc-txt2img: cancelled\n"
    rest = running.stderr.read()
    assert running.wait(timeout=120) == 130, rest
    assert len(list((workers.cwd / "ignored" / "samples").glob("*.png"))) < 40


def test_another_user_is_refused(warm: Workers, test_user: pwd.struct_passwd, shared_dir: Path):
    workers = warm
    pid = workers.json("--outdir", "refusal")["worker"]["pid"]
    d = workers.dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / SOCKET).stat().st_mode) == 0o600

    def as_user(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        extra = {
            "PYTHONPATH": str(shared_dir / "src"),
            "PATH": os.environ["PATH"],
            "HOME": test_user.pw_dir,
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        }
        return subprocess.run(
            ["runuser", "-u", test_user.pw_name, "--", "env", "-i",
             *[f"{k}={v}" for k, v in extra.items()], TEST_USER_PYTHON, *args],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip

    # The client refuses a worker folder that is not the user's own: one line, exit 1.
    p = as_user("-m", "mlc.engine.client", "--n_samples", "1", env={"MLC_WORKER_DIR": str(d)})
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "belongs to uid 0, not to you" in p.stderr
    # The folder cannot be entered, so the socket cannot be reached.
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
        "    print('connect:', type(e).__name__); sys.exit(3)\n"
        "print(s.makefile().readline().strip())\n"
    )
    p = as_user("-c", probe, str(d / SOCKET))
    assert (p.returncode, p.stdout.strip()) == (3, "connect: PermissionError")
    # Even with the folder and socket opened up, the worker checks the peer's uid.
    d.chmod(0o711)
    (d / SOCKET).chmod(0o666)
    try:
        p = as_user("-c", probe, str(d / SOCKET))
    finally:
        d.chmod(0o700)
        (d / SOCKET).chmod(0o600)
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply == {
        "error": f"this engine worker serves uid 0 only; refusing uid {test_user.pw_uid}"
    }
    assert "refused a connection from uid" in (d / LOG).read_text()
    after = workers.json("--outdir", "refusal")  # still serving its own user
    assert after["worker"]["pid"] == pid


def test_no_worker_and_usage_of_client_flags(workers: Workers):
    p = workers.run("--no-worker", "--json")
    assert p.returncode == 0, p.stderr
    assert "worker" not in json.loads(p.stdout)
    assert workers.pid() is None  # no worker was started
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--stop-worker"],
        capture_output=True,
        text=True,
        env=workers.env(),
        timeout=60,
    )
    assert p.returncode == 0 and "no engine worker is running" in p.stderr


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--idle", "soon"], "--idle must be a number of seconds >= 0, not 'soon'"),
        (["--idle=-1"], "--idle must be a number of seconds >= 0, not '-1'"),
        (["--idle", "inf"], "--idle must be a number of seconds >= 0, not 'inf'"),
        (["--cancel"], "--cancel needs a value"),
    ],
)
def test_client_flag_errors_are_usage_errors(capsys, monkeypatch, tmp_path, argv, line):
    """In process: checked before any folder or socket is touched; exit 2, one line."""
    from mlc.engine import client

    monkeypatch.setenv("MLC_WORKER_DIR", str(tmp_path / "w"))
    assert client.main(argv) == 2
    assert capsys.readouterr().err == f"mlc-txt2img: error: {line}\n"
    assert not (tmp_path / "w").exists()


def test_client_failures_are_worker_errors_in_the_one_tree(capsys, monkeypatch, tmp_path):
    from mlc.engine import client
    from mlc.errors import MlcError, WorkerError

    assert issubclass(WorkerError, MlcError)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MLC_WORKER_DIR", str(tmp_path / "file"))
    assert client.main(["--stop-worker"]) == 1
    folder = tmp_path / "file"
    assert capsys.readouterr().err == (
        f"mlc-txt2img: error: {folder} is not a folder; remove it or set MLC_WORKER_DIR\n"
    )


def test_the_client_imports_no_torch():
    code = "import sys, mlc.engine.client; print(sorted(m for m in sys.modules if m in "
    code += "('torch', 'diffusers', 'transformers', 'numpy', 'PIL')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def _status(d: Path) -> dict:
    """The worker's own answer to a ``status`` request (None-state when none listens)."""
    import socket

    from mlc.engine.protocol import Lines, send

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(d / SOCKET))
        lines = Lines(sock)
        assert "hello" in (lines.next() or {})
        send(sock, {"op": "status"})
        return (lines.next() or {})["status"]


def test_warm_loads_before_the_first_request_which_waits_for_it(workers: Workers):
    """`--warm` returns at once; the worker says `loading` then `ready MODEL` (status request
    and status.json agree); a request sent while it loads waits and does not load again."""
    from mlc.engine.protocol import STATUS

    ckpt = str(workers.tiny.safetensors)
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--warm", "--ckpt", ckpt],
        capture_output=True, text=True, env=workers.env(), cwd=workers.cwd, timeout=300,
    )  # fmt: skip
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    workers.note_pid()
    first = _status(workers.dir)
    assert first["state"] in ("starting", "idle", "loading", "ready")
    # A request right away: queued behind the load (no "ahead" line), served on that model.
    summary = workers.json("--outdir", "warm")
    assert summary["timings"]["load_s"] == 0, (workers.dir / LOG).read_text()
    assert summary["worker"]["pid"] == first["pid"]
    status = _status(workers.dir)
    assert status["state"] == "ready" and status["model"] == ckpt and status["busy"] is False
    on_disk = json.loads((workers.dir / STATUS).read_text())
    assert (on_disk["state"], on_disk["model"], on_disk["pid"]) == ("ready", ckpt, first["pid"])
    # After the idle exit the status file is gone with the worker.
    subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--stop-worker"],
        capture_output=True, env=workers.env(), timeout=60,
    )  # fmt: skip
    assert _wait_gone(first["pid"])
    assert not (workers.dir / STATUS).exists()


def test_warm_with_a_missing_model_leaves_an_idle_worker(workers: Workers):
    missing = str(workers.cwd / "missing.safetensors")
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--warm", "--ckpt", missing],
        capture_output=True, text=True, env=workers.env(), cwd=workers.cwd, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    workers.note_pid()
    deadline = time.monotonic() + 300  # imports alone: minutes when loaded
    # "idle" without a model is also the state before the warm request is taken: wait for
    # the failure in the log first, then the worker must be idle, holding no model
    while "pre-warm failed" not in (workers.dir / LOG).read_text():
        assert time.monotonic() < deadline, _status(workers.dir)
        time.sleep(0.2)
    while (status := _status(workers.dir))["state"] != "idle" or status["model"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
