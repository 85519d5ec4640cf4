"""`mlc export` / `mlc import`: the file format (without Docker), and round trips through the
real engine: what was installed and the state record survive, the workspace is neither
touched nor carried unless asked, and a file that is not an intact export is refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mlc.archive import exporting, folders
from mlc.archive.fileformat import FORMAT, HEADER, SUMS, Reader, Writer
from mlc.containers import snapshot
from mlc.errors import ChecksumError, MlcError, NotFoundError
from mlc.progress import NullProgress

# -- the file format, without Docker ---------------------------------------------------------


def _write(path: Path, members: dict[str, bytes], header: dict | None = None) -> None:
    w = Writer(path)
    w.add_bytes(HEADER, json.dumps(header or {"kind": "mlc-export", "format": FORMAT}).encode())
    for name, data in members.items():
        w.add_bytes(name, data)
    w.commit()


def _read_all(path: Path) -> dict[str, bytes]:
    out = {}
    with Reader(path) as r:
        for info, data in r.members():
            out[info.name] = data.read() if data else b""
    return out


@pytest.mark.parametrize("name", ["x.mlc.tar", "x.mlc.tar.gz"])
def test_written_file_reads_back(tmp_path, name):
    path = tmp_path / name
    members = {"image/a": b"a" * 5000, "image/b": b"", "workspace/c": os.urandom(70000)}
    _write(path, members)
    assert _read_all(path) == members
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    with tarfile.open(path) as tar:  # a plain tar: header first, sums last
        names = tar.getnames()
        assert names[0] == HEADER and names[-1] == SUMS
        sums = tar.extractfile(SUMS).read().decode()
    assert set(line.split("  ")[1] for line in sums.splitlines()) == {HEADER, *members}


def test_writer_never_replaces_a_file(tmp_path):
    path = tmp_path / "x.tar"
    path.write_text("mine")
    with pytest.raises(MlcError, match="already exists"):
        Writer(path)
    assert path.read_text() == "mine"
    w = Writer(tmp_path / "y.tar")
    w.add_bytes(HEADER, b"{}")
    (tmp_path / "y.tar").write_text("appeared meanwhile")
    with pytest.raises(MlcError, match="already exists"):
        w.commit()
    assert (tmp_path / "y.tar").read_text() == "appeared meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar", "y.tar"]  # no .part left
    with pytest.raises(MlcError, match="does not exist"):
        Writer(tmp_path / "no" / "such" / "z.tar")


def test_not_an_export(tmp_path):
    cases = {
        "empty": b"",
        "random": os.urandom(4096),
        "text": b"hello\n" * 100,
    }
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for path in [other, *(tmp_path / n for n in cases)]:
        with pytest.raises(MlcError, match="is not an mlc export"):
            Reader(path)
    with pytest.raises(NotFoundError, match="no such file"):
        Reader(tmp_path / "absent.tar")
    wrong_kind = tmp_path / "kind.tar"
    _write(wrong_kind, {}, {"kind": "something-else", "format": 1})
    with pytest.raises(MlcError, match="is not an mlc export"):
        Reader(wrong_kind)


def test_newer_format_is_refused_at_once(tmp_path):
    path = tmp_path / "new.tar"
    _write(path, {"image/x": b"x"}, {"kind": "mlc-export", "format": FORMAT + 1})
    with pytest.raises(MlcError) as err:
        Reader(path)
    assert (
        f"written by a newer mlc (export format {FORMAT + 1}; this mlc reads format {FORMAT})"
        in str(err.value)
    )
    assert "upgrade mlc" in str(err.value)


def _flip(path: Path, member: str, at: int = 10) -> None:
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data + at
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_truncated_and_extended_files(tmp_path):
    good = tmp_path / "good.tar"
    _write(good, {"image/layer.tar": os.urandom(100_000), "image/manifest.json": b"[]"})
    raw = good.read_bytes()

    changed = tmp_path / "changed.tar"
    changed.write_bytes(raw)
    _flip(changed, "image/layer.tar", 5000)
    with pytest.raises(ChecksumError, match="sha256 of image/layer.tar is [0-9a-f]{64}, its list"):
        _read_all(changed)

    noted = tmp_path / "noted.tar"
    _write(noted, {"image/x": b"x"}, {"kind": "mlc-export", "format": FORMAT, "note": "aaaa"})
    data = noted.read_bytes()
    noted.write_bytes(data.replace(b'"aaaa"', b'"aaab"', 1))  # still JSON, not the same
    with pytest.raises(ChecksumError, match=f"sha256 of {HEADER} is"):
        _read_all(noted)

    with tarfile.open(good) as tar:
        sums_at = tar.getmember(SUMS).offset  # a cut right before the sums: a clean tar end
    for cut in (len(raw) // 2, sums_at, sums_at + 600, 1024 + 512):
        short = tmp_path / f"short{cut}.tar"
        short.write_bytes(raw[:cut])
        with pytest.raises(MlcError, match="truncated or damaged"):
            _read_all(short)

    # a member added after the writer was done (the file re-packed with one more)
    extended = tmp_path / "extended.tar"
    with tarfile.open(good) as src, tarfile.open(extended, "w") as dst:
        for info in src.getmembers():
            if info.name == SUMS:
                extra = tarfile.TarInfo("workspace/extra")
                extra.size = 3
                dst.addfile(extra, io.BytesIO(b"new"))
            dst.addfile(info, src.extractfile(info))
    with pytest.raises(ChecksumError, match="workspace/extra is not in its list of sums"):
        _read_all(extended)


def test_gzip_cut_short(tmp_path):
    path = tmp_path / "x.tar.gz"
    _write(path, {"image/layer.tar": os.urandom(300_000)})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(MlcError, match="truncated or damaged"):
        _read_all(path)


def test_folder_contents_round_trip_and_never_replace(tmp_path):
    src = tmp_path / "ws"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "deeper" / "b.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "run.sh").chmod(0o755)
    os.symlink("sub/deeper/b.bin", src / "link")
    os.symlink("/models/elsewhere", src / "abs-link")
    path = tmp_path / "f.tar"
    w = Writer(path)
    w.add_bytes(HEADER, json.dumps({"kind": "mlc-export", "format": FORMAT}).encode())
    assert folders.pack(w, src, "workspace", NullProgress()) == 7
    w.commit()

    dest = tmp_path / "new-ws"
    plan = folders.Plan({"workspace": dest})
    with Reader(path) as r:
        for info, _ in r.members():
            plan.check(info, "f.tar")
    with Reader(path) as r:
        for info, data in r.members():
            plan.unpack(info, data, NullProgress())
    assert (dest / "a.txt").read_text() == "alpha"
    assert (dest / "sub/deeper/b.bin").read_bytes() == (src / "sub/deeper/b.bin").read_bytes()
    assert os.access(dest / "sub" / "run.sh", os.X_OK)
    assert os.readlink(dest / "link") == "sub/deeper/b.bin"
    assert os.readlink(dest / "abs-link") == "/models/elsewhere"

    again = folders.Plan({"workspace": dest})  # everything is there now: refused up front
    with Reader(path) as r, pytest.raises(MlcError, match="already exists"):
        for info, _ in r.members():
            again.check(info, "f.tar")


@pytest.mark.parametrize(
    ("name", "kind", "needle"),
    [
        ("workspace/../../etc/passwd", tarfile.REGTYPE, "points outside"),
        ("workspace/a/../../x", tarfile.REGTYPE, "points outside"),
        ("workspace/dev", tarfile.CHRTYPE, "not a file, folder or symlink"),
        ("workspace/l/x", tarfile.REGTYPE, "lies under a symlink"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, name, kind, needle):
    plan = folders.Plan({"workspace": tmp_path / "ws"})
    link = tarfile.TarInfo("workspace/l")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    plan.check(link, "f")
    info = tarfile.TarInfo(name)
    info.type = kind
    with pytest.raises(MlcError, match=needle):
        plan.check(info, "f")


def test_mount_hints_and_config_rewrite(tmp_path):
    home = Path("/home/alice")
    assert exporting.hint("/home/alice/sd/ws", home) == "~/sd/ws"
    assert exporting.hint("/home/alice", home) == "~"
    assert exporting.hint("/srv/data", home) == "/srv/data"
    assert exporting.hint("-", home) is None
    base = snapshot.Base("repo:1", "sha256:" + "b" * 64, (), ("sha256:" + "c" * 64,))
    saved = {
        "config": {"Env": ["HTTP_PROXY=http://corp:3128", "MLC_CONTAINER=old"], "User": "1000"},
        "container_config": {"Env": ["SECRET=1"]},
        "container": "abc",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "c" * 64, "sha256:" + "d" * 64]},
        "history": [{"created_by": "x"}],
    }
    out = json.loads(snapshot.rewrite_config(saved, {"Env": ["PATH=/usr/bin"]}, base))
    assert out["config"]["Env"] == ["PATH=/usr/bin"]
    assert "User" not in out["config"] and "container_config" not in out and "container" not in out
    assert out["config"]["Labels"] == {
        snapshot.BASE_ID_LABEL: base.id,
        snapshot.BASE_REF_LABEL: "repo:1",
    }
    assert out["rootfs"] == saved["rootfs"] and out["history"] == saved["history"]


# -- the real engine ---------------------------------------------------------------------------


def _one_line(r, *needles: str) -> str:
    assert r.code != 0
    assert "Traceback" not in r.err
    lines = [line for line in r.err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mlc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _create(mlc, name: str, ws: Path, version: str = "test", env=None) -> bool:
    r = mlc("create", name, "Pytorch", version, "-w", str(ws), "-g", "none", env=env)
    assert r.code == 0, r.err
    return True


def _container(docker_client, name: str):
    return docker_client.containers.get(f"{name}._.{os.getuid()}")


def _provision(docker_client, name: str, env: dict[str, str]) -> dict:
    """Install the engine as `mlc setup` does and record a model: what an export must keep."""
    code = f"""
import json
from mlc import containers, host, provision
dc = containers.client()
c = containers.find(dc, {name!r}, host.current_user())
containers.start(c)
state = provision.load_state(c)
provision.install_engine(c, provision.find_python(c), state)
state["ckpt"] = "/models/demo/model.safetensors"
state["models"] = {{"demo": state["ckpt"]}}
provision.save_state(c, state)
print(json.dumps(provision.load_state(c)))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _state(mlc, name: str) -> dict:
    r = mlc("open", name, "--", "cat", "/etc/mlc/state.json")
    assert r.code == 0, r.err
    return json.loads(r.out)


@pytest.fixture
def other(docker_client, name):
    """A second container name, removed afterwards with its imported image."""
    value = f"{name}-imp"
    yield value
    for c in docker_client.containers.list(all=True, filters={"label": f"aime.mlc.NAME={value}"}):
        c.remove(force=True)
    for image in docker_client.images.list(snapshot.IMPORT_REPO):
        if any(value in t for t in image.tags):
            docker_client.images.remove(image.id, force=True)


@pytest.mark.docker
def test_round_trip_keeps_installs_and_state_not_the_workspace(
    mlc, name, other, tmp_path, docker_client, base_image
):
    ws = tmp_path / "ws"
    assert mlc("create", name, "Pytorch", "test", "-w", str(ws), "-g", "none").code == 0
    (ws / "mine.txt").write_text("stays at home")
    r = mlc("open", name, "--", "sh", "-c", "echo installed > /usr/local/share/mlc-marker")
    assert r.code == 0, r.err
    state = _provision(docker_client, name, mlc.env)
    assert state["engine"]["digest"] and state["ckpt"]
    before = (ws / "mine.txt").stat()

    out = tmp_path / "sd.mlc.tar"
    r = mlc("export", name, str(out))
    assert r.code == 0, r.err
    assert f"[{name}] exported to {out}" in r.out and f"above {base_image}" in r.out
    with tarfile.open(out) as tar:
        names = tar.getnames()
        head = json.load(tar.extractfile(HEADER))
    assert not [n for n in names if n.startswith(("workspace", "models", "data"))]
    layers = [n for n in names if n.endswith("layer.tar") or "/blobs/" in n]
    assert len(layers) == 1  # only the container's own changes, not the 250 MB base
    base_size = docker_client.images.get(base_image).attrs["Size"]
    assert out.stat().st_size < base_size / 5
    assert head["name"] == name and head["framework"] == "Pytorch" and head["version"] == "test"
    assert head["state"] == state and head["engine"] == state["engine"]
    assert head["mounts"]["workspace"] == str(ws) and head["mounts"]["data"] is None
    assert head["base"]["id"] == docker_client.images.get(base_image).id
    assert head["labels"]["name"] == name and head["labels"]["gpus"] == "none"

    # the same file again: refused, the file untouched
    first = out.read_bytes()
    _one_line(mlc("export", name, str(out)), "already exists")
    assert out.read_bytes() == first
    # importing onto its own name: refused before anything is made
    _one_line(mlc("import", str(out)), f"container '{name}' already exists")

    ws2 = tmp_path / "ws2"
    r = mlc("import", str(out), other, "-w", str(ws2))
    assert r.code == 0, r.err
    assert f"[{other}] imported from {out}" in r.out
    assert "model /models/demo/model.safetensors is not here" in r.err  # no models came along
    c = _container(docker_client, other)
    assert c.labels["aime.mlc.FRAMEWORK"] == "Pytorch-test"
    assert c.labels["aime.mlc.WORK_MOUNT"] == str(ws2)
    assert c.labels["aime.mlc.GPUS"] == "none"
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert env["MLC_CONTAINER"] == other  # the exporting container's settings stayed there
    script = (
        "cat /usr/local/share/mlc-marker; command -v mlc-txt2img; "
        "python3 -c 'import mlc.engine.options as o; print(o.__file__)'; ls -A /workspace"
    )
    r = mlc("open", other, "--", "sh", "-c", script)
    assert r.code == 0, r.err
    marker, launcher, engine, *listing = r.out.splitlines()
    assert (marker, launcher) == ("installed", "/usr/local/bin/mlc-txt2img")
    assert engine.startswith("/opt/mlc/lib/mlc/engine/")
    assert listing == []  # the new workspace is empty: the old one's files were not carried
    assert _state(mlc, other) == state
    assert (ws / "mine.txt").read_text() == "stays at home"
    assert (ws / "mine.txt").stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in ws.iterdir()) == ["mine.txt"]

    # importing twice under the same new name: refused, the first import untouched
    _one_line(mlc("import", str(out), other, "-w", str(tmp_path / "ws3")), "already exists")
    assert not (tmp_path / "ws3").exists()

    # the re-export of an imported container still sits on the original base
    again = tmp_path / "again.mlc.tar"
    r = mlc("export", other, str(again))
    assert r.code == 0 and f"above {base_image}" in r.out, r.err
    # `mlc remove` takes the imported image with it
    image = c.attrs["Config"]["Image"]
    assert image == f"{snapshot.IMPORT_REPO}:{other}._.{os.getuid()}"
    assert mlc("remove", other, "-f").code == 0
    assert not docker_client.images.list(snapshot.IMPORT_REPO, filters={"reference": image})


@pytest.mark.docker
def test_with_workspace_gzip_and_no_overwrite(mlc, name, other, tmp_path, docker_client):
    """The workspace's files only with --with-workspace; unpacked where the hint says (under
    the importer's home, as it was under the exporter's), and never over a file."""
    ws = mlc.home / "proj"
    assert mlc("create", name, "Pytorch", "test", "-w", str(ws), "-g", "none").code == 0
    (ws / "code" / "pkg").mkdir(parents=True)
    (ws / "code" / "pkg" / "train.py").write_text("print('train')\n")
    (ws / "big.bin").write_bytes(os.urandom(200_000))
    os.symlink("code/pkg/train.py", ws / "train-link")
    out = tmp_path / "sd.tar.gz"
    r = mlc("export", name, str(out), "--with-workspace")
    assert r.code == 0, r.err
    assert "its workspace files" in r.out
    assert out.read_bytes()[:2] == b"\x1f\x8b"

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "big.bin").write_text("do not touch")
    r = mlc("import", str(out), other, "-w", str(taken))
    _one_line(r, "big.bin", "already exists")
    assert (taken / "big.bin").read_text() == "do not touch"
    assert not docker_client.containers.list(all=True, filters={"name": f"^{other}"})
    assert not docker_client.images.list(f"{snapshot.IMPORT_REPO}:{other}._.{os.getuid()}")

    home2 = tmp_path / "home2"
    home2.mkdir()
    r = mlc("import", str(out), other, env={"HOME": str(home2)})
    assert r.code == 0, r.err
    assert "unpacked its workspace" in r.out
    ws2 = home2 / "proj"
    assert _container(docker_client, other).labels["aime.mlc.WORK_MOUNT"] == str(ws2)
    assert (ws2 / "code" / "pkg" / "train.py").read_text() == "print('train')\n"
    assert (ws2 / "big.bin").read_bytes() == (ws / "big.bin").read_bytes()
    assert os.readlink(ws2 / "train-link") == "code/pkg/train.py"
    r = mlc("open", other, "--", "python3", "/workspace/train-link")
    assert (r.code, r.out) == (0, "train\n")


@pytest.mark.docker
def test_damaged_files_are_refused(mlc, name, other, tmp_path, docker_client):
    assert (
        mlc("create", name, "Pytorch", "test", "-w", str(tmp_path / "ws"), "-g", "none").code == 0
    )
    assert mlc("open", name, "--", "sh", "-c", "echo x > /usr/local/share/x").code == 0
    out = tmp_path / "sd.mlc.tar"
    assert mlc("export", name, str(out)).code == 0
    with tarfile.open(out) as tar:
        layer = next(n for n in tar.getnames() if n.endswith(".tar"))
    raw = out.read_bytes()

    bad = tmp_path / "bad.tar"
    bad.write_bytes(raw)
    _flip(bad, layer, 600)
    _one_line(mlc("import", str(bad), other), "was changed or damaged", f"sha256 of {layer}")
    short = tmp_path / "short.tar"
    short.write_bytes(raw[: len(raw) // 2])
    _one_line(mlc("import", str(short), other), "truncated or damaged")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(10_000))
    _one_line(mlc("import", str(junk), other), "is not an mlc export")
    newer = tmp_path / "newer.tar"
    _write(newer, {}, {"kind": "mlc-export", "format": 99})
    _one_line(mlc("import", str(newer), other), "newer mlc (export format 99")
    _one_line(mlc("import", str(tmp_path / "absent.tar"), other), "no such file")
    assert not docker_client.containers.list(all=True, filters={"name": f"^{other}"})
    assert not docker_client.images.list(f"{snapshot.IMPORT_REPO}:{other}._.{os.getuid()}")


@pytest.mark.docker
def test_base_missing_here_and_with_base(mlc, name, other, tmp_path, docker_client, base_image):
    """A thin export needs its base image's layers on the importing host; --with-base carries
    them, for a base that no registry has."""
    image = f"mlctest/export-base:{name}"
    docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {base_image}\nRUN echo {name} > /base-mark\n".encode()),
        tag=image, rm=True,
    )  # fmt: skip
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(
        f"images: [{{framework: Pytorch, version: local, arch: [CPU], image: '{image}'}}]\n"
    )
    env = {"MLC_CATALOG": str(catalog)}
    try:
        r = mlc(
            "create", name, "Pytorch", "local", "-w", str(tmp_path / "ws"), "-g", "none", env=env
        )
        assert r.code == 0, r.err
        thin, full = tmp_path / "thin.tar", tmp_path / "full.tar"
        assert mlc("export", name, str(thin), env=env).code == 0
        r = mlc("export", name, str(full), "--with-base", env=env)
        assert r.code == 0 and "every layer of its image" in r.out, r.err
        assert full.stat().st_size > thin.stat().st_size * 10
        assert mlc("remove", name, "-f", env=env).code == 0
        docker_client.images.remove(image)

        r = mlc("import", str(thin), other)
        _one_line(r, f"the image {image}", "not on this host", "--with-base")
        r = mlc("import", str(full), other, "-w", str(tmp_path / "ws2"))
        assert r.code == 0, r.err
        r = mlc("open", other, "--", "cat", "/base-mark")
        assert (r.code, r.out) == (0, f"{name}\n")
    finally:
        mlc("remove", name, "-f", env=env)
        if docker_client.images.list(image):
            docker_client.images.remove(image, force=True)


@pytest.mark.docker
def test_import_is_for_the_importing_user(
    mlc, name, other, tmp_path, test_user, user_dir, docker_client
):
    """Exported by root, imported by the test user: the container is theirs (their uid, their
    workspace), with the same installs."""
    assert (
        mlc("create", name, "Pytorch", "test", "-w", str(tmp_path / "ws"), "-g", "none").code == 0
    )
    assert mlc("open", name, "--", "sh", "-c", "echo root-made > /usr/local/share/m").code == 0
    out = user_dir / "sd.mlc.tar"
    assert mlc("export", name, str(out)).code == 0
    os.chown(out, test_user.pw_uid, test_user.pw_gid)
    # the exporter's workspace (under root's private tmp folder) is no place for this user
    r = mlc.as_user(test_user.pw_name, "import", str(out), other)
    _one_line(r, "workspace folder")
    assert not docker_client.images.list(f"{snapshot.IMPORT_REPO}:{other}._.{test_user.pw_uid}")
    ws = user_dir / "ws"
    r = mlc.as_user(test_user.pw_name, "import", str(out), other, "-w", str(ws))
    assert r.code == 0, r.err
    assert ws.stat().st_uid == test_user.pw_uid
    r = mlc.as_user(test_user.pw_name, "open", other, "--", "sh", "-c",
                    "id -un; id -u; cat /usr/local/share/m; touch /workspace/t")  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.split() == [test_user.pw_name, str(test_user.pw_uid), "root-made"]
    assert (ws / "t").stat().st_uid == test_user.pw_uid
    c = docker_client.containers.get(f"{other}._.{test_user.pw_uid}")
    assert c.labels["aime.mlc.USER"] == test_user.pw_name
    assert mlc.as_user(test_user.pw_name, "remove", other, "-f").code == 0


@pytest.mark.docker
def test_interrupted_export_leaves_nothing(mlc, name, tmp_path, docker_client):
    """SIGTERM while the image is committed and saved: no file, no .part, no image left."""
    assert _create(mlc, name, tmp_path / "ws")
    out = tmp_path / "sd.mlc.tar"
    p = subprocess.Popen(
        [sys.executable, "-m", "mlc", "export", name, str(out), "--with-base"],
        env=mlc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "saving every layer of its image" in line, line
    p.terminate()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and err.strip().endswith("mlc: interrupted (SIGTERM)"), err
    assert sorted(tmp_path.iterdir()) == [tmp_path / "home", tmp_path / "ws"]
    comments = [i.attrs.get("Comment") for i in docker_client.images.list(all=True)]
    assert f"mlc export of {name}" not in comments
