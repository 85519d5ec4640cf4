"""mlc.fetch.downloader against a real local HTTP server: resume with Range, retries, HTTP
errors, verification, the mirror; directly and through install()."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections import namedtuple

import pytest

import fetchkit
from fetchkit import CKPT, ZIP_PATH, install, recipe, snapshot
from httpserver import free_port
from mlc import fetch
from mlc.errors import MlcError

# The shared fixtures of the fetch tests; no_mirror is autouse (MLC_MODELS_MIRROR unset).
weights = fetchkit.weights
archive = fetchkit.archive
server = fetchkit.server
models = fetchkit.models
no_mirror = fetchkit.no_mirror


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


def test_no_space_before_download(server, models, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(MlcError, match="not enough space.*to download"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert not list(models.rglob("*.part")) and snapshot(models) == {}


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


def test_mirror_rewrites_scheme_and_host(server, weights, models, monkeypatch):
    monkeypatch.setenv(fetch.ENV_MIRROR, server.base)
    r = recipe("http://download.invalid" + ZIP_PATH)
    result = install(r, models)
    assert result.url == server.url(ZIP_PATH)
    assert server.gets()[0].path == ZIP_PATH
    assert (models / CKPT).read_bytes() == weights
