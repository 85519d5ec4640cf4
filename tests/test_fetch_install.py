"""mlc.fetch.install end to end against a real local HTTP server: skip, verify, record, keep
the previous state on any failure."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import fetchkit
from fetchkit import CKPT, ZIP_PATH, Recorder, install, leftovers, make_zip, recipe, snapshot
from mlc import fetch
from mlc.errors import MlcError

# The shared fixtures of the fetch tests; no_mirror is autouse (MLC_MODELS_MIRROR unset).
weights = fetchkit.weights
archive = fetchkit.archive
server = fetchkit.server
models = fetchkit.models
no_mirror = fetchkit.no_mirror


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
    server.files[ZIP_PATH] = make_zip({CKPT: b"other weights"})
    with pytest.raises(MlcError, match="checksum mismatch") as err:
        install(r, models)
    assert "--force" in str(err.value)
    assert install(r, models, force=True).sha256_recorded


def test_wrong_checksum_installs_nothing_and_keeps_previous(server, archive, weights, models):
    install(recipe(server.url(ZIP_PATH)), models)
    before = snapshot(models)
    server.files[ZIP_PATH] = make_zip({CKPT: b"new weights"})
    bad = recipe(server.url(ZIP_PATH), sha256="0" * 64)
    with pytest.raises(MlcError) as err:
        install(bad, models, force=True)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "0" * 64 in msg
    assert hashlib.sha256(server.files[ZIP_PATH]).hexdigest() in msg
    assert snapshot(models) == before  # previous weights and state untouched
    assert leftovers(models) == []


def test_truncated_zip_is_a_clear_error(server, archive, models):
    server.files[ZIP_PATH] = archive[: len(archive) // 2]
    with pytest.raises(MlcError, match="not a valid zip archive"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert snapshot(models) == {}
    assert leftovers(models) == []  # the bad download is not kept


def test_archive_without_expected_files_installs_nothing(server, models):
    server.files[ZIP_PATH] = make_zip({"other/thing.bin": b"x"})
    with pytest.raises(MlcError, match=f"does not contain {CKPT}.*found: other/thing.bin"):
        install(recipe(server.url(ZIP_PATH)), models)
    assert not (models / "other").exists()


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


def test_same_url_again_is_skipped_unless_forced_or_another(server, archive, models):
    """`mlc setup NAME --url SAME` after a complete, verified install from SAME downloads
    nothing; --force or a different URL fetch again."""
    r = recipe(server.url("/elsewhere.zip"))
    server.files["/mirror/model.zip"] = archive
    url = server.url(ZIP_PATH)
    assert install(r, models, url=url).downloaded
    again = install(r, models, url=url)
    assert again.skipped and not again.downloaded and again.url == url
    assert len(server.gets(ZIP_PATH)) == 1
    assert install(r, models, url=url, force=True).downloaded
    assert len(server.gets(ZIP_PATH)) == 2
    other = server.url("/mirror/model.zip")
    assert install(r, models, url=other).downloaded
    assert install(r, models, url=url).downloaded  # the install now came from the other one
    (models / CKPT).write_bytes(b"broken")  # no longer verified: fetched again
    assert install(r, models, url=url).downloaded
    assert len(server.gets(ZIP_PATH)) == 4


def test_same_file_url_again_is_skipped(archive, models, tmp_path):
    local = tmp_path / "model.zip"
    local.write_bytes(archive)
    r = recipe("https://example.invalid/none.zip")
    assert not install(r, models, url=local.as_uri()).skipped
    assert install(r, models, url=local.as_uri()).skipped
