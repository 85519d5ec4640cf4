"""Sharded runs (mlc.engine.scale) on two CPU devices: the same files as a one-device run,
a killed device's image requeued, --resume after an interrupted run, the flags' checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlc.engine import UsageError
from mlc.engine.options import parse
from mlc.engine.scale import expand_devices
from mlc.engine.scale.flags import parse_devices
from mlc.engine.scale.plan import Job, Plan, make_plan, save
from mlc.engine.scale.pool import exit_text, labels, visible_device

from .conftest import run_cli, small_run

PROMPTS = ["a red cube", "a blue ball", "a green cone"]
N_ITER = 4  # 12 images


def flags(tiny, prompts: Path, outdir: Path, *extra: str) -> list[str]:
    return [
        *small_run(tiny.safetensors),
        "--from-file",
        str(prompts),
        "--n_samples",
        "1",
        "--n_iter",
        str(N_ITER),
        "--outdir",
        str(outdir),
        *extra,
    ]


def samples(outdir: Path) -> dict[str, bytes]:
    """Every file in OUTDIR/samples (hidden ones too) by name."""
    folder = outdir / "samples"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tiny, prompts, tmp_path_factory) -> dict[str, bytes]:
    """The 12 samples of a plain one-device run."""
    out = tmp_path_factory.mktemp("one-device")
    r = run_cli(*flags(tiny, prompts, out, "--skip_grid"))
    assert r.returncode == 0, r.stderr
    files = samples(out)
    assert sorted(files) == [f"{i:05}.png" for i in range(12)]
    return files


def popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mlc.engine.txt2img", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_until(proc: subprocess.Popen, done, limit_s: float = 240) -> list[str]:
    """stderr lines until DONE(lines) is true (or the process ends)."""
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if done(lines):
            break
    return lines


def first_ready(lines: list[str]) -> tuple[str, int] | None:
    """(label, pid) of the first device that said it is ready."""
    for line in lines:
        if line.startswith("device ") and " ready (process " in line:
            label = line.split()[1]
            return label, int(line.rsplit(" ", 1)[1].rstrip(")"))
    return None


# -- end to end on two CPU devices -------------------------------------------------------------


def test_two_devices_give_the_one_device_files(tiny, prompts, reference, tmp_path):
    out = tmp_path / "out"
    r = run_cli(*flags(tiny, prompts, out, "--devices", "cpu,cpu", "--json"))
    assert r.returncode == 0, r.stderr
    assert samples(out) == reference  # names, bytes, metadata; the reservation is gone
    import json

    summary = json.loads(r.stdout)
    assert summary["seeds"] == list(range(42, 54))
    assert [d["device"] for d in summary["devices"]] == ["cpu#0", "cpu#1"]
    assert sum(d["made"] for d in summary["devices"]) == 12
    assert summary["failed"] == []
    assert (out / "grid-0000.png").exists()  # built at the end from the saved files
    assert "made 12 of 12 image(s)" in r.stderr


def test_a_killed_device_loses_nothing(tiny, prompts, reference, tmp_path):
    out = tmp_path / "out"
    proc = popen(flags(tiny, prompts, out, "--devices", "cpu,cpu", "--skip_grid"))
    try:  # kill the first device to work, once it has made an image and holds the next one
        lines = read_until(
            proc, lambda ls: first_ready(ls) and any(x.startswith("[1/12]") for x in ls)
        )
        assert first_ready(lines), "\n".join(lines)
        label, pid = first_ready(lines)
        os.kill(pid, signal.SIGKILL)
        _, rest = proc.communicate(timeout=240)
    finally:
        proc.kill()
    text = "\n".join([*lines, rest])
    assert proc.returncode == 0, text
    assert samples(out) == reference, text
    assert f"device {label} failed: its process was killed by SIGKILL" in text
    assert "is back in the queue" in text  # it held an image: requeued to the other device
    summary = text.strip().splitlines()[-1]
    assert summary.startswith("made 12 of 12 image(s)"), summary
    assert f"{label} " in summary and "failed: its process was killed by SIGKILL" in summary
    assert "1 image(s) requeued" in summary


def test_resume_after_an_interrupted_run_makes_only_the_rest(tiny, prompts, reference, tmp_path):
    out = tmp_path / "out"
    proc = popen(flags(tiny, prompts, out, "--devices", "cpu,cpu", "--skip_grid"))
    try:
        read_until(proc, lambda ls: sum(x.startswith("[") for x in ls) >= 3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    before = samples(out)
    made = {n: b for n, b in before.items() if n.endswith(".png")}
    assert 3 <= len(made) < 12, sorted(before)
    assert all(reference[n] == b for n, b in made.items())  # each at its planned name
    stamps = {n: (out / "samples" / n).stat().st_mtime_ns for n in made}

    r = run_cli(*flags(tiny, prompts, out, "--resume", "--skip_grid"))
    assert r.returncode == 0, r.stderr
    assert samples(out) == reference  # nothing more, nothing less, reservation released
    assert {n: (out / "samples" / n).stat().st_mtime_ns for n in made} == stamps
    assert f"{len(made)} already made (--resume)" in r.stderr
    assert f"made {12 - len(made)} of 12 image(s)" in r.stderr


def test_no_device_loads_reports_the_error_once(tiny, prompts, tmp_path):
    r = run_cli(*flags(tiny, prompts, tmp_path, "--devices", "cpu,cpu", "--C", "8"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("mlc-txt2img: error: --C 8 does not match")
    assert "Traceback" not in r.stderr


# -- the plan -------------------------------------------------------------------------------


def plan_for(outdir: Path, n: int = 3) -> Plan:
    spec = parse(["--prompt", "p", "--n_samples", "1", "--n_iter", str(n), "--outdir", str(outdir)])
    info = {"model": "m", "model_hash": "abc", "sampler": "ddim"}
    return make_plan(spec, info)


def test_the_plan_reserves_its_numbers_for_other_runs(tmp_path):
    from mlc.engine import outputs

    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "00004.png").write_bytes(b"x")
    plan = plan_for(tmp_path, 3)
    assert plan.base == 5 and plan.path(2).name == "00007.png"
    assert (tmp_path / "samples" / ".reserved-5-7").exists()
    assert outputs.sample_numbering(tmp_path).claim().name == "00008.png"  # past the range


def test_a_planned_name_is_never_overwritten(tmp_path):
    from PIL import Image

    plan = plan_for(tmp_path, 2)
    plan.path(0).write_bytes(b"someone else's file")
    plan.path(1).write_bytes(b"")  # a claim a killed process left: reused
    image = Image.new("RGB", (8, 8))
    path0, note0 = save(plan, plan.jobs[0], image)
    path1, note1 = save(plan, plan.jobs[1], image)
    assert plan.path(0).read_bytes() == b"someone else's file"
    assert path0.name == "00002.png" and "is another file" in (note0 or "")
    assert path1 == plan.path(1) and note1 is None and path1.stat().st_size > 0


def test_jobs_follow_the_classic_seeds(tmp_path):
    plan = plan_for(tmp_path, 3)
    assert plan.jobs == [Job(k, "p", "", 42 + k) for k in range(3)]


# -- devices and flags ------------------------------------------------------------------------


def test_devices_parse_and_expand():
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert expand_devices(["all"], cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert expand_devices(["cuda", "cpu"], cuda_count=0) == ["cuda:0", "cpu"]
    with pytest.raises(UsageError, match="no CUDA GPU"):
        expand_devices(["all"], cuda_count=0)
    for bad in ("gpu0", "cuda:0,cuda:0", "cuda,cuda:0", "mps,mps", ""):
        with pytest.raises(UsageError):
            parse_devices(bad)


def test_each_process_sees_its_gpu_as_cuda():
    assert visible_device("cuda:1", {}) == ("cuda", "1")
    assert visible_device("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,6"}) == ("cuda", "6")
    assert visible_device("cpu", {}) == ("cpu", None)
    assert labels(["cpu", "cpu", "cuda:0"]) == ["cpu#0", "cpu#1", "cuda:0"]
    assert exit_text(-9) == "its process was killed by SIGKILL"
    assert exit_text(3) == "its process exited with code 3"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "cpu,cpu", "--batched"], "--batched"),
        (["--devices", "cpu,cpu", "--x", "steps=1,2"], "--x/--y/--z"),
        (["--ray", "local", "--devices", "cpu"], "cannot be combined"),
        (["--ray_workers", "2"], "--ray_workers needs --ray"),
        (["--resume", "--skip_save"], "--skip_save"),
        (["--devices", "tpu"], "is not a device"),
    ],
)
def test_flag_conflicts_are_one_line(extra, message):
    with pytest.raises(UsageError, match="^.*" + message.replace("/", ".")):
        parse(["--prompt", "p", *extra])
    spec = parse(["--prompt", "p"])
    assert not spec.scaled


# -- Ray --------------------------------------------------------------------------------------


def test_ray_local_gives_the_one_device_files(tiny, prompts, reference, tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is missing (CI is set: make install installs the cluster extra)")
        pytest.skip("ray is not installed (pip install 'mlc-toolkit[cluster]')")
    out = tmp_path / "out"
    args = flags(tiny, prompts, out, "--ray", "local", "--ray_workers", "2", "--json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "mlc.engine.txt2img", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,  # the local cluster is started and stopped by the run itself
    )
    assert r.returncode == 0, r.stderr
    assert samples(out) == reference
    import json

    summary = json.loads(r.stdout)
    assert [d["device"] for d in summary["devices"]] == ["ray-cpu#0", "ray-cpu#1"]
    assert sum(d["made"] for d in summary["devices"]) == 12


def test_ray_missing_is_one_line(tiny, prompts, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    path = os.pathsep.join([str(hide), os.environ["PYTHONPATH"]])
    r = run_cli(*flags(tiny, prompts, tmp_path / "out", "--ray", "local"), env={"PYTHONPATH": path})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "mlc-txt2img: error: --ray needs Ray, which is not installed here "
        "(pip install 'mlc-toolkit[cluster]')"
    ]
    assert not (tmp_path / "out").exists()
