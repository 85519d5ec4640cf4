"""mlc.serve's pure parts: A1111 names <-> engine samplers, request checking, the response's
``info``, PNG text chunks, the server's settings and its safety rule, the model list."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import pytest

from mlc.errors import MlcError, UsageError
from mlc.serve import RequestError, a1111, names, options, require_web


def test_every_engine_sampler_of_the_table_exists_and_maps_back():
    from mlc.engine.samplers import SAMPLERS

    assert names.engine_names() <= set(SAMPLERS)
    for engine in names.engine_names():
        a1111_name, schedule = names.to_a1111(engine)
        label = SAMPLERS[engine].label
        if engine != "dpm_solver":  # the CompVis sampler: shown as DPM++ 2M
            assert names.resolve(a1111_name, schedule.name if schedule else None).engine == engine
        expect = a1111_name if schedule is None or schedule.name == "uniform" else None
        assert label == (expect or f"{a1111_name} {schedule.label}")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sampler", "scheduler", "engine", "schedule"),
    [
        (None, None, "euler", "Uniform"),  # A1111's API default: Euler
        ("Euler a", "automatic", "euler_a", "Uniform"),
        ("DPM++ 2M", None, "dpmpp_2m_karras", "Karras"),  # A1111 1.9+: Automatic is Karras
        ("DPM++ 2M", "Uniform", "dpmpp_2m", "Uniform"),
        ("DPM++ 2M Karras", None, "dpmpp_2m_karras", "Karras"),  # the old combined name
        ("dpm++ 2m sde", "KARRAS", "dpmpp_2m_sde_karras", "Karras"),
        ("DPM++ 2M SDE", "Automatic", "dpmpp_2m_sde", "Uniform"),  # A1111's Exponential: absent
        ("DPM2", None, "dpm2", "Uniform"),
        ("k_lms", "karras", "lms_karras", "Karras"),
        ("LMS Karras", None, "lms_karras", "Karras"),
        ("DDIM", "Karras", "ddim", None),  # no schedule for DDIM/PLMS/UniPC (A1111 ignores it)
        ("PLMS", None, "plms", None),
        ("UniPC", None, "unipc", None),
        ("euler_a", None, "euler_a", "Uniform"),  # the engine's own names
        ("dpm_solver", None, "dpm_solver", "Uniform"),
    ],
)
def test_resolve(sampler, scheduler, engine, schedule):
    choice = names.resolve(sampler, scheduler)
    assert (choice.engine, choice.schedule_label) == (engine, schedule)


@pytest.mark.parametrize(
    ("sampler", "scheduler", "line"),
    [
        ("Nope", None, "unknown sampler 'Nope'; choose one of: DPM++ 2M, "),
        ("DPM++ SDE", None, "the DPM++ SDE sampler is not supported by mlc"),
        ("Restart", "karras", "the Restart sampler is not supported by mlc"),
        ("Euler", "Karras", "Euler with the Karras schedule is not supported by mlc; use Uniform"),
        ("Euler", "Exponential", "the Exponential schedule is not supported by mlc"),
        ("Euler", "zigzag", "unknown scheduler 'zigzag'; choose one of: Automatic, Uniform"),
    ],
)
def test_resolve_refuses_with_the_valid_names(sampler, scheduler, line):
    with pytest.raises(RequestError) as err:
        names.resolve(sampler, scheduler)
    assert err.value.status == 400 and line in str(err.value)


def test_samplers_and_schedulers_as_a1111_lists_them():
    listed = {s.name: s.as_api() for s in names.SAMPLERS}
    assert listed["DPM++ 2M"] == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    assert listed["Euler a"]["options"] == {}
    assert [s.as_api()["label"] for s in names.SCHEDULERS] == ["Automatic", "Uniform", "Karras"]


# -- requests ------------------------------------------------------------------------------------


def test_parse_defaults_and_the_engine_command_line():
    req = a1111.parse({"prompt": "--a cube", "seed": 5}, a1111.Limits())
    assert req.body["steps"] == 50 and req.body["cfg_scale"] == 7.0
    assert (req.body["width"], req.body["height"]) == (512, 512)
    assert req.choice.engine == "euler" and req.seed == 5 and req.n_images == 1
    assert req.save and req.send and not req.grid
    argv = req.argv("/m/x.ckpt", a1111.Limits(100, 10, 5))
    assert argv[:11] == [
        "--prompt=--a cube",  # `=`: a prompt that starts with dashes stays a value
        "--negative_prompt=",
        "--sampler=euler",
        "--ddim_steps=50",
        "--scale=7.0",
        "--W=512",
        "--H=512",
        "--seed=5",
        "--n_samples=1",
        "--n_iter=1",
        "--json",
    ]
    assert argv[11:] == [
        "--skip_grid",
        "--ckpt=/m/x.ckpt",
        "--max_pixels=100",
        "--max_steps=10",
        "--max_images=5",
    ]
    assert "--ddim_eta=0.5" in a1111.parse({"sampler_name": "DDIM", "eta": 0.5}).argv()
    assert not any("eta" in f for f in a1111.parse({"sampler_name": "PLMS", "eta": 1}).argv())


def test_saving_follows_the_request_then_the_server():
    def saves(body: dict, default: bool = True) -> tuple[bool, bool]:
        req = a1111.parse({"batch_size": 2, **body}, save_default=default)
        return req.save, req.grid

    assert saves({}) == (True, True)  # a batch that is saved gets its grid, as in A1111
    assert saves({"save_images": False}) == (False, False)
    assert saves({"do_not_save_samples": True, "save_images": True}) == (False, False)
    assert saves({"do_not_save_grid": True}) == (True, False)
    assert saves({}, default=False) == (False, False)  # mlc serve --no-save
    assert saves({"save_images": True}, default=False) == (True, True)
    assert a1111.parse({"save_images": True}).grid is False  # one image: no grid


def test_random_seeds_and_seed_range():
    seeds = {a1111.parse({"seed": -1}).seed for _ in range(20)}
    assert all(0 <= s < a1111.RANDOM_SEEDS for s in seeds) and len(seeds) > 1
    top = a1111.MAX_SEED - 1
    assert a1111.parse({"seed": top, "batch_size": 2}).seed == top
    with pytest.raises(RequestError, match="between 0 and"):
        a1111.parse({"seed": top, "batch_size": 3})


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"steps": True}, 422, "steps must be an integer, not True"),
        ({"steps": 2.5}, 422, "steps must be an integer"),
        ({"prompt": 3}, 422, "prompt must be a string"),
        ({"styles": "x"}, 422, "styles must be an array"),
        ({"height": -64}, 400, "height must be a positive multiple of 8, e.g. 512, not -64"),
        ({"width": 500}, 400, "width 500 is not a multiple of 8; use 496 or 504"),
        ({"prompt": "x" * 20_001}, 400, "prompt is 20001 characters"),
        ({"n_iter": 0}, 400, "n_iter must be at least 1"),
        ({"eta": -1}, 400, "eta must be >= 0"),
        ({"tiling": True}, 501, "tiling is not supported"),
        ({"styles": ["cinematic"]}, 501, "styles is not supported"),
        ({"s_churn": 0.5}, 501, "s_churn"),
        ({"s_noise": 0.9}, 501, "s_noise other than 1"),
        ({"refiner_checkpoint": "x"}, 501, "refiner models"),
        ({"seed_resize_from_h": 256}, 501, "seed resizing"),
        ({"infotext": "a cube\nSteps: 20"}, 501, "infotext"),
    ],
)
def test_parse_refusals(body, status, says):
    with pytest.raises(RequestError) as err:
        a1111.parse(body)
    assert err.value.status == status and says in str(err.value)


def test_fields_a1111_clients_send_with_neutral_values_are_accepted():
    body = {  # what webuiapi sends by default
        "enable_hr": False, "denoising_strength": 0.7, "hr_upscaler": "Latent", "styles": [],
        "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "restore_faces": False, "tiling": False, "eta": 1.0,
        "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "script_name": None, "script_args": [], "alwayson_scripts": {},
        "sampler_index": "Euler a", "scheduler": "automatic", "unknown_field": 1,
    }  # fmt: skip
    req = a1111.parse(body)
    assert req.choice.engine == "euler_a" and "unknown_field" not in req.body
    assert req.body["hr_upscaler"] == "Latent"  # echoed in `parameters`, as A1111 does


def test_limits():
    limits = a1111.Limits(pixels=64 * 64, steps=10, images=4)
    assert a1111.parse({"width": 64, "height": 64, "steps": 10, "batch_size": 4}, limits)
    for body, says in [
        ({"width": 64, "height": 72, "steps": 10}, "64x72 is 4,608 pixels, over this server's"),
        ({"width": 64, "height": 64, "steps": 11}, "steps 11 is over this server's limit of 10"),
        ({"width": 64, "height": 64, "steps": 9, "n_iter": 5}, "5 images (batch_size 1 x n_iter"),
    ]:
        with pytest.raises(RequestError, match=r"mlc serve --max-") as err:
            a1111.parse(body, limits)
        assert says in str(err.value)
    unlimited = a1111.Limits(None, None, None)
    assert a1111.parse({"width": 8192, "height": 8192, "steps": 900}, unlimited)
    assert unlimited.engine_flags() == ["--max_pixels=0", "--max_steps=0", "--max_images=0"]


def test_schema_lists_every_field():
    schema = a1111.schema()
    assert set(schema["properties"]) == {f.name for f in a1111.FIELDS}
    assert schema["properties"]["steps"] == {
        "type": "integer",
        "description": "sampling steps",
        "default": 50,
    }


# -- responses -----------------------------------------------------------------------------------


def _png(texts: dict[str, str], compressed: set[str] = frozenset()) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in texts.items():
        info.add_text(k, v, zip=k in compressed)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_png_text_reads_text_compressed_and_international_chunks():
    data = _png({"parameters": "a cube\nSteps: 3", "mlc": '{"seed": 1}', "note": "ünïcödé ✓"})
    assert a1111.png_text(data) == {
        "parameters": "a cube\nSteps: 3",
        "mlc": '{"seed": 1}',
        "note": "ünïcödé ✓",
    }
    assert b"zTXt" in _png({"big": "x" * 5000}, {"big"})
    assert a1111.png_text(_png({"big": "x" * 5000}, {"big"}))["big"] == "x" * 5000
    assert zlib  # zTXt/iTXt compressed chunks use zlib


def test_info_has_a1111s_keys_and_the_real_seeds():
    req = a1111.parse({"prompt": "p", "negative_prompt": "n", "seed": -1, "batch_size": 2})
    samples = [
        ({"seed": 11, "prompt": "p", "negative_prompt": "n"}, _png({"parameters": "p\nSeed: 11"})),
        ({"seed": 12, "prompt": "p", "negative_prompt": "n"}, _png({"parameters": "p\nSeed: 12"})),
    ]
    grid = _png({"parameters": "grid text"})
    info = a1111.info(req, samples, {"name": "demo", "hash": "abcd1234"}, grid=grid)
    a1111_keys = {
        "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds",
        "subseed", "all_subseeds", "subseed_strength", "width", "height", "sampler_name",
        "cfg_scale", "steps", "batch_size", "restore_faces", "face_restoration_model",
        "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
        "seed_resize_from_h", "denoising_strength", "extra_generation_params",
        "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
        "is_using_inpainting_conditioning", "version",
    }  # fmt: skip
    assert a1111_keys <= set(info)
    assert info["seed"] == 11 and info["all_seeds"] == [11, 12]
    assert info["infotexts"] == ["grid text", "p\nSeed: 11", "p\nSeed: 12"]
    assert info["index_of_first_image"] == 1
    assert (info["sd_model_name"], info["sd_model_hash"]) == ("demo", "abcd1234")
    assert info["all_negative_prompts"] == ["n", "n"]
    json.dumps(info)  # a JSON document


# -- the server's settings -----------------------------------------------------------------------


def test_auth_parsing_and_the_localhost_rule():
    assert options.parse_auth("ann:pw,bob:p:w") == [("ann", "pw"), ("bob", "p:w")]
    for bad in ("ann", "ann:", ":pw"):
        with pytest.raises(UsageError, match="USER:PASSWORD"):
            options.parse_auth(bad)
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert options.is_loopback(host)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not options.is_loopback(host)
    options.check(options.ServeOptions())
    with pytest.raises(UsageError, match="--host 0.0.0.0 would serve the engine beyond"):
        options.check(options.ServeOptions(host="0.0.0.0"))
    options.check(options.ServeOptions(host="0.0.0.0", users=[("a", "b")]))
    options.check(options.ServeOptions(host="::", token="0123456789"))


def test_credentials_come_from_the_flags_else_the_environment():
    env = {"MLC_SERVE_AUTH": "env:pw", "MLC_SERVE_TOKEN": "env-token-1"}
    assert options.credentials(None, None, env) == ([("env", "pw")], "env-token-1")
    assert options.credentials("flag:pw", "flag-token", env) == ([("flag", "pw")], "flag-token")
    assert options.credentials(None, None, {}) == ([], None)
    with pytest.raises(UsageError, match="at least 8"):
        options.credentials(None, "short", {})


def test_require_web_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name)
    )
    with pytest.raises(MlcError) as err:
        require_web()
    assert str(err.value) == (
        "the A1111 API server needs uvicorn, which this Python lacks (install them: pip install "
        "'mlc-toolkit[serve]')"
    )


def test_models_from_the_setup_state(tmp_path: Path, monkeypatch):
    from mlc.engine.checkpoint import legacy_model_hash
    from mlc.serve import link

    demo = tmp_path / "mlc-demo" / "demo.ckpt"
    sd = tmp_path / "sd" / "v1-5.safetensors"
    for f in (demo, sd):
        f.parent.mkdir()
        f.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: the legacy hash reads at 1 MiB
    state = {
        "models": {"demo": str(demo), "stable-diffusion-v1-5": str(sd), "taesd": "/m/taesd"},
        "ckpt": str(sd),
        "tiny_vae": "/m/taesd",
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    monkeypatch.setattr(link, "STATE_FILE", tmp_path / "state.json")
    monkeypatch.delenv("MLC_CKPT", raising=False)
    models = link.models()
    assert [m["model_name"] for m in models] == ["v1-5", "demo"]  # the default first
    assert [m["default"] for m in models] == [True, False]
    assert models[0]["hash"] == legacy_model_hash(sd) and len(models[0]["hash"]) == 8
    assert models[0]["title"] == f"v1-5.safetensors [{models[0]['hash']}]"
    monkeypatch.setenv("MLC_CKPT", "/elsewhere/mine.ckpt")
    models = link.models()
    assert models[0]["filename"] == "/elsewhere/mine.ckpt" and models[0]["hash"] is None
    assert models[0]["title"] == "mine.ckpt"
    monkeypatch.setattr(link, "STATE_FILE", tmp_path / "absent.json")
    assert [m["model_name"] for m in link.models()] == ["mine"]


def test_the_state_file_is_the_one_setup_writes():
    from mlc import provision
    from mlc.serve import link

    assert Path(str(provision.STATE)) == link.STATE_FILE


def test_the_serve_extra_is_what_setup_installs_in_a_container():
    """pyproject's ``serve`` extra, the test extra and ``mlc setup --serve`` name the same
    packages; the in-container hint says how to get them."""
    import tomllib

    from mlc.serve import WEB_REQUIREMENTS
    from mlc.serve.server import IN_CONTAINER_INSTALL

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert tuple(extras["serve"]) == WEB_REQUIREMENTS
    assert set(WEB_REQUIREMENTS) <= set(extras["test"])
    assert any(r.startswith("webuiapi") for r in extras["test"])
    assert IN_CONTAINER_INSTALL == (
        "`mlc setup NAME MODEL --serve` on the host, or here: pip install 'fastapi>=0.110' "
        "'uvicorn>=0.29'"
    )
