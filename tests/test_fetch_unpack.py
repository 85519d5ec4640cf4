"""mlc.fetch.unpacker: members checked before anything is written, staging and commit."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import fetchkit
from fetchkit import Recorder, make_zip, snapshot
from mlc import fetch
from mlc.errors import MlcError
from mlc.fetch import files

# The shared fixtures of the fetch tests.
weights = fetchkit.weights
archive = fetchkit.archive


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
    zpath.write_bytes(make_zip(bad))
    dest = tmp_path / "dest" / "inner"
    dest.mkdir(parents=True)
    (dest / "previous.txt").write_text("keep")
    with pytest.raises(MlcError, match="refusing bad.zip"):
        fetch.unpack(zpath, dest)
    assert snapshot(tmp_path / "dest") == {"inner/previous.txt": b"keep"}
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()


def test_symlink_pointing_outside_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(make_zip({"ok.txt": b"fine"}, symlinks={"link": "../../etc"}))
    dest = tmp_path / "dest"
    with pytest.raises(MlcError, match="symlink 'link' points outside"):
        fetch.unpack(zpath, dest)
    assert snapshot(dest) == {}


def test_symlink_absolute_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(make_zip({"ok.txt": b"fine"}, symlinks={"d/link": "/etc/passwd"}))
    with pytest.raises(MlcError, match="points outside"):
        fetch.unpack(zpath, tmp_path / "dest")


def test_member_under_symlink_refused(tmp_path):
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(make_zip({"sub/x": b"1", "link/y": b"2"}, symlinks={"link": "sub"}))
    with pytest.raises(MlcError, match="under a symlink"):
        fetch.unpack(zpath, tmp_path / "dest")


def test_symlink_inside_archive_allowed(tmp_path):
    zpath = tmp_path / "ok.zip"
    zpath.write_bytes(make_zip({"m/model.ckpt": b"w"}, symlinks={"m/latest.ckpt": "model.ckpt"}))
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
    zpath.write_bytes(make_zip({"m/model.ckpt": b"new"}))
    assert fetch.unpack(zpath, dest, progress=Recorder()) == [dest / "m/model.ckpt"]
    assert snapshot(dest) == {"m/mine.txt": b"user file", "m/model.ckpt": b"new"}


def test_unpack_truncatedmake_zip(tmp_path, archive):
    zpath = tmp_path / "t.zip"
    zpath.write_bytes(archive[:-100])
    with pytest.raises(MlcError, match="t.zip is not a valid zip archive"):
        fetch.unpack(zpath, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == {}


def test_unpack_corrupt_member_data(tmp_path, weights):
    data = bytearray(make_zip({"m.bin": weights}))
    data[1000] ^= 0xFF  # inside the compressed data: CRC or inflate error on read
    zpath = tmp_path / "c.zip"
    zpath.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(MlcError, match="not a valid zip archive"):
        fetch.unpack(zpath, dest)
    assert snapshot(dest) == {}


def test_unpack_checks_space_from_member_sizes(tmp_path, monkeypatch):
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip({"big.bin": b"\0" * 2_000_000}))  # compresses to almost nothing
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1, 1, 1_000_000))
    monkeypatch.setattr(files, "SPACE_MARGIN", 0)
    with pytest.raises(MlcError, match="need 2.0 MB, 1.0 MB free"):
        fetch.unpack(zpath, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == {}
