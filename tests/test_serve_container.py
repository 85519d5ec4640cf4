"""Through Docker: `mlc serve NAME` on the host serves the container's warm engine with
AUTOMATIC1111's API; the real `webuiapi` client, the tiny demo model, real HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import PREFIX, TORCH_IMAGE, Mlc, _missing
from engine.servekit import needed

pytestmark = pytest.mark.docker


webuiapi = needed("webuiapi")
needed("fastapi")
needed("uvicorn")

SMALL = {"steps": 3, "width": 64, "height": 64}
BANNER = re.compile(r" at (http://\S+) \(AUTOMATIC1111 API")


@dataclass
class Box:
    """A container with the demo model set up, and `mlc` for it."""

    mlc: Mlc
    name: str
    ws: Path
    env: dict[str, str]

    def samples(self) -> list[Path]:
        return sorted((self.ws / "outputs" / "txt2img-samples" / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def box(docker_client, shared_dir: Path, tmp_path_factory) -> Iterator[Box]:
    import docker.errors

    try:
        docker_client.images.get(TORCH_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"test image {TORCH_IMAGE} is missing: run images/local/build.sh")
    root = tmp_path_factory.mktemp("serve-box")
    catalog = shared_dir / "serve-catalog.yaml"
    catalog.write_text(
        "images: [{framework: Pytorch, version: 2.13.0-cpu, arch: [CPU], "
        f"image: '{TORCH_IMAGE}'}}]\n"
    )
    catalog.chmod(0o644)
    (root / "home").mkdir()
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "MLC_CATALOG": str(catalog),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "COLUMNS": "200",
    }
    env.pop("MLC_ARCH", None)
    mlc = Mlc(env, root / "home", shared_dir)
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    ws = root / "ws"
    try:
        r = mlc("create", name, "Pytorch", "2.13.0-cpu", "-w", str(ws), "-m", str(root / "m"))
        assert r.code == 0, r.err
        r = mlc("setup", name, "demo", "--serve", timeout=900)  # FastAPI for the inside server
        assert r.code == 0, r.err
        yield Box(mlc, name, ws, env)
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": "aime.mlc"}):
            if name in c.labels.get("aime.mlc.NAME", ""):
                c.remove(force=True)


class Server:
    """`mlc serve NAME --port 0 FLAGS` as a real process."""

    def __init__(self, box: Box, *flags: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlc", "serve", box.name, "--port", "0", *flags],
            env={**box.env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self.url = ""
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := BANNER.search(line):
                self.url = m.group(1)
                break
        threading.Thread(target=self._drain, daemon=True).start()
        assert self.url, "".join(self.lines)
        self.url = self.url.replace("//0.0.0.0:", "//127.0.0.1:")  # listening everywhere
        self.api = f"{self.url}/sdapi/v1"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.lines.extend(self.proc.stderr)

    def progress(self, **kw) -> dict:
        return requests.get(f"{self.api}/progress", timeout=60, **kw).json()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _pixels(image: Image.Image | Path) -> np.ndarray:
    im = image if isinstance(image, Image.Image) else Image.open(image)
    return np.asarray(im.convert("RGB"))


def test_mlc_serve_with_webuiapi(box: Box):
    """A webuiapi script for A1111 runs unchanged against `mlc serve`: batches with seeds,
    several samplers, the model list, progress and interrupt; the images are `mlc txt2img`'s
    pixels for the same settings and land in the workspace numbered as its own; a client that
    leaves cancels its job; Ctrl-C stops the server."""
    server = Server(box)
    try:
        assert "container " + box.name in server.lines[0]
        api = webuiapi.WebUIApi(baseurl=server.api)
        assert [m["model_name"] for m in api.get_sd_models()] == ["demo"]
        assert api.get_options()["sd_model_checkpoint"].startswith("demo.ckpt [")

        r = api.txt2img(prompt="a cube", seed=5, batch_size=2, sampler_name="Euler a",
                        cfg_scale=6, save_images=True, **SMALL)  # fmt: skip
        assert len(r.images) == 3 and r.info["all_seeds"] == [5, 6]
        assert r.info["sd_model_name"] == "demo"
        files = [box.ws / f for f in r.info["mlc"]["files"]]
        names = [f.name for f in files]
        assert names == ["00000.png", "00001.png"] == [f.name for f in box.samples()]
        assert (box.ws / r.info["mlc"]["grid"]).is_file()
        for image, f in zip(r.images[1:], files, strict=True):
            assert np.array_equal(_pixels(image), _pixels(f))
            assert image.info["parameters"] == Image.open(f).info["parameters"]
            assert "Sampler: Euler a" in image.info["parameters"]

        cli = box.mlc(
            "txt2img", box.name, "--prompt", "a cube", "--seed", "5", "--n_samples", "2",
            "--n_iter", "1", "--sampler", "euler_a", "--scale", "6", "--ddim_steps", "3",
            "--W", "64", "--H", "64", "--skip_grid", "--json", timeout=600,
        )  # fmt: skip
        assert cli.code == 0, cli.err
        summary = json.loads(cli.out)
        assert summary["timings"]["load_s"] == 0  # the worker the server started, still warm
        assert [Path(f).name for f in summary["files"]] == ["00002.png", "00003.png"]
        for image, f in zip(r.images[1:], summary["files"], strict=True):
            assert np.array_equal(_pixels(image), _pixels(box.ws / f))

        for sampler in ("DDIM", "DPM++ 2M", "PLMS"):
            r = api.txt2img(prompt="a ball", sampler_name=sampler, **SMALL)
            assert len(r.images) == 1 and r.info["sampler_name"] == sampler
        assert len(box.samples()) == 4  # webuiapi's save_images: false keeps nothing

        got: dict = {}
        t = threading.Thread(
            target=lambda: got.update(r=api.txt2img(prompt="long", n_iter=50, **SMALL))
        )
        t.start()
        for _ in range(3000):
            p = api.get_progress()
            if p["current_image"]:
                break
            time.sleep(0.05)
        assert p["state"]["job_count"] == 50 and 0 < p["progress"] < 1
        api.interrupt()
        t.join(timeout=300)
        assert 1 <= len(got["r"].images) < 50 and got["r"].info["mlc"]["interrupted"]

        before = len(box.samples())
        body = json.dumps({"prompt": "gone", "n_iter": 80, "save_images": True, **SMALL})
        host, port = server.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        for _ in range(3000):
            if server.progress()["current_image"]:
                break
            time.sleep(0.05)
        sock.close()
        for _ in range(3000):
            if server.progress()["state"]["job_count"] == 0:
                break
            time.sleep(0.1)
        assert 1 <= len(box.samples()) - before < 80
        r = api.txt2img(prompt="after", **SMALL)
        assert len(r.images) == 1
    finally:
        code = server.stop()
    assert code == 130 and server.lines[-1] == "mlc: interrupted\n"


def _queued_in_turn(server: Server, k: int, auth: tuple[str, str]) -> None:
    """Wait until client K's request is in the queue (the first one: running)."""
    want = f"{k} request(s) queued" if k else "image(s) made"
    text = ""
    for _ in range(3000):
        text = server.progress(auth=auth)["textinfo"] or ""
        if want in text:
            return
        time.sleep(0.05)
    pytest.fail(f"client {k}'s request was not queued: {text!r}")


def test_plain_http_credentials_bad_requests_and_concurrent_clients(box: Box):
    """Listening on every address needs credentials, and every route then asks for them
    (--api-auth or the token); bad and oversize requests get one JSON line and a 4xx (501 for
    what mlc lacks); three clients at once are served in the order they came."""
    auth = ("ann", "secret-one")
    server = Server(
        box, "--host", "0.0.0.0", "--api-auth", "ann:secret-one",
        env={"MLC_SERVE_TOKEN": "t0ken-value-1"},
    )  # fmt: skip
    try:
        assert not any("every user" in line for line in server.lines)
        r = requests.get(f"{server.api}/samplers", timeout=60)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert set(r.json()) == {"error", "detail"}
        assert (
            requests.get(f"{server.api}/samplers", auth=("ann", "nope"), timeout=60).status_code
            == 401
        )
        bad = {"Authorization": "Bearer wrong-token"}
        assert requests.get(f"{server.api}/sd-models", headers=bad, timeout=60).status_code == 401
        assert requests.post(f"{server.api}/txt2img", json={}, timeout=60).status_code == 401
        assert requests.get(f"{server.url}/docs", timeout=60).status_code == 401
        docs = requests.get(f"{server.url}/docs", auth=auth, timeout=60)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        token = {"Authorization": "Bearer t0ken-value-1"}
        models = requests.get(f"{server.api}/sd-models", headers=token, timeout=60).json()
        assert [m["model_name"] for m in models] == ["demo"]
        names = [s["name"] for s in requests.get(f"{server.api}/samplers", auth=auth).json()]
        assert {"Euler a", "DDIM", "DPM++ 2M", "PLMS"} <= set(names)

        for body, status, says in [
            ({"steps": 501}, 400, "steps 501 is over this server's limit of 500"),
            ({"width": 4096, "height": 4096}, 400, "over this server's limit of 4,194,304"),
            ({"batch_size": 50, "n_iter": 3}, 400, "150 images"),
            ({"width": 60}, 400, "width"),
            ({"sampler_name": "Nope"}, 400, "unknown sampler 'Nope'"),
            ({"enable_hr": True}, 501, "hires fix (enable_hr) is not supported"),
            ([1, 2], 422, "must be a JSON object"),
        ]:
            r = requests.post(f"{server.api}/txt2img", json=body, auth=auth, timeout=60)
            assert r.status_code == status, (body, r.text)
            assert set(r.json()) == {"error", "detail"} and says in r.json()["detail"], r.text
        r = requests.post(f"{server.api}/txt2img", data=b" " * (2 << 20), auth=auth, timeout=60)
        assert r.status_code == 413 and r.json()["error"] == "TooLarge"
        r = requests.post(f"{server.api}/img2img", json={"prompt": "x"}, auth=auth, timeout=60)
        assert r.status_code == 501 and r.json()["detail"].startswith("img2img is not supported")

        before = len(box.samples())
        answers: dict[int, requests.Response] = {}

        def call(k: int) -> None:
            body = {"prompt": f"client {k}", "n_iter": 2, "seed": 100 + 10 * k,
                    "save_images": True, **SMALL}  # fmt: skip
            answers[k] = requests.post(f"{server.api}/txt2img", json=body, auth=auth, timeout=600)

        threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
        for k, t in enumerate(threads):
            t.start()
            _queued_in_turn(server, k, auth)
        for t in threads:
            t.join(timeout=600)
        assert [answers[k].status_code for k in range(3)] == [200, 200, 200]
        files = box.samples()[before:]
        prompts = [json.loads(Image.open(f).info["mlc"])["prompt"] for f in files]
        assert prompts == ["client 0"] * 2 + ["client 1"] * 2 + ["client 2"] * 2
        for k in range(3):
            info = json.loads(answers[k].json()["info"])
            assert info["all_seeds"] == [100 + 10 * k, 101 + 10 * k]
            assert [box.ws / f for f in info["mlc"]["files"]] == files[2 * k : 2 * k + 2]

        api = webuiapi.WebUIApi(baseurl=server.api, username="ann", password="secret-one")
        r = api.txt2img(prompt="with a password", seed=3, **SMALL)
        assert r.info["all_seeds"] == [3] and len(r.images) == 1
    finally:
        code = server.stop()
    assert code == 130


INSIDE = r"""
import json, re, subprocess, sys, urllib.request
p = subprocess.Popen(["mlc-txt2img", "--serve", "--port", "0"], stderr=subprocess.PIPE, text=True)
url = banner = ""
for banner in p.stderr:
    if m := re.search(r" at (http://\S+) \(AUTOMATIC1111 API", banner):
        url = m.group(1)
        break
try:
    body = json.dumps(json.loads(sys.argv[1])).encode()
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url + "/sdapi/v1/txt2img", body, headers)
    answer = json.load(urllib.request.urlopen(req, timeout=600))
finally:
    p.send_signal(2)
    code = p.wait(timeout=120)
print(json.dumps({"banner": banner, "answer": answer, "code": code}))
"""


def test_the_engines_own_server_inside_the_container(box: Box):
    """`mlc-txt2img --serve` in the container (FastAPI from `mlc setup --serve`) serves the
    same worker: its image is `mlc txt2img`'s for the same seed and is saved in the workspace
    with the next number and the same metadata."""
    (box.ws / "inside.py").write_text(INSIDE)
    body = {"prompt": "inside", "seed": 42, "sampler_name": "DDIM", "save_images": True, **SMALL}
    before = box.samples()
    r = box.mlc("open", box.name, "--", "python3", "/workspace/inside.py", json.dumps(body),
                timeout=900)  # fmt: skip
    assert r.code == 0, r.err
    got = json.loads(r.out.strip().splitlines()[-1])
    assert "this container's engine worker at http://127.0.0.1:" in got["banner"]
    assert got["code"] == 130
    info = json.loads(got["answer"]["info"])
    assert info["all_seeds"] == [42] and info["sampler_name"] == "DDIM"
    image = Image.open(io.BytesIO(base64.b64decode(got["answer"]["images"][0])))
    (saved,) = [box.ws / f for f in info["mlc"]["files"]]
    assert saved not in before and box.samples() == sorted([*before, saved])
    assert int(saved.stem) == (int(before[-1].stem) + 1 if before else 0)
    assert np.array_equal(_pixels(image), _pixels(saved))
    assert image.info["parameters"] == Image.open(saved).info["parameters"]

    cli = box.mlc(
        "txt2img", box.name, "--prompt", "inside", "--seed", "42", "--n_samples", "1",
        "--n_iter", "1", "--sampler", "ddim", "--scale", "7", "--ddim_steps", "3", "--W", "64",
        "--H", "64", "--skip_grid", "--json", timeout=600,
    )  # fmt: skip
    assert cli.code == 0, cli.err
    (made,) = json.loads(cli.out)["files"]
    assert np.array_equal(_pixels(image), _pixels(box.ws / made))


def test_refusals_and_another_users_container(box: Box, test_user):
    r = box.mlc("serve", box.name, "--host", "0.0.0.0")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "--host 0.0.0.0 would serve the engine beyond this machine" in r.err
    r = box.mlc("serve", "mlct-nosuch")
    assert (r.code, r.err) == (1, "mlc: error: no container named 'mlct-nosuch' (see `mlc list`)\n")
    # Another user cannot serve this user's container (nor reach its worker).
    r = box.mlc.as_user(test_user.pw_name, "serve", box.name, "--port", "0")
    assert (r.code, r.err) == (
        1,
        f"mlc: error: container '{box.name}' belongs to another user "
        "(mlc acts on your own containers only)\n",
    )
