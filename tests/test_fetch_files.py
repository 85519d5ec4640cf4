"""mlc.fetch.files: the one hash-while-copying loop (copy_hashed) and sha256_file."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetchkit import Recorder
from mlc.errors import NoSpaceError
from mlc.fetch import files


def test_copy_file_to_file_hashes_and_reports_every_chunk(tmp_path: Path):
    data = os.urandom(2 * files.CHUNK + 12_345)  # three reads, the last one short
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    digest, progress = hashlib.sha256(), Recorder()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        copied = files.copy_hashed(fin, fout, digest, progress)
    assert copied == len(data) == progress.advanced
    assert dst.read_bytes() == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_copy_chunks_continues_a_running_hash(tmp_path: Path):
    head, tail = b"already on disk " * 100, [b"first", b"", b"second" * 1000]
    digest = hashlib.sha256(head)  # as a resumed .part file: its bytes were hashed first
    dst = tmp_path / "part"
    dst.write_bytes(head)
    progress = Recorder()
    with open(dst, "ab") as fout:
        copied = files.copy_hashed(iter(tail), fout, digest, progress, fsync=True)
    whole = head + b"".join(tail)
    assert copied == progress.advanced == len(whole) - len(head)
    assert dst.read_bytes() == whole
    assert digest.hexdigest() == hashlib.sha256(whole).hexdigest()


def test_sha256_file_is_the_same_loop_without_a_destination(tmp_path: Path):
    path = tmp_path / "w.bin"
    data = os.urandom(files.CHUNK + 1)
    path.write_bytes(data)
    progress = Recorder()
    assert files.sha256_file(path, progress) == hashlib.sha256(data).hexdigest()
    assert progress.tasks == [("Checking w.bin", len(data), 0)]
    assert progress.advanced == len(data) and progress.finished == 1


def test_what_was_written_before_a_failed_read_is_on_disk(tmp_path: Path):
    def body() -> Iterator[bytes]:
        yield b"a" * 10
        yield b"b" * 10
        raise ConnectionError("connection lost")

    dst, progress, digest = tmp_path / "part", Recorder(), hashlib.sha256()
    with open(dst, "wb") as fout:
        with pytest.raises(ConnectionError, match="connection lost"):
            files.copy_hashed(body(), fout, digest, progress, fsync=True)
        assert dst.read_bytes() == b"a" * 10 + b"b" * 10  # flushed before the file is closed
    assert progress.advanced == 20
    assert digest.hexdigest() == hashlib.sha256(b"a" * 10 + b"b" * 10).hexdigest()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_full_disk_is_a_no_space_error(tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    progress = Recorder()
    with (
        open(src, "rb") as fin,
        open("/dev/full", "wb", buffering=0) as full,
        pytest.raises(NoSpaceError) as err,
    ):
        files.copy_hashed(fin, full, hashlib.sha256(), progress, what="testing", hint="free space")
    assert str(err.value) == "no space left in /dev while testing (free space)"
    assert progress.advanced == 0  # nothing counted that was not written


def test_other_write_failures_surface_unchanged(tmp_path: Path):
    target = tmp_path / "read-only.bin"
    target.write_bytes(b"")
    fd = os.open(target, os.O_RDONLY)
    with open(fd, "wb", buffering=0) as dst, pytest.raises(OSError) as err:
        files.copy_hashed(iter([b"data"]), dst, hashlib.sha256(), Recorder())
    assert err.value.errno == errno.EBADF and not isinstance(err.value, NoSpaceError)
    assert target.read_bytes() == b""
