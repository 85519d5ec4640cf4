"""Pinned images: catalog digests, `mlc images`' PINNED column, `update-sys` keeping digests,
and `mlc create` using only the pinned image (the real engine and the local test image, whose
pin is its image ID: it was never pushed, so it has no registry digest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docker.models.images import Image

from httpserver import FileServer
from mlc import catalog, cli
from mlc.containers import images
from mlc.errors import MlcError

SRC = Path(__file__).resolve().parents[1] / "src"
GOOD = "sha256:" + "ab" * 32
WRONG = "sha256:" + "1" * 64


def _mlc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "mlc", *args], capture_output=True, text=True, env=full
    )


def _one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("mlc: error:"), err
    assert sum(line.startswith("mlc: error:") for line in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


# -- the catalog ---------------------------------------------------------------------------


def test_pin_comes_from_the_digest_or_the_image_reference():
    text = (
        "images:\n"
        f"  - {{framework: A, version: '1', arch: [CPU], image: 'x/y:1', digest: '{GOOD}'}}\n"
        f"  - {{framework: A, version: '2', arch: [CPU], image: 'x/y@{GOOD}'}}\n"
        "  - {framework: A, version: '3', arch: [CPU], image: 'x/y:3'}\n"
    )
    one, two, three = catalog.parse_yaml(text, "t").entries
    assert (one.pin, one.reference) == (GOOD, f"x/y:1@{GOOD}")
    assert (two.pin, two.reference) == (GOOD, f"x/y@{GOOD}")
    assert (three.pin, three.reference) == (None, "x/y:3")
    assert one.as_dict()["digest"] == GOOD


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("image: 'x/y:1', digest: 'sha256:abc'", "is not sha256: and 64"),
        ("image: 'x/y:1', digest: 'md5:" + "a" * 32 + "'", "is not sha256: and 64"),
        (f"image: 'x/y:1', digest: '{GOOD.upper()}'", "is not sha256: and 64"),
        ("image: 'x/y@sha256:zz'", "is not sha256: and 64"),
        (f"image: 'x/y@{GOOD}', digest: '{WRONG}'", "two different digests"),
    ],
)
def test_bad_digest_is_one_line(tmp_path, monkeypatch, capsys, entry, needle):
    path = tmp_path / "catalog.yaml"
    path.write_text(f"images: [{{framework: A, version: '1', arch: [CPU], {entry}}}]\n")
    monkeypatch.setenv("MLC_CATALOG", str(path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    code = cli.run(["images", "--arch", "CPU"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"mlc: error: catalog {path}") and needle in err, err


def test_images_shows_whether_an_entry_is_pinned(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "images:\n"
        f"  - {{framework: A, version: '1', arch: [CPU], image: 'x/y:1', digest: '{GOOD}'}}\n"
        "  - {framework: A, version: '2', arch: [CPU], image: 'x/y:2'}\n"
    )
    env = {"MLC_CATALOG": str(path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    r = _mlc("images", "--arch", "CPU", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if "FRAMEWORK" in line).split()
    assert header[-2:] == ["PINNED", "IMAGE"]
    rows = {line.split()[1]: line.split() for line in lines if line.split()[:1] == ["A"]}
    assert rows["1"][-2:] == [GOOD[:19], "x/y:1"]
    assert rows["2"][-2:] == ["-", "x/y:2"]
    listed = json.loads(_mlc("images", "--arch", "CPU", "--json", env=env).stdout)
    assert [e.get("digest") for e in listed if e["framework"] == "A"] == [GOOD, None]


def test_update_sys_keeps_digests(tmp_path):
    body = (
        "images:\n"
        f"  - {{framework: A, version: '1', arch: [CPU], image: 'x/y:1', digest: '{GOOD}'}}\n"
        "  - {framework: A, version: '2', arch: [CPU], image: 'x/y:2'}\n"
    ).encode()
    env = {"XDG_DATA_HOME": str(tmp_path), "MLC_ARCH": "CPU"}
    with FileServer({"/catalog.yaml": body}) as srv:
        r = _mlc("update-sys", "--url", srv.url("/catalog.yaml"), env=env)
        assert r.returncode == 0, r.stderr
        # a second, forced update rewrites the stored copy from the source: still pinned
        r = _mlc("update-sys", "--url", srv.url("/catalog.yaml"), "--force", env=env)
        assert r.returncode == 0, r.stderr
    stored = catalog.load_file(tmp_path / "mlc" / "catalog.yaml")
    assert [(e.version, e.digest) for e in stored.entries] == [("1", GOOD), ("2", None)]
    listed = json.loads(_mlc("images", "--json", env=env).stdout)
    assert {e["version"]: e.get("digest") for e in listed if e["framework"] == "A"} == {
        "1": GOOD,
        "2": None,
    }


def test_pinned_by_an_id_or_a_repo_digest():
    """A registry digest needs a registry to appear in RepoDigests (none here): the check is
    over the image's attributes as the engine reports them."""
    pulled = Image(
        attrs={"Id": "sha256:" + "c" * 64, "RepoDigests": [f"x/y@{GOOD}", f"mirror/y@{WRONG}"]}
    )
    assert images.pinned_by(pulled, GOOD) and images.pinned_by(pulled, WRONG)
    assert images.pinned_by(pulled, "sha256:" + "c" * 64)
    assert not images.pinned_by(pulled, "sha256:" + "d" * 64)
    assert images.digest_of(pulled, "mirror/y") == WRONG
    assert images.digest_of(pulled, "x/y") == GOOD
    built = Image(attrs={"Id": "sha256:" + "e" * 64, "RepoDigests": []})
    assert images.digest_of(built, "x/y") == built.id
    assert images.repository("reg.example:5000/a/b:tag@" + GOOD) == "reg.example:5000/a/b"
    assert images._split_ref(f"a/b:1@{GOOD}") == ("a/b", GOOD)


# -- the real engine -------------------------------------------------------------------------


def _catalog(tmp_path: Path, image: str, digest: str, extra: str = "") -> dict[str, str]:
    path = tmp_path / "pinned.yaml"
    path.write_text(
        f"images: [{{framework: Pytorch, version: pinned, arch: [CPU], image: '{image}', "
        f"digest: '{digest}'{extra}}}]\n"
    )
    return {"MLC_CATALOG": str(path)}


@pytest.mark.docker
def test_create_uses_the_pinned_local_image(mlc, name, tmp_path, docker_client, base_image):
    """A local image (never pushed) is pinned by its image ID: create uses exactly it."""
    image_id = docker_client.images.get(base_image).id
    env = _catalog(tmp_path, base_image, image_id)
    r = mlc("create", name, "Pytorch", "pinned", "-w", str(tmp_path / "ws"), env=env)
    assert r.code == 0, r.err
    assert f"{base_image}@{image_id}" in r.out
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    assert c.attrs["Image"] == image_id
    assert c.attrs["Config"]["Image"] == image_id  # created from the ID: no tag to move
    assert c.labels["aime.mlc.IMAGE"] == f"{base_image}@{image_id}"
    r = mlc("images", "--arch", "CPU", env=env)
    assert image_id[:19] in r.out
    assert mlc("open", name, "--", "true", env=env).code == 0


@pytest.mark.docker
def test_wrong_digest_is_refused_naming_both(mlc, name, tmp_path, docker_client, base_image):
    image_id = docker_client.images.get(base_image).id
    ws = tmp_path / "ws"
    r = mlc(
        "create",
        name,
        "Pytorch",
        "pinned",
        "-w",
        str(ws),
        env=_catalog(tmp_path, base_image, WRONG),
    )
    line = _one_line(r.err, "does not match the catalog's digest", WRONG, image_id, base_image)
    assert "pull" in line  # the pinned one could not be fetched either
    assert not docker_client.containers.list(all=True, filters={"name": f"^{name}"})
    assert not ws.exists()  # nothing was made


@pytest.mark.docker
def test_built_image_with_another_digest_is_refused(mlc, name, tmp_path, docker_client, base_image):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo {name} > /built\n")
    image = f"mlctest/pinned-build:{name}"
    build = f", build: {{dockerfile: {recipe}/Dockerfile}}"
    env = _catalog(tmp_path, image, WRONG, build)
    try:
        r = mlc("create", name, "Pytorch", "pinned", "-w", str(tmp_path / "ws"), "--build", env=env)
        built = docker_client.images.get(image).id
        _one_line(r.err, "does not match the catalog's digest", WRONG, built)
        assert not docker_client.containers.list(all=True, filters={"name": f"^{name}"})
        # pinned to what was built: used as is, not built again
        env = _catalog(tmp_path, image, built, build)
        r = mlc("create", name, "Pytorch", "pinned", "-w", str(tmp_path / "ws"), env=env)
        assert r.code == 0, r.err
        assert docker_client.containers.get(f"{name}._.{os.getuid()}").attrs["Image"] == built
    finally:
        mlc("remove", name, "-f", env=env)
        docker_client.images.remove(image, force=True)


def test_mismatch_message():
    entry = catalog.Entry("A", "1", ("CPU",), "x/y:1", digest=GOOD)
    err = images.mismatch(entry, WRONG, "the pull failed: offline")
    assert isinstance(err, MlcError)
    assert str(err).startswith(
        f"image x/y:1 does not match the catalog's digest: the catalog pins {GOOD}, "
        f"the image here is {WRONG} (the pull failed: offline)"
    )
