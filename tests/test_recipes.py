"""mlc.recipes: shipped recipes, MLC_RECIPES overrides, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlc import recipes
from mlc.errors import MlcError, NotFoundError

SD_URL = "http://download.aime.info/public/models/stable-diffusion-v1-5-emaonly.zip"
SD_CKPT = "stable-diffusion-v1-5-emaonly/v1-5-pruned-emaonly.ckpt"

USER_RECIPE = """\
name: {name}
description: {description}
licence: test licence
source: download
urls: [http://example.invalid/m.zip]
files: [m/model.ckpt]
ckpt: m/model.ckpt
"""


@pytest.fixture(autouse=True)
def _no_user_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(recipes.ENV_RECIPES, raising=False)


def write(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


def test_builtins_load():
    loaded = recipes.load_recipes()
    assert {"stable-diffusion-v1-5", "demo"} <= set(loaded)
    assert all(r.builtin for r in loaded.values())
    assert all(r.ckpt in r.files for r in loaded.values())


def test_builtins_are_package_data():
    names = sorted(p.name for p in recipes.builtin_dir().glob("*.yaml"))
    assert "stable-diffusion-v1-5.yaml" in names and "demo.yaml" in names


def test_stable_diffusion_recipe_matches_the_seed():
    sd = recipes.get_recipe("stable-diffusion-v1-5")
    assert sd.source == "download" and sd.archive == "zip"
    assert sd.urls == (SD_URL,)
    assert sd.files == (SD_CKPT,) and sd.ckpt == SD_CKPT
    assert sd.unpack_to == ""
    assert "CreativeML Open RAIL-M" in sd.licence
    assert sd.apt == ("libglib2.0-0", "libsm6", "libxrender1", "libfontconfig1", "libgl1")
    assert sd.sha256 is None  # unknown upstream: recorded at the first download
    assert sd.size and sd.size > 3_000_000_000
    assert not any(p.startswith("torch") for p in sd.pip)


def test_demo_recipe_is_generated_not_downloaded():
    demo = recipes.get_recipe("demo")
    assert demo.source == "generate" and demo.urls == ()
    assert demo.generator[:3] == ("python", "-m", "mlc.engine.demo")
    # writes DEST/demo.ckpt: the trained shapes model shipped inside the package
    assert demo.generator[3:] == ("--shapes", "--format", "ckpt", "--name", "demo")
    assert demo.ckpt == "mlc-demo/demo.ckpt" and demo.unpack_to == "mlc-demo"


def test_user_recipes_override_and_extend(tmp_path, monkeypatch):
    user = tmp_path / "recipes"
    write(user, "sd.yaml", USER_RECIPE.format(name="stable-diffusion-v1-5", description="mine"))
    write(user, "extra.yml", USER_RECIPE.format(name="extra", description="new one"))
    write(user, "notes.txt", "not a recipe")
    monkeypatch.setenv(recipes.ENV_RECIPES, str(user))
    loaded = recipes.load_recipes()
    assert loaded["stable-diffusion-v1-5"].description == "mine"
    assert loaded["stable-diffusion-v1-5"].origin == str(user / "sd.yaml")
    assert not loaded["stable-diffusion-v1-5"].builtin
    assert loaded["extra"].urls == ("http://example.invalid/m.zip",)
    assert loaded["demo"].builtin  # the others are still there
    assert recipes.get_recipe("extra").description == "new one"


def test_several_dirs_later_wins(tmp_path, monkeypatch):
    a = tmp_path / "a"
    b = tmp_path / "b"
    write(a, "x.yaml", USER_RECIPE.format(name="x", description="from a"))
    write(b, "x.yaml", USER_RECIPE.format(name="x", description="from b"))
    monkeypatch.setenv(recipes.ENV_RECIPES, f"{a}:{b}")
    assert recipes.get_recipe("x").description == "from b"


def test_extra_dir_argument(tmp_path):
    write(tmp_path, "y.yaml", USER_RECIPE.format(name="y", description="arg"))
    assert recipes.get_recipe("y", extra_dir=tmp_path).description == "arg"


def test_name_defaults_to_file_stem(tmp_path):
    text = USER_RECIPE.format(name="ignored", description="d").replace("name: ignored\n", "")
    write(tmp_path, "from-stem.yaml", text)
    assert "from-stem" in recipes.load_recipes(tmp_path)


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(NotFoundError) as err:
        recipes.get_recipe("sd-xl")
    msg = str(err.value)
    assert "unknown recipe 'sd-xl'" in msg
    assert "demo" in msg and "stable-diffusion-v1-5" in msg


def test_missing_recipe_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.ENV_RECIPES, str(tmp_path / "nope"))
    with pytest.raises(MlcError, match="nope does not exist.*MLC_RECIPES"):
        recipes.load_recipes()


BASE = USER_RECIPE.format(name="m", description="d")


def variant(old: str, new: str) -> str:
    """BASE with one substitution (which must apply)."""
    assert old in BASE
    return BASE.replace(old, new)


MALFORMED = {
    "yaml-syntax": ("name: [unclosed\n", r"line \d+"),
    "not-mapping": ("- just\n- a list\n", "expected a mapping"),
    "missing": (variant("ckpt: m/model.ckpt\n", ""), "missing field.*ckpt"),
    "unknown-key": (BASE + "sha265: abc\n", "unknown field.*sha265"),
    "bad-sha": (BASE + "sha256: abc\n", "sha256 must be 64 hex"),
    "bad-size": (BASE + "size: big\n", "size must be"),
    "bad-archive": (BASE + "archive: rar\n", "archive must be"),
    "bad-source": (variant("source: download", "source: ftp"), "source must be"),
    "dotdot": (variant("[m/model.ckpt]", "[../x.ckpt]"), "must stay inside"),
    "absolute": (variant("[m/model.ckpt]", "[/abs.ckpt]"), "must be a relative path"),
    "ckpt-not-in-files": (variant("ckpt: m/model.ckpt", "ckpt: o.c"), "'o.c' must be one of"),
    "no-urls": (variant("[http://example.invalid/m.zip]", "[]"), "at least one entry in urls"),
    "bad-scheme": (variant("http://", "ftp://"), "must start with http"),
    "bad-name": (USER_RECIPE.format(name="Bad Name", description="d"), "name 'Bad Name'"),
    "no-generator": (variant("source: download", "source: generate"), "needs a generator"),
}


@pytest.mark.parametrize(("text", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_user_recipe_names_the_file(tmp_path, monkeypatch, text, problem):
    path = write(tmp_path / "user", "broken.yaml", text)
    monkeypatch.setenv(recipes.ENV_RECIPES, str(tmp_path / "user"))
    with pytest.raises(MlcError, match=problem) as err:
        recipes.load_recipes()
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_recipe_values_are_normalised(tmp_path):
    text = (
        USER_RECIPE.format(name="n", description="d").replace("[m/model.ckpt]", "[./m//model.ckpt]")
        + "sha256: "
        + "AB" * 32
        + "\nurls: http://example.invalid/one.zip\n"
    )
    text = text.replace("urls: [http://example.invalid/m.zip]\n", "")
    r = recipes.load_recipe_file(write(tmp_path, "n.yaml", text))
    assert r.files == ("m/model.ckpt",) and r.sha256 == "ab" * 32
    assert r.urls == ("http://example.invalid/one.zip",)


def test_taesd_recipe_is_a_tiny_vae_not_a_checkpoint():
    taesd = recipes.get_recipe("taesd")
    assert taesd.role == "tiny_vae" and taesd.archive == "file"
    assert taesd.ckpt == "taesd/diffusion_pytorch_model.safetensors"
    assert recipes.get_recipe("stable-diffusion-v1-5").role == "checkpoint"


def test_engine_env_exports_what_setup_recorded():
    from mlc.provision import engine_env

    state = {"ckpt": "/models/a.ckpt", "cache_dir": "/models/.mlc-cache", "tiny_vae": "/m/t.st"}
    assert engine_env(state) == {
        "MLC_CKPT": "/models/a.ckpt",
        "MLC_CACHE_DIR": "/models/.mlc-cache",
        "MLC_TINY_VAE": "/m/t.st",
    }
    assert engine_env({"ckpt": "/models/a.ckpt"}) == {"MLC_CKPT": "/models/a.ckpt"}


def test_unknown_role_is_refused(tmp_path):
    path = write(tmp_path, "r.yaml", USER_RECIPE.format(name="r", description="d") + "role: lora\n")
    with pytest.raises(MlcError, match="role must be one of checkpoint, tiny_vae"):
        recipes.load_recipe_file(path)


def test_engine_support_needs_python_310_and_torch_20():
    from mlc.provision import Python, check_engine_support

    check_engine_support(Python("/usr/bin/python3", "2.1.0+cu121", "/site", "3.10"), "sd")
    check_engine_support(Python("/usr/bin/python3", None, "/site", "3.12"), "sd")  # no torch yet
    check_engine_support(Python("/usr/bin/python3", "2.0.1", "/site", "3.10"), "sd")  # the seed's
    for py, torch in (("3.9", "2.5.1"), ("3.11", "1.13.1")):
        with pytest.raises(MlcError, match=f"container sd has Python {py}, torch {torch}"):
            check_engine_support(Python("/usr/bin/python3", torch, "/site", py), "sd")
