"""End to end: create, setup (real HTTP download), txt2img, as a real non-root user."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
from PIL import Image

from httpserver import FileServer

pytestmark = pytest.mark.docker

# One small image per run (64x64, 2 steps, no grid).
SMALL = ("--n_samples", "1", "--n_iter", "1", "--H", "64", "--W", "64", "--ddim_steps", "2",
         "--skip_grid")  # fmt: skip

RECIPE = """\
name: tiny-sd
description: a tiny random-weight SD v1 model served by the test
licence: MIT (test weights)
source: download
urls: [{url}]
archive: zip
files: [tiny-sd/tiny.ckpt]
ckpt: tiny-sd/tiny.ckpt
apt: []
pip: [diffusers, transformers]
"""


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory) -> bytes:
    """A zip like the seed's: a folder holding an original-format single-file checkpoint."""
    from mlc.engine.demo import build_demo_checkpoint

    d = tmp_path_factory.mktemp("tiny")
    ckpt = build_demo_checkpoint(d, name="tiny", fmt="ckpt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            zf.write(path, f"tiny-sd/{path.relative_to(d).as_posix()}")
    assert ckpt.name == "tiny.ckpt"
    return buf.getvalue()


def test_create_setup_txt2img_as_user(mlc, name, user_dir, test_user, torch_catalog, tiny_zip):
    recipes = user_dir / "recipes"
    recipes.mkdir()
    with FileServer({"/models/tiny-sd.zip": tiny_zip}) as srv:
        (recipes / "tiny-sd.yaml").write_text(RECIPE.format(url=srv.url("/models/tiny-sd.zip")))
        for p in (recipes, recipes / "tiny-sd.yaml"):
            os.chown(p, test_user.pw_uid, test_user.pw_gid)
        env = {"MLC_CATALOG": str(torch_catalog), "MLC_RECIPES": str(recipes)}
        ws, models = user_dir / "ws", user_dir / "models"

        def run(*args: str):
            return mlc.as_user(test_user.pw_name, *args, env=env, timeout=600)

        r = run("create", name, "Pytorch", "2.13.0-cpu", "-w", str(ws), "-m", str(models))
        assert r.code == 0, r.err
        r = run("setup", name, "tiny-sd")
        assert r.code == 0, r.err
        assert "/models/tiny-sd/tiny.ckpt" in r.out
        assert "recorded sha256" in r.err  # the recipe publishes none: shown once recorded
        assert len(srv.gets("/models/tiny-sd.zip")) == 1
        assert (models / "tiny-sd" / "tiny.ckpt").is_file()
        assert not list(models.glob("*.zip"))  # the archive is removed after success

        r = run("setup", name, "tiny-sd")  # a re-run downloads nothing
        assert r.code == 0, r.err
        assert "already installed" in r.err
        assert len(srv.gets("/models/tiny-sd.zip")) == 1

    prompt = "a photo of a pink cube, black background"
    r = run(
        "txt2img",
        name,
        "--prompt",
        prompt,
        "--plms",
        "--skip_grid",
        "--n_samples",
        "1",
        "--n_iter",
        "1",
        "--H",
        "64",
        "--W",
        "64",
        "--ddim_steps",
        "4",
        "--json",
    )
    assert r.code == 0, r.err
    png = ws / "outputs" / "txt2img-samples" / "samples" / "00000.png"
    assert png.is_file(), r.out
    assert (png.stat().st_uid, png.stat().st_gid) == (test_user.pw_uid, test_user.pw_gid)
    info = Image.open(png).info
    assert info["parameters"].startswith(prompt)
    assert "Steps: 4" in info["parameters"] and "Seed: 42" in info["parameters"]
    assert "Size: 64x64" in info["parameters"]

    # Bulk from a prompt file given as a host path: it is found through the workspace mount.
    prompts = ws / "prompts.txt"
    prompts.write_text("a red cube\n\na blue sphere\na green cone\n")
    os.chown(prompts, test_user.pw_uid, test_user.pw_gid)
    r = run(
        "txt2img",
        name,
        "--from-file",
        str(prompts),
        "--n_samples",
        "2",
        "--n_iter",
        "1",
        "--H",
        "64",
        "--W",
        "64",
        "--ddim_steps",
        "2",
        "--skip_grid",
        "--outdir",
        "bulk",
    )
    assert r.code == 0, r.err
    bulk = sorted((ws / "bulk" / "samples").glob("*.png"))
    assert [Image.open(p).info["parameters"].split("\n")[0] for p in bulk] == [
        "a red cube",
        "a blue sphere",
        "a green cone",
    ]
    r = run("txt2img", name, "--from-file", "/etc/hostname", "--n_samples", "1")
    assert r.code != 0 and "not visible inside" in r.err  # a host file outside the mounts

    # Bad input inside the container: the engine's one line and its exit code come back.
    r = run("txt2img", name, "--H", "63", "--n_samples", "1")
    assert r.code == 2 and "Traceback" not in r.err
    assert "multiple of 8" in r.err

    # The seed's manual path: a login shell in the container, the engine by module name.
    r = run(
        "open",
        name,
        "--",
        "bash",
        "-lc",
        "python -m mlc.engine.txt2img --prompt x --n_samples 1 --n_iter 1 --H 64 --W 64 "
        "--ddim_steps 2 --skip_grid --outdir manual",
    )
    assert r.code == 0, r.err
    assert (ws / "manual" / "samples" / "00000.png").is_file()
    # The engine's converted-weights cache lives beside the models, not in the container layer.
    r = run("open", name, "--", "sh", "-c", 'echo "$MLC_CACHE_DIR"')
    assert r.out.strip() == "/models/.mlc-cache"

    # TAESD for --tiny_vae: the shipped recipe (its URL replaced by the test server's) sets
    # MLC_TINY_VAE and leaves the default checkpoint alone.
    from mlc.engine.tinyvae import build_random_tiny_vae

    taesd = build_random_tiny_vae(user_dir / "taesd-src.safetensors").read_bytes()
    with FileServer({"/taesd.safetensors": taesd}) as srv:
        r = run("setup", name, "taesd", "--url", srv.url("/taesd.safetensors"))
        assert r.code == 0, r.err
        again = run("setup", name, "taesd", "--url", srv.url("/taesd.safetensors"))
        assert again.code == 0, again.err  # the same URL again: verified, nothing downloaded
        said = [line for line in again.err.splitlines() if "already installed" in line]
        assert len(said) == 1 and "--force" in said[0]
        assert len(srv.gets("/taesd.safetensors")) == 1
    assert "--tiny_vae" in r.out
    assert (models / "taesd" / "diffusion_pytorch_model.safetensors").read_bytes() == taesd
    r = run(
        "txt2img",
        name,
        "--tiny_vae",
        "--from-file",
        str(prompts),
        *SMALL,
        "--outdir",
        "fast",
        "--json",
    )  # a bare --tiny_vae: the host path after it is still translated
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert [i["prompt"] for i in summary["images"]] == [
        "a red cube",
        "a blue sphere",
        "a green cone",
    ]
    assert summary["speed_modes"]["tiny_vae"] == "diffusion_pytorch_model.safetensors"
    assert summary["model"] == "tiny"  # the checkpoint is still tiny-sd's
    host_taesd = models / "taesd" / "diffusion_pytorch_model.safetensors"
    r = run("txt2img", name, "--tiny_vae", str(host_taesd), "--n_samples", "1", "--n_iter",
            "1", "--H", "64", "--W", "64", "--ddim_steps", "2", "--outdir", "fast")  # fmt: skip
    assert r.code == 0, r.err  # the host path is found through the models mount

    r = run("models", "--json")
    assert r.code == 0, r.err
    row = next(m for m in json.loads(r.out) if m["name"] == "tiny-sd")
    assert str(models) in row["installed"]


def test_setup_errors_leave_things_intact(mlc, name, tmp_path, torch_catalog, tiny_zip):
    env = {"MLC_CATALOG": str(torch_catalog), "MLC_RECIPES": str(tmp_path / "recipes")}
    (tmp_path / "recipes").mkdir()
    models = tmp_path / "models"
    r = mlc("setup", name, "demo", env=env)
    assert r.code != 0 and "Traceback" not in r.err
    assert "no container named" in r.err
    r = mlc(
        "create",
        name,
        "Pytorch",
        "2.13.0-cpu",
        "-w",
        str(tmp_path / "ws"),
        "-m",
        str(models),
        env=env,
    )
    assert r.code == 0, r.err
    r = mlc("setup", name, "no-such-recipe", env=env)
    assert r.code != 0 and "stable-diffusion-v1-5" in r.err  # lists the valid recipes

    with FileServer({"/tiny.zip": tiny_zip}) as srv:
        recipe = RECIPE.format(url=srv.url("/tiny.zip")) + f"sha256: {'0' * 64}\n"
        (tmp_path / "recipes" / "tiny-sd.yaml").write_text(recipe)
        r = mlc("setup", name, "tiny-sd", env=env)
        assert r.code != 0 and "Traceback" not in r.err
        assert "sha256" in r.err.lower()
        assert not (models / "tiny-sd").exists()  # nothing half-installed

        r = mlc("txt2img", name, "--n_samples", "1", env=env)  # the engine is in, no weights
        assert r.code != 0 and "Traceback" not in r.err

    srv_url = "http://127.0.0.1:9/tiny.zip"  # nothing listens on the discard port
    (tmp_path / "recipes" / "tiny-sd.yaml").write_text(RECIPE.format(url=srv_url))
    r = mlc("setup", name, "tiny-sd", env=env)
    assert r.code != 0 and "Traceback" not in r.err
    lines = [line for line in r.err.splitlines() if line.startswith("mlc: error:")]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0]


def test_provisioning_is_idempotent_and_names_failures(mlc, name, tmp_path, torch_catalog):
    """Real apt and pip inside the container (through this host's proxy and CA bundle)."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    gen = "source: generate\ngenerator: [python, -m, mlc.engine.demo, --format, ckpt, --name, m]\n"
    common = "description: t\nlicence: MIT\nfiles: [m/m.ckpt]\nckpt: m/m.ckpt\nunpack_to: m\n" + gen
    (recipes / "withapt.yaml").write_text(f"name: withapt\n{common}apt: [jq]\npip: [six]\n")
    (recipes / "badapt.yaml").write_text(f"name: badapt\n{common}apt: [no-such-package-mlc]\n")
    (recipes / "badpip.yaml").write_text(f"name: badpip\n{common}pip: [no-such-package-mlc==1]\n")
    env = {"MLC_CATALOG": str(torch_catalog), "MLC_RECIPES": str(recipes)}
    r = mlc(
        "create",
        name,
        "Pytorch",
        "2.13.0-cpu",
        "-w",
        str(tmp_path / "ws"),
        "-m",
        str(tmp_path / "models"),
        env=env,
    )
    assert r.code == 0, r.err
    assert mlc("start", name, env=env).code == 0

    r = mlc("setup", name, "withapt", env=env, timeout=600)
    assert r.code == 0, r.err
    assert "apt: installing jq" in r.err and "pip: installing six" in r.err
    assert "keeping torch 2.13.0" in r.err
    r = mlc(
        "open",
        name,
        "--",
        "sh",
        "-c",
        "jq --version && python -c 'import six, torch; print(torch.__version__)'",
        env=env,
    )
    assert r.code == 0, r.err
    assert r.out.split()[-1] == "2.13.0+cpu"  # torch was kept

    r = mlc("setup", name, "withapt", env=env)  # a re-run skips what is done
    assert r.code == 0, r.err
    assert "apt: installing" not in r.err and "pip: installing" not in r.err
    assert "already installed" in r.err

    r = mlc("setup", name, "badapt", env=env, timeout=600)
    assert r.code != 0 and "Traceback" not in r.err
    assert "mlc: error: apt could not install no-such-package-mlc" in r.err
    r = mlc("setup", name, "badpip", env=env, timeout=600)
    assert r.code != 0 and "mlc: error: pip could not install no-such-package-mlc==1" in r.err
    r = mlc(
        "txt2img",
        name,
        *SMALL,
        env=env,
    )
    assert r.code == 0, r.err  # the last good state (withapt's model) is still usable
