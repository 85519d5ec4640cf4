"""mlc.fetch against a real local HTTP server: download, resume, verify, unpack, install."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from httpserver import FileServer, free_port
from mlc import fetch
from mlc.errors import MlcError
from mlc.fetch import files
from mlc.recipes import Recipe

CKPT = "fake-model/model.ckpt"
ZIP_PATH = "/public/models/fake-model.zip"


def _zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights() -> bytes:
    return os.urandom(300_000)  # incompressible, so the zip is ~300 kB too


@pytest.fixture(scope="module")
def archive(weights: bytes) -> bytes:
    return _zip({CKPT: weights, "fake-model/LICENSE.txt": b"licence text\n"})


@pytest.fixture
def server(archive: bytes):
    with FileServer({ZIP_PATH: archive}) as srv:
        yield srv


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.ENV_MIRROR, raising=False)


def recipe(url: str, **kw) -> Recipe:
    fields = dict(
        name="fake",
        description="a fake model",
        licence="none",
        source="download",
        urls=(url,),
        archive="zip",
        files=(CKPT,),
        ckpt=CKPT,
    )
    fields.update(kw)
    return Recipe(**fields)


def install(r: Recipe, models: Path, **kw) -> fetch.InstallResult:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 2)
    return fetch.install(r, models, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (state file included) with its bytes."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() if not p.is_symlink() else b"->"
        for p in sorted(root.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.name != fetch.LOCK_FILE
    }


def leftovers(root: Path) -> list[str]:
    """Staging dirs, .part files and downloads that should not survive an install."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(fetch.STAGE_PREFIX)
        or p.name.endswith(".part")
        or p.name == fetch.DOWNLOADS_DIR
    )


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None, int]] = []
        self.advanced = 0
        self.notes: list[str] = []

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self.tasks.append((description, total, completed))

    def advance(self, n: int) -> None:
        self.advanced += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> None:
        pass


# --------------------------------------------------------------------------- install


def test_full_download_installs_and_records_sha(server, archive, weights, models, capsys):
    progress = Recorder()
    result = install(recipe(server.url(ZIP_PATH)), models, progress=progress)

    assert (models / CKPT).read_bytes() == weights
    assert (models / "fake-model/LICENSE.txt").read_bytes() == b"licence text\n"
    assert result.downloaded and not result.skipped and result.source == "download"
    assert result.ckpt == models / CKPT
    assert result.sha256 == hashlib.sha256(archive).hexdigest()
    assert result.sha256_recorded  # the recipe had none
    assert result.archive is None and leftovers(models) == []
    state = json.loads((models / fetch.STATE_FILE).read_text())
    entry = state["models"]["fake"]
    assert entry["sha256"] == result.sha256
    assert entry["files"][CKPT]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert entry["files"][CKPT]["size"] == len(weights)
    assert ("Downloading fake", len(archive), 0) in progress.tasks
    assert progress.advanced >= len(archive)
    assert capsys.readouterr() == ("", "")  # library code prints nothing


def test_rerun_downloads_nothing(server, models):
    r = recipe(server.url(ZIP_PATH))
    install(r, models)
    seen = len(server.requests)
    again = install(r, models)
    assert again.skipped and not again.downloaded and again.source == "present"
    assert len(server.requests) == seen


def test_changed_file_is_installed_again(server, weights, models):
    r = recipe(server.url(ZIP_PATH))
    install(r, models)
    (models / CKPT).write_bytes(b"x" * len(weights))  # same size, new mtime, wrong bytes
    again = install(r, models)
    assert again.downloaded and not again.skipped
    assert (models / CKPT).read_bytes() == weights
    assert len(server.gets()) == 2


def test_recorded_sha_is_enforced_on_later_downloads(server, models):
    r = recipe(server.url(ZIP_PATH))
    install(r, models)
    (models / CKPT).unlink()
    server.files[ZIP_PATH] = _zip({CKPT: b"other weights"})
    with pytest.raises(MlcError, match="checksum mismatch") as err:
        install(r, models)
    assert "--force" in str(err.value)
    assert install(r, models, force=True).sha256_recorded


def test_resume_after_connection_drop(server, archive, models):
    server.drop_after = 100_000
    result = install(recipe(server.url(ZIP_PATH)), models, keep_archive=True)

    gets = server.gets(ZIP_PATH)
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == "bytes=100000-" and gets[1].status == 206
    assert result.resumed
    assert result.archive is not None and result.archive.read_bytes() == archive
    assert result.sha256 == hashlib.sha256(archive).hexdigest()


def test_resume_across_runs_from_part_file(server, archive, models):
    part = models / fetch.DOWNLOADS_DIR / "fake-model.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive[:50_000])
    result = install(recipe(server.url(ZIP_PATH)), models, keep_archive=True)
    assert server.gets()[0].range == "bytes=50000-"
    assert result.archive.read_bytes() == archive


def test_server_ignoring_range_restarts_cleanly(server, archive, models):
    server.drop_after = 100_000
    server.ignore_range = True
    result = install(recipe(server.url(ZIP_PATH)), models, keep_archive=True)
    gets = server.gets()
    assert [g.status for g in gets] == [200, 200]
    assert gets[1].range == "bytes=100000-"  # asked, was refused, started over
    assert result.archive.read_bytes() == archive


def test_changed_upstream_file_restarts_via_if_range(server, archive, models):
    part = models / fetch.DOWNLOADS_DIR / "fake-model.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"old version of the file")
    (part.parent / (part.name + ".json")).write_text(json.dumps({"validator": '"old-etag"'}))
    result = install(recipe(server.url(ZIP_PATH)), models, keep_archive=True)
    assert server.gets()[0].if_range == '"old-etag"' and server.gets()[0].status == 200
    assert result.archive.read_bytes() == archive


def test_complete_part_file_and_416(server, archive, models):
    part = models / fetch.DOWNLOADS_DIR / "fake-model.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive)  # interrupted just before the rename
    result = install(recipe(server.url(ZIP_PATH)), models)
    assert [g.status for g in server.gets()] == [416]
    assert result.sha256 == hashlib.sha256(archive).hexdigest()


def test_too_long_part_file_and_416_restarts(server, archive, models):
    part = models / fetch.DOWNLOADS_DIR / "fake-model.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive + b"junk")
    install(recipe(server.url(ZIP_PATH)), models)
    assert [g.status for g in server.gets()] == [416, 200]
    assert (models / CKPT).is_file()


def test_wrong_checksum_installs_nothing_and_keeps_previous(server, archive, weights, models):
    install(recipe(server.url(ZIP_PATH)), models)
    before = snapshot(models)
    server.files[ZIP_PATH] = _zip({CKPT: b"new weights"})
    bad = recipe(server.url(ZIP_PATH), sha256="0" * 64)
    with pytest.raises(MlcError) as err:
        install(bad, models, force=True)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "0" * 64 in msg
    assert hashlib.sha256(server.files[ZIP_PATH]).hexdigest() in msg
    assert snapshot(models) == before  # previous weights and state untouched
    assert leftovers(models) == []


def test_http_404_is_one_clear_error(server, models):
    url = server.url("/nope.zip")
    with pytest.raises(MlcError) as err:
        install(recipe(url), models)
    assert "HTTP 404" in str(err.value) and url in str(err.value)
    assert len(server.gets()) == 1  # a 404 is not retried
    assert snapshot(models) == {}


def test_http_500_is_retried_then_reported(server, models):
    server.errors[ZIP_PATH] = 500
    with pytest.raises(MlcError, match=r"HTTP 500.*gave up after 3 attempts"):
        install(recipe(server.url(ZIP_PATH)), models, retries=2)
    assert len(server.gets()) == 3


def test_unreachable_port_fails_fast_after_bounded_retries(models):
    url = f"http://127.0.0.1:{free_port()}/x.zip"
    t0 = time.monotonic()
    with pytest.raises(MlcError) as err:
        install(recipe(url), models, retries=3, backoff=0.01)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "cannot reach 127.0.0.1" in msg and "gave up after 4 attempts" in msg
    assert url in msg
    assert "\n" not in msg


def test_truncated_zip_is_a_clear_error(server, archive, models):
    server.files[ZIP_PATH] = archive[: len(archive) // 2]
    with pytest.raises(MlcError, match="not a valid zip archive"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert snapshot(models) == {}
    assert leftovers(models) == []  # the bad download is not kept


def test_archive_without_expected_files_installs_nothing(server, models):
    server.files[ZIP_PATH] = _zip({"other/thing.bin": b"x"})
    with pytest.raises(MlcError, match=f"does not contain {CKPT}.*found: other/thing.bin"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert not (models / "other").exists()


def test_no_space_before_download(server, models, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(MlcError, match="not enough space.*to download"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert not list(models.rglob("*.part")) and snapshot(models) == {}


def test_no_space_before_unpack_keeps_download(server, archive, weights, models, monkeypatch):
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda p: usage(1, 1, 1000) if fetch.STAGE_PREFIX in str(p) else real(p),
    )
    r = recipe(server.url(ZIP_PATH))
    with pytest.raises(MlcError, match="not enough space.*to unpack"):
        install(r, models)
    assert not (models / "fake-model").exists()
    assert (models / fetch.DOWNLOADS_DIR / "fake-model.zip").is_file()
    monkeypatch.setattr(shutil, "disk_usage", real)
    result = install(r, models)  # the complete download is reused: no new request
    assert not result.downloaded and len(server.gets()) == 1
    assert (models / CKPT).read_bytes() == weights


def test_mirror_rewrites_scheme_and_host(server, weights, models, monkeypatch):
    monkeypatch.setenv(fetch.ENV_MIRROR, server.base)
    r = recipe("http://download.invalid" + ZIP_PATH)
    result = install(r, models)
    assert result.url == server.url(ZIP_PATH)
    assert server.gets()[0].path == ZIP_PATH
    assert (models / CKPT).read_bytes() == weights


def test_mirror_url_rules():
    url = "http://download.aime.info/public/models/x.zip?v=1"
    assert fetch.mirror_url(url, "") == url
    assert (
        fetch.mirror_url(url, "https://m.local:8443")
        == "https://m.local:8443/public/models/x.zip?v=1"
    )
    assert fetch.mirror_url(url, "http://m/aime/") == "http://m/aime/public/models/x.zip?v=1"
    assert (
        fetch.mirror_url(url, "file:///srv/mirror") == "file:///srv/mirror/public/models/x.zip?v=1"
    )
    with pytest.raises(MlcError, match="MLC_MODELS_MIRROR"):
        fetch.mirror_url(url, "mirror.local")


def test_file_mirror_for_air_gapped_hosts(archive, weights, models, tmp_path, monkeypatch):
    mirror = tmp_path / "usb"
    (mirror / ZIP_PATH.lstrip("/")).parent.mkdir(parents=True)
    (mirror / ZIP_PATH.lstrip("/")).write_bytes(archive)
    monkeypatch.setenv(fetch.ENV_MIRROR, mirror.as_uri())
    result = install(recipe("http://download.invalid" + ZIP_PATH), models)
    assert result.source == "archive" and not result.downloaded
    assert (models / CKPT).read_bytes() == weights
    assert (mirror / ZIP_PATH.lstrip("/")).is_file()  # never deleted


def test_from_archive(archive, weights, models, tmp_path):
    local = tmp_path / "sd.zip"
    local.write_bytes(archive)
    r = recipe("http://download.invalid" + ZIP_PATH, sha256=hashlib.sha256(archive).hexdigest())
    result = install(r, models, from_archive=local)
    assert result.source == "archive" and not result.downloaded and not result.sha256_recorded
    assert (models / CKPT).read_bytes() == weights
    assert local.read_bytes() == archive  # the user's file is left alone
    assert install(r, models).skipped


def test_from_archive_wrong_checksum(archive, models, tmp_path):
    local = tmp_path / "sd.zip"
    local.write_bytes(archive)
    r = recipe("http://download.invalid" + ZIP_PATH, sha256="ab" * 32)
    with pytest.raises(MlcError, match="checksum mismatch.*nothing was installed"):
        install(r, models, from_archive=local)
    assert snapshot(models) == {}


def test_from_archive_missing_file(models, tmp_path):
    with pytest.raises(MlcError, match="does not exist"):
        install(recipe("http://x.invalid/a.zip"), models, from_archive=tmp_path / "nope.zip")


def test_single_file_archive(server, weights, models):
    server.files["/w/model.ckpt"] = weights
    r = recipe(
        server.url("/w/model.ckpt"), archive="file", files=("solo/m.ckpt",), ckpt="solo/m.ckpt"
    )
    result = install(r, models)
    assert (models / "solo/m.ckpt").read_bytes() == weights
    assert result.sha256 == hashlib.sha256(weights).hexdigest()
    assert leftovers(models) == []


def test_generated_recipe(models):
    r = recipe("", source="generate", urls=(), generator=("gen",), unpack_to="mlc-demo",
               files=("mlc-demo/demo.ckpt",), ckpt="mlc-demo/demo.ckpt")  # fmt: skip
    with pytest.raises(MlcError, match="generated locally"):
        install(r, models)
    calls: list[Path] = []

    def gen(dest: Path) -> None:
        calls.append(dest)
        (dest / "demo.ckpt").write_bytes(b"tiny")
        (dest / "demo.config").mkdir()
        (dest / "demo.config/model_index.json").write_text("{}")

    result = install(r, models, generator=gen)
    assert (models / "mlc-demo/demo.ckpt").read_bytes() == b"tiny"
    assert (models / "mlc-demo/demo.config/model_index.json").read_text() == "{}"
    assert result.source == "generate" and result.sha256 == hashlib.sha256(b"tiny").hexdigest()
    assert calls[0].name == "mlc-demo" and calls[0].is_relative_to(models)
    assert install(r, models, generator=gen).skipped and len(calls) == 1


def test_generator_writing_nothing_installs_nothing(models):
    r = recipe("", source="generate", urls=(), generator=("gen",), unpack_to="mlc-demo",
               files=("mlc-demo/demo.ckpt",), ckpt="mlc-demo/demo.ckpt")  # fmt: skip
    with pytest.raises(MlcError, match="does not contain mlc-demo/demo.ckpt"):
        install(r, models, generator=lambda dest: None)
    assert not (models / "mlc-demo").exists() and leftovers(models) == []


# --------------------------------------------------------------------------- unpack


@pytest.mark.parametrize(
    "bad",
    [
        {"ok.txt": b"fine", "../evil.txt": b"evil"},
        {"ok.txt": b"fine", "a/../../evil.txt": b"evil"},
        {"ok.txt": b"fine", "/tmp/evil-abs.txt": b"evil"},
        {"ok.txt": b"fine", "C:/evil.txt": b"evil"},
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive"],
)
def test_unsafe_members_refused_before_writing(tmp_path, bad):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(_zip(bad))
    dest = tmp_path / "dest" / "inner"
    dest.mkdir(parents=True)
    (dest / "previous.txt").write_text("keep")
    with pytest.raises(MlcError, match="refusing bad.zip"):
        fetch.unpack(zpath, dest)
    assert snapshot(tmp_path / "dest") == {"inner/previous.txt": b"keep"}
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()


def test_symlink_pointing_outside_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(_zip({"ok.txt": b"fine"}, symlinks={"link": "../../etc"}))
    dest = tmp_path / "dest"
    with pytest.raises(MlcError, match="symlink 'link' points outside"):
        fetch.unpack(zpath, dest)
    assert snapshot(dest) == {}


def test_symlink_absolute_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(_zip({"ok.txt": b"fine"}, symlinks={"d/link": "/etc/passwd"}))
    with pytest.raises(MlcError, match="points outside"):
        fetch.unpack(zpath, tmp_path / "dest")


def test_member_under_symlink_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(_zip({"sub/x": b"1", "link/y": b"2"}, symlinks={"link": "sub"}))
    with pytest.raises(MlcError, match="under a symlink"):
        fetch.unpack(zpath, tmp_path / "dest")


def test_symlink_inside_archive_allowed(tmp_path):
    zpath = tmp_path / "ok.zip"
    zpath.write_bytes(_zip({"m/model.ckpt": b"w"}, symlinks={"m/latest.ckpt": "model.ckpt"}))
    files = fetch.unpack(zpath, tmp_path / "dest")
    link = tmp_path / "dest/m/latest.ckpt"
    assert link.is_symlink() and link.read_bytes() == b"w"
    assert sorted(p.name for p in files) == ["latest.ckpt", "model.ckpt"]


def test_unpack_replaces_files_and_keeps_others(tmp_path):
    dest = tmp_path / "dest"
    (dest / "m").mkdir(parents=True)
    (dest / "m/model.ckpt").write_bytes(b"old")
    (dest / "m/mine.txt").write_bytes(b"user file")
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({"m/model.ckpt": b"new"}))
    assert fetch.unpack(zpath, dest, progress=Recorder()) == [dest / "m/model.ckpt"]
    assert snapshot(dest) == {"m/mine.txt": b"user file", "m/model.ckpt": b"new"}


def test_unpack_truncated_zip(tmp_path, archive):
    zpath = tmp_path / "t.zip"
    zpath.write_bytes(archive[:-100])
    with pytest.raises(MlcError, match="t.zip is not a valid zip archive"):
        fetch.unpack(zpath, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == {}


def test_unpack_corrupt_member_data(tmp_path, weights):
    data = bytearray(_zip({"m.bin": weights}))
    data[1000] ^= 0xFF  # inside the compressed data: CRC or inflate error on read
    zpath = tmp_path / "c.zip"
    zpath.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(MlcError, match="not a valid zip archive"):
        fetch.unpack(zpath, dest)
    assert snapshot(dest) == {}


def test_unpack_checks_space_from_member_sizes(tmp_path, monkeypatch):
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({"big.bin": b"\0" * 2_000_000}))  # compresses to almost nothing
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1, 1, 1_000_000))
    monkeypatch.setattr(files, "SPACE_MARGIN", 0)
    with pytest.raises(MlcError, match="need 2.0 MB, 1.0 MB free"):
        fetch.unpack(zpath, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == {}


# --------------------------------------------------------------------------- download


def test_download_verifies_size_and_reuses_complete_file(server, archive, tmp_path):
    dest = tmp_path / "d" / "a.zip"
    sha = hashlib.sha256(archive).hexdigest()
    res = fetch.download(server.url(ZIP_PATH), dest, sha256=sha, expected_size=len(archive))
    assert res.path == dest and dest.read_bytes() == archive and not res.reused
    again = fetch.download(server.url(ZIP_PATH), dest, sha256=sha)
    assert again.reused and len(server.gets()) == 1
    with pytest.raises(MlcError, match="wrong size"):
        fetch.download(server.url(ZIP_PATH), tmp_path / "e.zip", expected_size=5, backoff=0)
    assert not (tmp_path / "e.zip").exists() and not (tmp_path / "e.zip.part").exists()


def test_bad_url_is_not_retried(tmp_path):
    with pytest.raises(MlcError, match="invalid download URL ftp://x/a.zip"):
        fetch.download("ftp://x/a.zip", tmp_path / "a.zip", backoff=10)


def test_download_without_content_length(server, archive, tmp_path):
    server.send_length = False
    res = fetch.download(server.url(ZIP_PATH), tmp_path / "a.zip")
    assert res.path.read_bytes() == archive


def test_rich_progress_renders(server, tmp_path):
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with fetch.RichProgress(console=console) as progress:
        fetch.download(server.url(ZIP_PATH), tmp_path / "a.zip", progress=progress)
    assert "Downloading a.zip" in console.file.getvalue()
