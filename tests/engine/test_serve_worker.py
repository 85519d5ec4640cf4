"""The A1111 API server as it runs inside a container (``python -m mlc.serve``, ``mlc-txt2img
--serve``), here on this machine: a real server process, a real warm worker, the tiny model,
real HTTP, and the real ``webuiapi`` client from PyPI."""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import SIZE, TinyModel
from .servekit import Served, needed

webuiapi = needed("webuiapi")
needed("fastapi")
needed("uvicorn")

STEPS = 3
SMALL = {"steps": STEPS, "width": SIZE, "height": SIZE}
TEST_USER = os.environ.get("MLC_TEST_USER", "mlctester")
TEST_USER_PYTHON = os.environ.get("MLC_TEST_USER_PYTHON", f"/home/{TEST_USER}/venv/bin/python")


@pytest.fixture(scope="module")
def served(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server (default flags) and its worker, shared by the tests that leave it serving."""
    s = Served(tmp_path_factory.mktemp("serve") / "work", tiny.safetensors)
    yield s
    s.stop()


def _pixels(image: Image.Image | str | Path) -> np.ndarray:
    im = image if isinstance(image, Image.Image) else Image.open(image)
    return np.asarray(im.convert("RGB"))


def _client(s: Served, **kw: object) -> object:
    return webuiapi.WebUIApi(baseurl=s.api, **kw)


def test_webuiapi_txt2img_batch_matches_mlc_txt2img(served: Served, tiny: TinyModel):
    """A webuiapi script for A1111, unchanged: a batch with a fixed seed, an old-style sampler
    name; the PNGs carry the engine's A1111 metadata and equal the client's (`mlc txt2img`'s)
    pixels for the same flags; the files land numbered in the outdir."""
    api = _client(served)
    r = api.txt2img(
        prompt="a red cube",
        negative_prompt="blurry",
        seed=7,
        batch_size=2,
        sampler_name="DPM++ 2M Karras",
        cfg_scale=5,
        save_images=True,
        **SMALL,
    )
    assert len(r.images) == 3  # A1111 sends the grid first when it saves a batch
    assert r.info["index_of_first_image"] == 1
    assert r.info["all_seeds"] == [7, 8] and r.info["seed"] == 7
    assert r.info["sampler_name"] == "DPM++ 2M"
    assert r.info["extra_generation_params"] == {"Schedule type": "Karras"}
    assert r.info["mlc"]["engine_sampler"] == "dpmpp_2m_karras"
    assert r.info["all_prompts"] == ["a red cube"] * 2
    assert r.info["sd_model_name"] == "tiny" and r.info["sd_model_hash"]
    assert r.parameters["seed"] == 7 and r.parameters["sampler_name"] == "DPM++ 2M Karras"
    assert len(r.info["infotexts"]) == 3
    for image, seed, text in zip(r.images[1:], [7, 8], r.info["infotexts"][1:], strict=True):
        assert image.size == (SIZE, SIZE)
        assert image.info["parameters"] == text
        assert f"Seed: {seed}," in text and "Sampler: DPM++ 2M Karras" in text
        assert text.startswith("a red cube\nNegative prompt: blurry\nSteps: 3,")
    files = [served.cwd / f for f in r.info["mlc"]["files"]]
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    assert (served.cwd / r.info["mlc"]["grid"]).name == "grid-0000.png"
    for image, f in zip(r.images[1:], files, strict=True):
        assert np.array_equal(_pixels(image), _pixels(f))

    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.client", "--prompt", "a red cube",
         "--negative_prompt", "blurry", "--seed", "7", "--n_samples", "2", "--n_iter", "1",
         "--sampler", "dpmpp_2m_karras", "--ddim_steps", str(STEPS), "--scale", "5",
         "--W", str(SIZE), "--H", str(SIZE), "--skip_grid", "--outdir", "cli", "--json"],
        capture_output=True, text=True, env=served.env, cwd=served.cwd, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    cli = json.loads(p.stdout)
    assert cli["timings"]["load_s"] == 0  # the server's worker, still warm
    for image, f in zip(r.images[1:], cli["files"], strict=True):
        assert np.array_equal(_pixels(image), _pixels(served.cwd / f))


@pytest.mark.parametrize(
    ("sampler", "scheduler", "engine", "schedule"),
    [
        ("Euler a", "automatic", "euler_a", "Uniform"),
        ("DDIM", None, "ddim", None),
        ("PLMS", None, "plms", None),
        ("DPM++ 2M", "Uniform", "dpmpp_2m", "Uniform"),
        ("LMS", "karras", "lms_karras", "Karras"),
    ],
)
def test_webuiapi_samplers_and_random_seeds(served, sampler, scheduler, engine, schedule):
    api = _client(served)
    kw = {"scheduler": scheduler} if scheduler else {}
    r = api.txt2img(prompt="a blue ball", sampler_name=sampler, seed=-1, **SMALL, **kw)
    assert len(r.images) == 1 and r.images[0].size == (SIZE, SIZE)
    assert r.info["sampler_name"] == sampler and r.info["mlc"]["engine_sampler"] == engine
    assert r.info["extra_generation_params"].get("Schedule type") == schedule
    assert r.info["mlc"]["files"] == []  # webuiapi sends save_images: false
    seed = r.info["seed"]
    assert 0 <= seed < 2**32 and r.parameters["seed"] == -1
    assert f"Seed: {seed}," in r.info["infotexts"][0]


def test_lists_options_and_model_choice(served: Served, tiny: TinyModel):
    api = _client(served)
    names = api.util_get_sampler_names()
    assert {"Euler a", "DPM++ 2M", "DDIM", "PLMS"} <= set(names)
    assert {s["name"] for s in api.get_schedulers()} == {"automatic", "uniform", "karras"}
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["tiny"]
    assert models[0]["filename"] == str(tiny.safetensors)
    assert models[0]["title"] == f"tiny.safetensors [{models[0]['hash']}]"
    assert api.get_options()["sd_model_checkpoint"] == models[0]["title"]
    assert api.util_get_current_model() == models[0]["title"]
    r = served.post("options", {"sd_model_checkpoint": "tiny"})
    assert r.status_code == 200 and r.json() is None
    r = served.post("options", {"sd_model_checkpoint": "nope"})
    assert r.status_code == 404 and "no model 'nope'" in r.json()["detail"]
    r = served.post("options", {"sd_vae": "x"})
    assert r.status_code == 501 and "only sd_model_checkpoint" in r.json()["detail"]
    assert served.get("scripts").json() == {"txt2img": [], "img2img": []}


def test_progress_and_interrupt_with_webuiapi(served: Served):
    """A long job reports its progress; interrupt stops it after the current step and the
    answer holds the images made so far (as A1111's); then the server is idle again."""
    api = _client(served)
    got: dict[str, object] = {}
    t = threading.Thread(
        target=lambda: got.update(r=api.txt2img(prompt="long", n_iter=60, seed=1, **SMALL))
    )
    t.start()
    seen = None
    for _ in range(3000):
        p = api.get_progress()
        if p["current_image"]:
            seen = p
            break
        time.sleep(0.05)
    assert seen is not None, "the job never finished an image"
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0
    assert seen["state"]["job_count"] == 60 and seen["state"]["sampling_steps"] == STEPS
    assert Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size == (SIZE, SIZE)
    assert api.interrupt() == {}
    t.join(timeout=300)
    r = got["r"]
    assert 1 <= len(r.images) < 60  # type: ignore[attr-defined]
    assert r.info["mlc"]["interrupted"] is True  # type: ignore[attr-defined]
    assert len(r.info["all_seeds"]) == len(r.images)  # type: ignore[attr-defined]
    idle = served.idle()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"width": 33}, 400, "width 33 is not a multiple of 8; use 32 or 40"),
        ({"steps": "x"}, 422, "steps must be an integer"),
        ({"steps": 0}, 400, "steps must be at least 1"),
        (
            {"width": 4096, "height": 4096},
            400,
            "4096x4096 is 16,777,216 pixels, over this server's limit of 4,194,304 (2048x2048",
        ),
        ({"steps": 501}, 400, "steps 501 is over this server's limit of 500"),
        ({"batch_size": 50, "n_iter": 3}, 400, "150 images"),
        ({"seed": -2}, 400, "seed must be -1 or between 0 and"),
        ({"enable_hr": True}, 501, "hires fix (enable_hr) is not supported"),
        ({"restore_faces": True}, 501, "face restoration"),
        ({"alwayson_scripts": {"ControlNet": {"args": []}}}, 501, "alwayson_scripts: ControlNet"),
        ({"script_name": "x/y/z plot"}, 501, "scripts"),
        ({"subseed_strength": 0.5}, 501, "variation seeds"),
        ({"sampler_name": "DPM fast"}, 400, "the DPM fast sampler is not supported by mlc"),
        ({"sampler_name": "Nope"}, 400, "unknown sampler 'Nope'"),
        ({"sampler_name": "Euler", "scheduler": "Karras"}, 400, "Euler with the Karras schedule"),
        ({"scheduler": "Beta"}, 400, "the Beta schedule is not supported"),
        ({"override_settings": {"sd_vae": "x"}}, 501, "override_settings sd_vae"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, 404, "no model 'nope'"),
        ([1, 2], 422, "must be a JSON object"),
    ],
)
def test_bad_requests_are_one_clear_json_line(served: Served, body, status, says):
    r = served.post("txt2img", body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and says in r.json()["detail"]


def test_bad_bodies_and_other_endpoints(served: Served):
    r = requests.post(f"{served.api}/txt2img", data=b"{not json", timeout=60)
    assert r.status_code == 422 and "not JSON" in r.json()["detail"]
    r = requests.post(f"{served.api}/txt2img", data=b" " * (2 << 20), timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "TooLarge"
    r = served.post("img2img", {"prompt": "x"})
    assert r.status_code == 501 and r.json()["detail"].startswith("img2img is not supported")
    assert served.get("loras").status_code == 501
    r = served.get("no-such-thing")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    r = requests.get(f"{served.url}/nowhere", timeout=60)
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    schema = requests.get(f"{served.url}/openapi.json", timeout=60).json()
    body = schema["paths"]["/sdapi/v1/txt2img"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    assert props["sampler_name"]["type"] == "string" and props["steps"]["default"] == 50
    docs = requests.get(f"{served.url}/docs", timeout=60)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def _samples(s: Served) -> list[Path]:
    return sorted((s.cwd / "outputs" / "txt2img-samples" / "samples").glob("*.png"))


def test_concurrent_clients_are_served_in_order(served: Served):
    """Three clients at once: each waits its turn, in the order they came; the files are
    numbered in that order and nothing is overwritten."""
    before = len(_samples(served))
    answers: dict[int, requests.Response] = {}

    def call(k: int) -> None:
        body = {"prompt": f"job {k}", "n_iter": 3, "seed": 10 * k, "save_images": True, **SMALL}
        answers[k] = served.post("txt2img", body)

    threads = []
    for k in range(3):
        threads.append(threading.Thread(target=call, args=(k,)))
        threads[-1].start()
        want = f"{k} request(s) queued" if k else "image(s) made"
        for _ in range(2000):  # the next client comes once this one is queued
            text = served.get("progress").json()["textinfo"] or ""
            if want in text:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"job {k} was not queued: {text!r}")
    for t in threads:
        t.join(timeout=300)
    assert [answers[k].status_code for k in range(3)] == [200, 200, 200]
    files = _samples(served)[before:]
    assert len(files) == 9
    prompts = [json.loads(Image.open(f).info["mlc"])["prompt"] for f in files]
    assert prompts == ["job 0"] * 3 + ["job 1"] * 3 + ["job 2"] * 3
    for k in range(3):
        info = json.loads(answers[k].json()["info"])
        assert info["all_seeds"] == [10 * k, 10 * k + 1, 10 * k + 2]


def test_a_client_that_disconnects_cancels_its_job(served: Served):
    before = len(_samples(served))
    body = json.dumps({"prompt": "gone", "n_iter": 100, "save_images": True, **SMALL}).encode()
    host, port = served.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(3000):
        if served.get("progress").json()["current_image"]:
            break
        time.sleep(0.05)
    sock.close()
    idle = served.idle(timeout=300)
    assert idle["state"]["job_count"] == 0
    made = len(_samples(served)) - before
    assert 1 <= made < 100
    r = served.post("txt2img", {"prompt": "after", **SMALL})  # the worker serves on
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_no_save_keeps_nothing_and_send_images_false(tiny: TinyModel, tmp_path: Path):
    s = Served(tmp_path / "work", tiny.safetensors, "--no-save", "--max-images", "2")
    try:
        assert "images are not kept" in s.lines[0]
        r = s.post("txt2img", {"prompt": "x", "batch_size": 2, **SMALL})
        assert r.status_code == 200 and len(r.json()["images"]) == 2  # no grid: not saved
        assert not (s.cwd / "outputs").exists()
        assert not list(s.tmpdir.iterdir())  # the temporary folder is gone
        r = s.post("txt2img", {"prompt": "x", "send_images": False, **SMALL})
        assert r.status_code == 200 and r.json()["images"] == []
        r = s.post("txt2img", {"prompt": "x", "save_images": True, **SMALL})
        assert [Path(f).name for f in json.loads(r.json()["info"])["mlc"]["files"]] == ["00000.png"]
        r = s.post("txt2img", {"prompt": "x", "n_iter": 3, **SMALL})
        assert r.status_code == 400 and "limit of 2 per request" in r.json()["detail"]
    finally:
        s.stop()


def test_credentials(tiny: TinyModel, tmp_path: Path):
    """With --api-auth and a token every route needs them, the documentation too; webuiapi's
    username and password work."""
    s = Served(
        tmp_path / "work",
        tiny.safetensors,
        "--api-auth",
        "ann:secret1,bob:secret2",
        env={"MLC_SERVE_TOKEN": "t0ken-value"},
    )
    try:
        assert not any("every user" in line for line in s.lines)
        r = s.get("samplers")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert s.get("samplers", auth=("ann", "wrong")).status_code == 401
        assert s.get("samplers", auth=("eve", "secret1")).status_code == 401
        assert s.get("samplers", auth=("bob", "secret2")).status_code == 200
        assert s.get("samplers", headers={"Authorization": "Bearer t0ken-value"}).ok
        assert s.get("samplers", headers={"Authorization": "Bearer nope-nope"}).status_code == 401
        assert requests.get(f"{s.url}/docs", timeout=60).status_code == 401
        assert requests.get(f"{s.url}/openapi.json", auth=("ann", "secret1"), timeout=60).ok
        api = webuiapi.WebUIApi(baseurl=s.api, username="ann", password="secret1")
        assert api.get_sd_models()[0]["model_name"] == "tiny"
        r = api.txt2img(prompt="x", seed=3, **SMALL)
        assert r.info["all_seeds"] == [3]
    finally:
        s.stop()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlc.serve", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 would serve the engine beyond this machine"),
        (["--host", "192.168.1.5", "--api-auth", "nopass"], "--api-auth takes USER:PASSWORD"),
        (["--api-token", "short"], "--api-token must be at least 8 characters"),
        (["--port", "70000"], "--port 70000 is not a port number"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_refusals_are_one_line_exit_2(args, line):
    p = _serve(*args)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("mlc serve: error: ")
    assert line in p.stderr


def test_beyond_localhost_with_credentials_and_the_engine_entry(tiny: TinyModel, tmp_path: Path):
    """`mlc-txt2img --serve` is the same server; with credentials it may listen on every
    address; Ctrl-C ends it as an interrupted engine command (exit 130, one line)."""
    s = Served(
        tmp_path / "work",
        tiny.safetensors,
        "--host",
        "0.0.0.0",
        env={"MLC_SERVE_AUTH": "ann:secret1"},
        command=[sys.executable, "-m", "mlc.engine.txt2img", "--serve"],
    )
    try:
        assert s.url.startswith("http://0.0.0.0:")
        port = s.url.rsplit(":", 1)[1]
        r = requests.get(f"http://127.0.0.1:{port}/sdapi/v1/samplers", timeout=60)
        assert r.status_code == 401
    finally:
        code = s.stop()
    assert code == 130 and s.lines[-1] == "mlc serve: interrupted\n"
    p = subprocess.run(
        [sys.executable, "-m", "mlc.engine.txt2img", "--serve", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("usage: mlc-txt2img --serve")


def test_another_users_worker_is_never_reached(
    served: Served, test_user: pwd.struct_passwd, shared_dir: Path
):
    """The server's backend (as another user) refuses a worker folder that is not that
    user's: one line, and nothing is run."""
    served.post("txt2img", {"prompt": "x", **SMALL})  # the worker is up
    probe = (
        "from mlc.serve import EngineRequest\n"
        "from mlc.serve.backends import WorkerBackend\n"
        "from mlc.errors import MlcError\n"
        "try:\n"
        "    WorkerBackend().run(EngineRequest(['--prompt=x']), print)\n"
        "except MlcError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {
        "PYTHONPATH": str(shared_dir / "src"),
        "PATH": os.environ["PATH"],
        "HOME": test_user.pw_dir,
        "MLC_WORKER_DIR": str(served.worker_dir),
    }
    p = subprocess.run(
        ["runuser", "-u", test_user.pw_name, "--", "env", "-i",
         *[f"{k}={v}" for k, v in env.items()], TEST_USER_PYTHON, "-c", probe],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("refused: the engine worker folder")
    assert "belongs to uid 0, not to you" in p.stdout
