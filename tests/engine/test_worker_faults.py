"""Faults of the warm worker, with real processes, signals and a real memory cgroup: a client
killed by SIGTERM or SIGHUP cancels like Ctrl-C, --stop-worker and SIGTERM stop the running
request between two steps and exit, a worker killed mid-request is resumed after its last
saved image, an out-of-memory kill says so, and output arrives in whole lines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlc.engine.outputs import read_metadata
from mlc.engine.protocol import LOG

from .conftest import TinyModel
from .test_worker import Workers, _alive, _wait_gone, _workers


@pytest.fixture
def workers(tiny: TinyModel, tmp_path: Path) -> Iterator[Workers]:
    """A worker folder of its own (for tests that stop or kill the worker)."""
    yield from _workers(tiny, tmp_path / "work")


@pytest.fixture(scope="module")
def warm(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """One worker shared by the tests that leave it running (each uses its own --outdir)."""
    yield from _workers(tiny, tmp_path_factory.mktemp("warm-faults") / "work")


def _client(workers: Workers, *args: str) -> list[str]:
    return [sys.executable, "-m", "mlc.engine.client", *args]


def _read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting {prefix!r}: {''.join(seen)}")


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


LONG = ("--n_samples", "1", "--n_iter", "1", "--H", "256", "--W", "256", "--ddim_steps", "500")
"""One image with many steps: a stop that waits for it to end is plain to see."""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_client_killed_by_sigterm_or_sighup_cancels_like_ctrl_c(warm: Workers, signum: int):
    """`timeout`, `kill`, a CI limit, a closed terminal or a dropped SSH session: the request
    cancelled as by Ctrl-C, the worker free and still loaded; exit 128 + N as the host's."""
    workers = warm
    pid = workers.json("--outdir", "signals")["worker"]["pid"]
    out = f"killed-{signum}"
    proc = workers.popen("--n_iter", "40", "--ddim_steps", "10", "--outdir", out)
    _read_until(proc, "[1/")
    proc.send_signal(signum)
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signum, rest
    name = signal.Signals(signum).name
    assert rest.strip().splitlines()[-1] == f"mlc-txt2img: interrupted ({name})"
    after = workers.json("--outdir", "signals")  # served at once: nothing runs before it
    assert after["worker"]["pid"] == pid and after["timings"]["load_s"] == 0
    assert 1 <= len(_pngs(workers.cwd / out / "samples")) < 40
    # inside a step or between two images, as the signal's timing falls
    assert "the client left: stopped " in (workers.dir / LOG).read_text()


def _stop_while_running(workers: Workers, stop) -> tuple[str, str]:
    """Start LONG and a queued request, call STOP once LONG runs; both clients' stderr."""
    running = workers.popen(*LONG, "--outdir", "long")
    _read_until(running, "model ")  # loaded; its 500 steps have begun
    workers.note_pid()
    queued = workers.popen("--outdir", "queued")
    _read_until(queued, "mlc-txt2img: waiting for the engine worker")
    stop()
    results = []
    for proc in (running, queued):
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, err
        assert err.strip().splitlines()[-1] == "mlc-txt2img: interrupted"
        results.append(err)
    assert _pngs(workers.cwd / "long" / "samples") == []  # stopped inside its only image
    assert _pngs(workers.cwd / "queued" / "samples") == []
    return results[0], results[1]


def _stopped_at(err: str, reason: str) -> int:
    match = re.search(
        rf"note: {re.escape(reason)}: stopped at step (\d+)/500 of image 1/1; 0 images", err
    )
    assert match, err
    return int(match.group(1))


def test_stop_worker_cancels_the_running_request_and_exits_now(workers: Workers):
    """Not after the queue: the running request stops after its current step."""
    holder: dict[str, subprocess.CompletedProcess] = {}

    def stop() -> None:
        holder["p"] = subprocess.run(
            _client(workers, "--stop-worker"),
            capture_output=True, text=True, env=workers.env(), timeout=60,
        )  # fmt: skip

    pid = workers.json()["worker"]["pid"]
    running, queued = _stop_while_running(workers, stop)
    assert holder["p"].stderr == (
        f"mlc-txt2img: the engine worker (pid {pid}) stops now (2 requests cancelled)\n"
    )
    assert _stopped_at(running, "the engine worker is stopping (--stop-worker)") < 500
    assert "cancelled before it started" in queued
    assert _wait_gone(pid)


def test_sigterm_to_the_worker_cancels_and_exits(workers: Workers):
    pid = workers.json()["worker"]["pid"]
    running, queued = _stop_while_running(workers, lambda: os.kill(pid, signal.SIGTERM))
    assert _stopped_at(running, "the engine worker is stopping (SIGTERM)") < 500
    assert "the engine worker is stopping (SIGTERM)" in queued
    assert _wait_gone(pid)
    assert "exits after" in (workers.dir / LOG).read_text()


def test_a_worker_killed_mid_request_is_resumed_after_its_last_saved_image(workers: Workers):
    """Killed after 5 images: the retry makes only the other 15, seeds continuing; no seed is
    made twice and no file written twice."""
    workers.json("--outdir", "warm-up")
    proc = workers.popen("--n_iter", "20", "--ddim_steps", "10", "--outdir", "resumed")
    seen = _read_until(proc, "[5/20]")
    pid = workers.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, rest
    note = re.search(r"retrying the request, resuming after its (\d+) saved", rest)
    assert note, rest
    resumed = int(note.group(1))
    assert resumed >= 5  # what the worker said it saved before it died (5, or 6 just then)
    assert f"note: resuming: {resumed} image(s) of this run were saved" in rest
    progress = [ln for ln in "".join(seen).splitlines() + rest.splitlines() if ln[:1] == "["]
    assert [ln.split("]")[0] for ln in progress] == [f"[{k}/20" for k in range(1, 21)]
    files = _pngs(workers.cwd / "resumed" / "samples")
    assert [f.name for f in files] == [f"{k:05}.png" for k in range(20)]
    assert sorted(read_metadata(f)[1]["seed"] for f in files) == list(range(42, 62))


def test_a_grid_whose_worker_was_killed_resumes_after_its_saved_cells(workers: Workers):
    workers.json("--outdir", "warm-up")
    proc = workers.popen(
        "--x", "seed=1,2,3,4,5,6,7,8", "--ddim_steps", "10", "--outdir", "grid", "--json"
    )
    cells = workers.cwd / "grid" / "samples"
    while len(_pngs(cells)) < 3:  # the saved cells show how far it is
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pid = workers.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed"] >= 3 and f"resuming after its {summary['resumed']} saved" in err
    assert [c["seed"] for c in summary["cells"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [Path(f).name for f in summary["files"]] == [f"{k:05}.png" for k in range(8)]
    assert len(_pngs(cells)) == 8  # no cell made twice
    page = Path(workers.cwd, summary["explorer"]).read_text()  # (Workers runs --skip_grid)
    assert all(f"samples/{k:05}.png" in page for k in range(8))


def test_the_clients_own_lines_never_land_in_the_middle_of_a_line(capsys):
    from mlc.engine import client

    client._write(sys.stdout, "half a line from the worker")
    client._write(sys.stderr, "and another")
    client._say("note: the engine worker stopped unexpectedly")
    client._write(sys.stderr, "[2/3] ...\n")
    client._say("waiting for the engine worker (1 request ahead)")
    out, err = capsys.readouterr()
    assert out == "half a line from the worker\n"
    assert err == (
        "and another\nmlc-txt2img: note: the engine worker stopped unexpectedly\n"
        "[2/3] ...\nmlc-txt2img: waiting for the engine worker (1 request ahead)\n"
    )


def test_the_worker_streams_whole_lines_and_each_saved_image(warm: Workers):
    """Raw protocol: every out/err message ends a line (print writes a line in two pieces);
    an ``image`` message per PNG, as soon as it is written, before its progress line."""
    from mlc.engine.client import connect
    from mlc.engine.protocol import send

    workers = warm
    workers.json("--outdir", "lines")
    got = connect(workers.dir)
    assert got is not None
    sock, lines, _ = got
    argv = workers.argv("--n_iter", "3", "--outdir", "lines")[3:]
    with sock:
        request = {"op": "run", "argv": argv, "cwd": str(workers.cwd), "env": {}}
        send(sock, {**request, "umask": 0o022, "idle": None, "tag": None})
        messages = []
        while (msg := lines.next()) is not None:
            messages.append(msg)
            if "exit" in msg:
                break
    assert messages[-1] == {"exit": 0}
    texts = [m.get("out") or m.get("err") for m in messages if "out" in m or "err" in m]
    assert texts and all(t.endswith("\n") for t in texts), texts
    assert "".join(m["out"] for m in messages if "out" in m).startswith("Your samples are ready")
    images = [m["image"] for m in messages if "image" in m]
    assert [Path(e["file"]).name for e in images] == ["00001.png", "00002.png", "00003.png"]
    assert [e["seed"] for e in images] == [42, 43, 44]
    order = [
        ("image", m["image"]["seed"]) if "image" in m else m.get("err", "")[:3] for m in messages
    ]
    for k, seed in enumerate((42, 43, 44), 1):  # each image's event comes before its line
        assert order.index(("image", seed)) < order.index(f"[{k}/")


# -- out of memory: a real memory cgroup (v1, or v2) with a limit -------------------------


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A memory cgroup of its own under this process's (root only); emptied and removed."""
    from mlc.engine.oomkill import memory_cgroups

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the out-of-memory test makes a memory cgroup: run it as root")
        pytest.skip("the out-of-memory test makes a memory cgroup: root only")
    parent = next(
        (f for f, counter, _ in memory_cgroups() if (f / counter).is_file() and f.is_dir()), None
    )
    if parent is None or not os.access(parent, os.W_OK):
        pytest.skip("no writable memory cgroup here")
    group = parent / f"mlct-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        procs = group / "cgroup.procs"
        for _ in range(50):
            pids = [int(p) for p in procs.read_text().split()]
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            _wait_gone(pids[0], 5)
        with contextlib.suppress(OSError):
            group.rmdir()


def test_an_out_of_memory_kill_is_reported_as_such(workers: Workers, memory_cgroup: Path):
    """The kernel kills the worker mid-request: one line that says memory (and the limit),
    not a retry and not "stopped twice; see a log"."""
    v1 = (memory_cgroup / "memory.limit_in_bytes").exists()
    limit_file = memory_cgroup / ("memory.limit_in_bytes" if v1 else "memory.max")
    usage_file = memory_cgroup / ("memory.usage_in_bytes" if v1 else "memory.current")
    procs = str(memory_cgroup / "cgroup.procs")

    def join_cgroup() -> None:  # in the client before exec: its worker is born inside
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    def client(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            workers.argv(*args), capture_output=True, text=True, env=workers.env(),
            cwd=workers.cwd, timeout=300, preexec_fn=join_cgroup,
        )  # fmt: skip

    first = client("--json", "--outdir", "fits")
    assert first.returncode == 0, first.stderr
    pid = json.loads(first.stdout)["worker"]["pid"]
    workers.pids.add(pid)
    assert str(pid) in Path(procs).read_text().split()
    # The loaded worker fits; 150 MB more does not fit a 1024x1024 decode.
    limit = int(usage_file.read_text()) + 150 * 2**20
    limit_file.write_text(str(limit))
    p = client("--H", "1024", "--W", "1024", "--ddim_steps", "2", "--outdir", "big")
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines()[-1] == (
        "mlc-txt2img: error: the engine worker ran out of memory and was killed by the kernel "
        f"(its memory limit: {limit / 2**20:.0f} MiB); no image of this run was saved (try a "
        "smaller --H/--W, a smaller --n_samples with --batched, or --low_vram; or give the "
        "container more memory)"
    )
    assert "restarting" not in p.stderr and "Traceback" not in p.stderr
    assert not _alive(pid)
