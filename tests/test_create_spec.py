"""`mlc create` before Docker: GPU and ulimit parsing (once), the spec, the retries a refused
start allows (each a new spec), the driver check, and the setup script as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlc import host
from mlc.catalog import Entry
from mlc.containers import creation, spec
from mlc.containers.spec import DEFAULT_ULIMITS, CreateSpec, Gpus, Ulimit, Ulimits
from mlc.errors import MlcError, UsageError

ENTRY = Entry("Pytorch", "test", ("CPU",), "mlctest/py311:bookworm-r1", min_driver="535")
USER = host.User("alice", 1234, 1234, Path("/home/alice"))


def make(**changes: object) -> CreateSpec:
    fields = {"name": "sd", "entry": ENTRY, "arch": "CPU", "user": USER, "workspace": Path("/w")}
    return CreateSpec(**{**fields, **changes})


@pytest.mark.parametrize(
    ("text", "count", "ids"),
    [
        (None, -1, ()),
        ("", -1, ()),
        ("all", -1, ()),
        ("'all'", -1, ()),
        ("none", 0, ()),
        ("2", 2, ()),
        ("0,1", 0, ("0", "1")),
        ("device=0, 3", 0, ("0", "3")),
        ("GPU-4a7b-99,MIG-1-2", 0, ("GPU-4a7b-99", "MIG-1-2")),
    ],
)
def test_gpu_selection(text, count, ids):
    g = Gpus.parse(text)
    assert (g.count, g.ids) == (count, ids)
    assert g.text == (text or "all")  # what the GPUS label keeps
    assert g.wanted == (count != 0 or bool(ids))


@pytest.mark.parametrize("text", ["foo,", "0,x", "device=", "GPU_1"])
def test_bad_gpu_selection(text):
    with pytest.raises(MlcError, match="invalid GPU selection.*all, a count"):
        Gpus.parse(text)


@pytest.mark.parametrize("text", ["0", " 0", "'0'"])
def test_gpu_zero_is_refused_as_ambiguous(text):
    """`-g 0` gave no GPUs while `mlc list` showed "0", and Docker's device ids read it as GPU
    0: ask which was meant (exit 2)."""
    with pytest.raises(UsageError, match=r"-g 0 is ambiguous \(use -g none .* -g device=0"):
        Gpus.parse(text)
    assert Gpus.parse("device=0").ids == ("0",)


def test_gpus_as_docker_device_requests():
    assert creation.device_requests(Gpus.parse("none")) == []
    (every,) = creation.device_requests(Gpus.parse("all"))
    assert every["Count"] == -1 and every["Capabilities"] == [["gpu"]]
    (two,) = creation.device_requests(Gpus.parse("2"))
    assert two["Count"] == 2
    (ids,) = creation.device_requests(Gpus.parse("0,1"))
    assert ids["DeviceIDs"] == ["0", "1"] and not ids.get("Count")


def test_ulimits():
    default = Ulimits.parse(DEFAULT_ULIMITS)
    assert default.items == (Ulimit("memlock", -1, -1), Ulimit("stack", 67108864, 67108864))
    assert Ulimits.parse("nofile=1024:4096").items == (Ulimit("nofile", 1024, 4096),)
    assert Ulimits.parse("none").items == () and Ulimits.parse("").items == ()
    less = default.without("memlock")
    assert less.names() == {"stack"} and default.names() == {"memlock", "stack"}
    assert less.text == default.text  # the text as given, for messages
    (lim,) = creation.docker_ulimits(Ulimits.parse("nofile=1024:4096"))
    assert (lim["Name"], lim["Soft"], lim["Hard"]) == ("nofile", 1024, 4096)
    for bad in ("memlock=lots", "stack", "nofile=1:x"):
        with pytest.raises(MlcError, match="invalid ulimit.*NAME=SOFT"):
            Ulimits.parse(bad)


def test_the_spec_writes_its_labels():
    out = make(gpus=Gpus.parse("0,1"), models=Path("/m")).labels().as_dict()
    assert out["aime.mlc.GPUS"] == "0,1" and out["aime.mlc.FRAMEWORK"] == "Pytorch-test"
    assert out["aime.mlc.IMAGE"] == ENTRY.reference and out["aime.mlc.MODELS_MOUNT"] == "/m"
    assert out["aime.mlc.DATA_MOUNT"] == "-" and out["aime.mlc.USER"] == "alice"
    assert make(data=Path("/d")).folders == [Path("/w"), Path("/d")]


NO_RUNTIME = 'could not select device driver "" with capabilities: [[gpu]]'


def test_no_gpu_runtime_falls_back_to_cpu_with_a_new_spec():
    asked = make()
    retry = spec.after_refused_start(asked, NO_RUNTIME)
    assert retry is not None and "CPU-only" in retry.warning
    assert retry.spec.gpus == spec.NO_GPUS and not retry.spec.gpus.wanted
    assert retry.spec.labels().gpus == "none"
    assert asked.gpus == Gpus.parse("all")  # the input is unchanged
    assert spec.after_refused_start(retry.spec, NO_RUNTIME) is None  # no GPUs: nothing to drop


def test_explicit_gpus_without_runtime_are_an_error():
    with pytest.raises(MlcError, match=r"cannot give the container GPUs \(device=0\).*-g none"):
        spec.after_refused_start(make(gpus=Gpus.parse("device=0"), gpus_explicit=True), NO_RUNTIME)


def test_driver_requirement_error_names_the_minimum():
    reason = "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.1"
    with pytest.raises(MlcError, match="NVIDIA driver is too old .*needs driver >= 535"):
        spec.after_refused_start(make(), reason)


def test_memlock_refused_drops_memlock_in_a_new_spec():
    asked = make()
    retry = spec.after_refused_start(asked, "error setting rlimit type 8: operation not permitted")
    assert retry is not None and retry.warning is None
    assert retry.spec.ulimits.names() == {"stack"}
    assert asked.ulimits.names() == {"memlock", "stack"}  # the input is unchanged
    explicit = make(ulimits=Ulimits.parse("memlock=1024"), ulimits_explicit=True)
    with pytest.raises(MlcError, match="refused the ulimits memlock=1024"):
        spec.after_refused_start(explicit, "rlimit")
    assert spec.after_refused_start(make(), "port is already allocated") is None


@pytest.fixture
def one_image_catalog(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text("images: [{framework: Pytorch, version: test, arch: [CPU], image: 'x/y:1'}]\n")
    monkeypatch.setenv("MLC_CATALOG", str(path))
    monkeypatch.setenv("MLC_ARCH", "CPU")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return path


def test_new_spec_checks_everything_before_docker(tmp_path, one_image_catalog):
    ws = tmp_path / "a" / "ws"
    s = spec.new_spec("sd", "pytorch", "test", workspace=ws, data=Path("rel"), gpus=None)
    assert s.entry.image == "x/y:1" and s.arch == "CPU" and s.user == host.current_user()
    assert s.workspace == ws and not ws.exists()  # nothing made yet
    assert s.data == Path("rel").resolve() and s.models is None
    assert s.gpus == Gpus.parse("all") and not s.gpus_explicit
    assert s.ulimits == Ulimits.parse(DEFAULT_ULIMITS) and not s.ulimits_explicit
    s = spec.new_spec("sd", "Pytorch", "test", workspace=ws, gpus="none", ulimits="none")
    assert not s.gpus.wanted and s.gpus_explicit and s.ulimits_explicit and not s.ulimits.items


def test_new_spec_fails_on_flags_before_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("MLC_CATALOG", str(tmp_path / "missing.yaml"))  # read only after the flags
    with pytest.raises(MlcError, match="invalid container name"):
        spec.new_spec("bad#name", "Pytorch", "test", workspace=tmp_path)
    with pytest.raises(MlcError, match="invalid GPU selection"):
        spec.new_spec("sd", "Pytorch", "test", workspace=tmp_path, gpus="foo,")
    with pytest.raises(MlcError, match="invalid ulimit"):
        spec.new_spec("sd", "Pytorch", "test", workspace=tmp_path, ulimits="memlock=lots")
    with pytest.raises(MlcError, match="cannot read catalog"):
        spec.new_spec("sd", "Pytorch", "test", workspace=tmp_path)


def test_new_spec_refuses_a_file_as_a_folder(tmp_path, one_image_catalog):
    afile = tmp_path / "file"
    afile.write_text("x")
    for key in ("workspace", "data", "models"):
        kwargs = {"workspace": tmp_path / "ws", key: afile}
        with pytest.raises(MlcError, match=f"{key} path .* is a file, not a directory"):
            spec.new_spec("sd", "Pytorch", "test", **kwargs)


def test_driver_check_with_a_stand_in_nvidia_smi(tmp_path, monkeypatch):
    """No NVIDIA driver here: a stand-in nvidia-smi reports the version, as in test_containers."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$*" in *driver_version*) echo 470.57.02;; esac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(MlcError, match="driver 470.57.02 is too old for .*: it needs >= 535"):
        spec.check_driver(ENTRY)
    spec.check_driver(Entry("Pytorch", "old", ("CPU",), "x", min_driver="470.57"))
    spec.check_driver(Entry("Pytorch", "any", ("CPU",), "x"))  # no minimum: nothing to check
    monkeypatch.setenv("PATH", "/nonexistent")
    spec.check_driver(ENTRY)  # no driver: nothing to check


def test_setup_script_is_package_data_and_gets_its_values_as_arguments():
    script = creation.setup_script()
    assert script.startswith("# Root-side setup") and "U=$1; UID_=$2; GID_=$3; MARK=$4" in script
    sh = shutil.which("sh")
    assert sh
    assert subprocess.run([sh, "-n", "-c", script]).returncode == 0
    odd = host.User("o'neil; rm -rf /", 1001, 1002, Path("/home/x"))
    cmd = creation.setup_command(make(user=odd))
    assert cmd[:2] == ["sh", "-c"] and cmd[2] == script
    assert cmd[3:] == ["mlc-setup", "o'neil; rm -rf /", "1001", "1002", creation.SETUP_MARK]
    # the shell sees each value whole, whatever it holds
    probe = [sh, "-c", 'printf "%s|" "$1" "$2" "$3" "$4"', *cmd[3:]]
    assert subprocess.run(probe, capture_output=True, text=True).stdout == (
        f"o'neil; rm -rf /|1001|1002|{creation.SETUP_MARK}|"
    )


def test_version_key():
    assert host.version_key("550.54.15") == (550, 54, 15)
    assert host.version_key("2.1.0+cu121") == (2, 1, 0)  # a local version part is ignored
    assert host.version_key(None) == (0,)
    assert host.version_key("470.57.02") < host.version_key("535")
    assert host.version_key("3.9") < (3, 10) <= host.version_key("3.10")
