"""Catalog: YAML and AIME CSV, merging, resolution, update-sys against a real local HTTP server."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from httpserver import FileServer
from mlc import catalog, cli, host
from mlc.errors import MlcError

V1 = """\
Pytorch, 2.5.1, CUDA_ADA, aimehub/pytorch-2.5.1-aime-cuda12.1.1
Tensorflow, 2.16.1, CUDA_ADA, aimehub/tensorflow-2.16.1-cuda12.3
Pytorch, 1.12.1, CUDA_AMPERE, aimehub/pytorch-1.12.1-cuda11.3
"""
V2 = """\
Pytorch, 2.9.1, [CUDA_BLACKWELL], aimehub/pytorch-2.9.1-cuda12.8.1
Pytorch, 2.1.0-aime, [CUDA_ADA;CUDA_AMPERE], aimehub/pytorch-2.1.0-aime-cuda11.8
"""


def test_builtin_catalog_has_the_seed_image_and_cpu_entries():
    c = catalog.load()
    seed = c.resolve("pytorch", "2.0.1-aime", "CUDA_ADA")
    assert seed.image == "aimehub/pytorch-2.0.1-aime-cuda11.8"
    for arch in ("CUDA_BLACKWELL", "CUDA_ADA", "CUDA_AMPERE", "CPU"):
        assert c.for_arch(arch), arch
    for e in c.entries:
        assert e.framework and e.version and e.arch and e.image


def test_aime_csv_v1_and_v2(tmp_path):
    v1 = catalog.parse_aime_csv(V1, "v1")
    assert (
        v1.resolve("Pytorch", "2.5.1", "CUDA_ADA").image == "aimehub/pytorch-2.5.1-aime-cuda12.1.1"
    )
    with pytest.raises(MlcError, match="unknown version '1.12.1'.*valid: 2.5.1"):
        v1.resolve("Pytorch", "1.12.1", "CUDA_ADA")
    v2 = catalog.parse_aime_csv(V2, "v2")
    e = v2.resolve("PYTORCH", "2.1.0-aime", "CUDA_AMPERE")
    assert e.arch == ("CUDA_ADA", "CUDA_AMPERE")
    path = tmp_path / "ml_images.repo"
    path.write_text(V2)
    assert catalog.load_file(path).entries == v2.entries


def test_user_catalog_overrides_builtin(tmp_path, monkeypatch):
    user = tmp_path / "site.yaml"
    user.write_text(
        "images:\n  - {framework: Pytorch, version: 2.0.1-aime, arch: [CUDA_ADA], "
        "image: 'registry.local/pt:2.0.1'}\n"
        "  - {framework: Jax, version: '0.4', arch: [CPU], image: 'local/jax:0.4'}\n"
    )
    monkeypatch.setenv("MLC_CATALOG", str(user))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    c = catalog.load()
    assert c.resolve("pytorch", "2.0.1-aime", "CUDA_ADA").image == "registry.local/pt:2.0.1"
    assert c.resolve("jax", "0.4", "CPU").image == "local/jax:0.4"
    assert c.resolve("pytorch", "2.0.1-aime", "CUDA_AMPERE").image.startswith("aimehub/")


def test_errors_list_valid_choices():
    c = catalog.load()
    with pytest.raises(MlcError, match="unknown framework 'Caffe' for CPU.*valid: Pytorch"):
        c.resolve("Caffe", "1", "CPU")
    with pytest.raises(MlcError, match="no images for architecture ROCM9"):
        c.resolve("Pytorch", "1", "ROCM9")
    with pytest.raises(MlcError, match="lacks image"):
        catalog.parse_yaml("images: [{framework: A, version: '1', arch: [CPU]}]", "x")


def test_arch_detection(monkeypatch):
    monkeypatch.setenv("MLC_ARCH", "cuda_ada")
    assert host.detect_arch() == "CUDA_ADA"
    assert host.detect_arch("cpu") == "CPU"
    monkeypatch.delenv("MLC_ARCH")
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: a host without GPUs
    assert host.detect_arch() == "CPU"
    assert [host.arch_for_capability(c) for c in (12.0, 9.0, 8.9, 8.6, 7.5)] == [
        "CUDA_BLACKWELL",
        "CUDA_ADA",
        "CUDA_ADA",
        "CUDA_AMPERE",
        "CUDA",
    ]


def test_aime_argument_spellings():
    assert cli.normalise(["create", "x", "Pytorch", "1", "-w=/a b", "-g=0,1", "--", "-w=keep"]) == [
        "create",
        "x",
        "Pytorch",
        "1",
        "-w",
        "/a b",
        "-g",
        "0,1",
        "--",
        "-w=keep",
    ]


def test_proxy_env_gets_both_spellings(monkeypatch):
    for var in host.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    env = host.proxy_env()
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy:3128"
    assert "HTTP_PROXY" not in env


class _Catalog(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def catalog_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Catalog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _mlc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mlc", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_update_sys_fetches_and_keeps_old_catalog_when_offline(tmp_path, catalog_server):
    _Catalog.body = (
        b"images:\n  - {framework: Pytorch, version: 9.9.9, arch: [CPU], image: 'x/y:9'}\n"
    )
    env = {"XDG_DATA_HOME": str(tmp_path), "MLC_ARCH": "CPU"}
    url = f"http://127.0.0.1:{catalog_server.server_address[1]}/catalog.yaml"
    r = _mlc("update-sys", "--url", url, env=env)
    assert r.returncode == 0, r.stderr
    stored = Path(tmp_path, "mlc", "catalog.yaml")
    before = stored.read_text()
    assert "9.9.9" in _mlc("images", env=env).stdout

    dead = "http://127.0.0.1:9/catalog.yaml"  # nothing listens on the discard port
    r = _mlc("update-sys", "--url", dead, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "unreachable" in r.stderr and "unchanged" in r.stderr
    assert stored.read_text() == before

    _Catalog.body = b"not: [valid"
    r = _mlc("update-sys", "--url", url, env=env)
    assert r.returncode != 0 and "not valid YAML" in r.stderr
    assert stored.read_text() == before


BAD_CATALOGS = {
    "control.yaml": b"images:\n  - {framework: Pytorch, version: '1\x01', arch: [CPU], image: x}\n",
    "latin1.yaml": b"images:\n  - {framework: Pytorch, version: '1\xff', arch: [CPU], image: x}\n",
    "escaped.yaml": b'images: [{framework: "Py\\x01", version: 1, arch: [CPU], image: x}]\n',
    "control.repo": b"Pytorch, 1, CPU, img\x01x\n",
    "nul.repo": b"Pytorch, 1, CPU, img\x00x\n",
    "string.yaml": b"images:\n  - just-a-string\n",
}


@pytest.mark.parametrize("file", sorted(BAD_CATALOGS))
def test_catalog_with_bad_bytes_is_one_line(tmp_path, monkeypatch, capsys, file):
    """A control character or bytes that are not UTF-8: one line naming the catalog, exit 1."""
    path = tmp_path / file
    path.write_bytes(BAD_CATALOGS[file])
    monkeypatch.setenv("MLC_CATALOG", str(path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    code = cli.run(["images", "--arch", "CPU"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"mlc: error: catalog {path}") and err.count("\n") == 1, err


def test_update_sys_refuses_bad_bytes_and_keeps_the_catalog(tmp_path, catalog_server):
    env = {"XDG_DATA_HOME": str(tmp_path), "MLC_ARCH": "CPU"}
    url = f"http://127.0.0.1:{catalog_server.server_address[1]}/catalog.yaml"
    _Catalog.body = b"images: [{framework: Pytorch, version: '1', arch: [CPU], image: 'x/y:1'}]\n"
    assert _mlc("update-sys", "--url", url, env=env).returncode == 0
    stored = Path(tmp_path, "mlc", "catalog.yaml")
    before = stored.read_text()
    for body, needle in (
        (BAD_CATALOGS["control.yaml"], "character 0x01 at offset"),
        (BAD_CATALOGS["latin1.yaml"], "is not UTF-8 text (byte 0xff at offset"),
        (BAD_CATALOGS["escaped.yaml"], "has a control character (U+0001)"),
    ):
        _Catalog.body = body
        r = _mlc("update-sys", "--url", url, env=env)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"mlc: error: catalog {url}") and r.stderr.count("\n") == 1
        assert needle in r.stderr
        assert stored.read_text() == before


def test_update_sys_skips_an_unchanged_source_unless_forced(tmp_path):
    """update-sys asks the source whether the catalog changed (ETag); --force downloads it
    whole and rewrites the stored copy (here: undoing a local edit)."""
    env = {"XDG_DATA_HOME": str(tmp_path), "MLC_ARCH": "CPU"}
    body = b"images: [{framework: Pytorch, version: '7', arch: [CPU], image: 'x/y:7'}]\n"
    with FileServer({"/catalog.yaml": body}) as srv:
        url = srv.url("/catalog.yaml")
        r = _mlc("update-sys", "--url", url, env=env)
        assert r.returncode == 0 and r.stdout.startswith("catalog updated: 1 images"), r.stderr
        stored = Path(tmp_path, "mlc", "catalog.yaml")
        good = stored.read_text()
        stored.write_text(good.replace("x/y:7", "x/y:edited"))
        r = _mlc("update-sys", "--url", url, env=env)
        assert r.returncode == 0 and r.stdout.startswith("catalog is up to date: 1 images")
        assert "x/y:edited" in stored.read_text()  # not downloaded, not rewritten
        r = _mlc("update-sys", "--url", url, "--force", env=env)
        assert r.returncode == 0 and r.stdout.startswith("catalog updated: 1 images")
        assert stored.read_text() == good
        assert [q.status for q in srv.gets("/catalog.yaml")] == [200, 304, 200]
        srv.files["/catalog.yaml"] = body.replace(b"'7'", b"'8'")  # the source changes
        r = _mlc("update-sys", "--url", url, env=env)
        assert r.stdout.startswith("catalog updated: 1 images") and "'8'" in stored.read_text()
