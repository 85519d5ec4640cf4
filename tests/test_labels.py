"""The container contract without Docker: the label table, names, ownership, and the Container
object's properties over Docker's own container model built from plain attrs."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest
from docker.models.containers import Container as DockerContainer

from mlc.containers import Container, labels
from mlc.containers.labels import Labels, new_labels
from mlc.errors import MlcError

# What test_containers checks on a real container made by `mlc create`.
WRITTEN_KEYS = (
    "aime.mlc",
    "aime.mlc.NAME",
    "aime.mlc.USER",
    "aime.mlc.MLC_VERSION",
    "aime.mlc.FRAMEWORK",
    "aime.mlc.GPUS",
    "aime.mlc.ARCH",
    "aime.mlc.WORK_MOUNT",
    "aime.mlc.DATA_MOUNT",
    "aime.mlc.MODELS_MOUNT",
    "aime.mlc.IMAGE",
    "mlc.schema",
)

# What AIME's bash mlc-create writes (no IMAGE, no mlc.schema).
AIME_LABELS = {
    "aime.mlc": "alice",
    "aime.mlc.NAME": "sd",
    "aime.mlc.USER": "alice",
    "aime.mlc.MLC_VERSION": "4",
    "aime.mlc.FRAMEWORK": "Pytorch-2.5.1",
    "aime.mlc.GPUS": "all",
    "aime.mlc.WORK_MOUNT": "/home/alice/ws",
    "aime.mlc.DATA_MOUNT": "-",
    "aime.mlc.MODELS_MOUNT": "-",
    "aime.mlc.ARCH": "CUDA_ADA",
}


def written() -> Labels:
    return new_labels(
        name="sd",
        user="alice",
        framework="Pytorch-2.9.1",
        gpus="0,1",
        arch="CUDA_ADA",
        workspace=Path("/home/alice/ws"),
        data=None,
        models=Path("/srv/models"),
        image="aimehub/pytorch:2.9.1",
    )


def docker_container(
    docker_name: str, label_map: dict[str, str], status: str = "running", **config: object
) -> DockerContainer:
    """Docker SDK's own container model over ATTRS as `docker inspect` gives them."""
    attrs = {
        "Id": "f" * 64,
        "Name": f"/{docker_name}",
        "Config": {"Labels": label_map, "Image": config.get("image", "img:1"), "User": "1000:1000"},
        "State": {"Status": status, "StartedAt": "2026-01-01T00:00:00Z"},
        "HostConfig": {"DeviceRequests": config.get("devices")},
    }
    return DockerContainer(attrs=attrs)


def test_one_table_one_dataclass():
    assert set(labels.TABLE) == {f.name for f in dataclasses.fields(Labels)}
    assert len(set(labels.TABLE.values())) == len(labels.TABLE)  # no key spelled twice


def test_written_labels_are_aime_labels_plus_the_schema():
    out = written().as_dict()
    assert tuple(out) == WRITTEN_KEYS
    assert out["aime.mlc"] == out["aime.mlc.USER"] == "alice"
    assert out["aime.mlc.NAME"] == "sd" and out["aime.mlc.MLC_VERSION"] == "4"
    assert out["aime.mlc.FRAMEWORK"] == "Pytorch-2.9.1" and out["aime.mlc.GPUS"] == "0,1"
    assert out["aime.mlc.WORK_MOUNT"] == "/home/alice/ws"
    assert out["aime.mlc.DATA_MOUNT"] == "-"  # AIME's spelling of "no mount"
    assert out["aime.mlc.MODELS_MOUNT"] == "/srv/models"
    assert out["mlc.schema"] == labels.SCHEMA_VERSION


def test_labels_round_trip_and_ignore_others():
    lab = written()
    assert Labels.read(lab.as_dict()) == lab
    assert Labels.read({**lab.as_dict(), "com.example": "x"}) == lab
    assert Labels.read(None) == Labels() and not Labels().is_mlc
    aime = Labels.read(AIME_LABELS)
    assert aime.is_mlc and aime.image is None and aime.schema is None
    assert aime.as_dict() == AIME_LABELS


def test_mounts_models_first_unset_ones_skipped():
    assert written().mounts == [
        (Path("/srv/models"), PurePosixPath("/models")),
        (Path("/home/alice/ws"), PurePosixPath("/workspace")),
    ]
    assert Labels.read(AIME_LABELS).mounts == [
        (Path("/home/alice/ws"), PurePosixPath("/workspace"))
    ]
    assert Labels().mounts == []


def test_names():
    assert labels.tag("sd", 1000) == "sd._.1000"
    assert labels.bare_name("sd._.1000") == "sd" and labels.bare_name("legacy") == "legacy"
    labels.validate_name("sd-1.x_y")
    with pytest.raises(MlcError, match="must not contain '._.'"):
        labels.validate_name("a._.b")
    with pytest.raises(MlcError, match="invalid container name 'bad#name'.*letters, digits"):
        labels.validate_name("bad#name")
    with pytest.raises(MlcError, match="invalid container name '-x'"):
        labels.validate_name("-x")


def test_ownership():
    mine = Labels.read(AIME_LABELS)
    assert labels.owned_by(mine, "sd._.1000", "alice", 1000)
    assert labels.owned_by(mine, "sd", "alice", 1000)  # a legacy bare name
    assert not labels.owned_by(mine, "sd._.1001", "alice", 1000)  # same name, other uid
    assert not labels.owned_by(mine, "sd._.1000", "bob", 1000)
    only_owner = Labels(owner="alice", name="sd")  # AIME v1 wrote the owner label only
    assert labels.owned_by(only_owner, "sd._.1000", "alice", 1000)


def test_container_properties_from_an_aime_made_container():
    c = Container(docker_container("sd._.1000", AIME_LABELS, status="created"))
    assert (c.name, c.user, c.framework, c.version) == ("sd", "alice", "Pytorch", "2.5.1")
    assert (c.status, c.gpus, c.workspace, c.data, c.models) == (
        "created",
        "all",
        "/home/alice/ws",
        "-",
        "-",
    )
    assert c.docker_name == "sd._.1000" and c.exec_user == "1000:1000"
    assert not c.has_gpus  # labelled "all", but Docker has no device requests
    row = c.describe()
    assert row == {
        "name": "sd",
        "framework": "Pytorch",
        "version": "2.5.1",
        "status": "created",
        "user": "alice",
        "workspace": "/home/alice/ws",
        "data": "-",
        "models": "-",
        "gpus": "all",
        "arch": "CUDA_ADA",
        "image": "img:1",
        "container": "sd._.1000",
        "mlc_schema": None,
    }


def test_container_defaults_when_labels_are_missing():
    c = Container(docker_container("legacy", {"aime.mlc": "bob"}))
    assert (c.name, c.user, c.framework, c.version) == ("legacy", "bob", "", "")
    assert (c.workspace, c.data, c.models, c.gpus, c.mounts) == ("", "-", "-", "", [])
    gpu = Container(docker_container("g._.1", {"aime.mlc.GPUS": "0"}, devices=[{"Count": 1}]))
    assert gpu.has_gpus
    none = Container(docker_container("n._.1", {"aime.mlc.GPUS": "none"}, devices=[{"C": 1}]))
    assert not none.has_gpus


def test_old_mlc_gpu_zero_lists_as_none():
    """mlc's old `-g 0` gave no GPUs while `mlc list` showed "0"; with device requests (AIME's
    GPU 0) it stays as labelled."""
    for label, devices, shown in (
        ("0", None, "none"),
        ("'0'", None, "none"),
        ("0", [{"Count": 1}], "0"),
        ("0,1", None, "0,1"),
    ):
        c = Container(docker_container("z._.1", {"aime.mlc.GPUS": label}, devices=devices))
        assert (c.gpus, c.has_gpus) == (shown, devices is not None)


def test_the_worker_folder_and_prewarm_labels():
    lab = labels.new_labels(
        name="sd", user="alice", framework="Pytorch-2.9.1", gpus="all", arch="CUDA_ADA",
        workspace=Path("/home/alice/ws"), data=None, models=None, image="img:1",
        worker=Path("/home/alice/.local/state/mlc/workers/sd"), prewarm=False,
    )  # fmt: skip
    out = lab.as_dict()
    assert out["mlc.worker"] == "/home/alice/.local/state/mlc/workers/sd"
    assert out["mlc.prewarm"] == "off" and not lab.prewarms
    assert Labels.read(out) == lab
    assert written().prewarms and "mlc.prewarm" not in written().as_dict()
    assert Labels.read(AIME_LABELS).prewarms and Labels.read(AIME_LABELS).worker is None
