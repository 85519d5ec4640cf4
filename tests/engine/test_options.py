"""mlc.engine.options: the classic flags and their defaults, validation into a RunSpec, the
grid-axis syntax and the speed flags' checks (the MLC_* environment: test_env). In process: parsing
needs no model and no subprocess (the end-to-end exit codes are test_txt2img_cli's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlc.engine import UsageError, options, txt2img
from mlc.engine.spec import MAX_SEED, VALID, Axis, Limits, RunSpec, multiple_of_8

from .conftest import TinyModel, small_run


def _spec(*args: str) -> RunSpec:
    return options.parse(list(args))


def _usage(*args: str) -> str:
    with pytest.raises(UsageError) as info:
        _spec(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the classic flags --------------------------------------------------------------------


def test_classic_defaults(monkeypatch):
    monkeypatch.delenv("MLC_CKPT", raising=False)
    args = options.parse_args([])
    assert (args.n_iter, args.n_samples, args.n_rows) == (2, 3, 0)
    assert args.ddim_steps is None and options.validate(args).steps == 50  # 20 with --fast
    assert (args.H, args.W, args.scale, args.seed) == (512, 512, 7.5, 42)
    assert (args.C, args.f) == (None, None)  # the model's own (4 and 8 for SD v1)
    assert args.outdir == "outputs/txt2img-samples" and args.precision == "autocast"
    assert args.ckpt == "stable-diffusion-v1-5-emaonly/v1-5-pruned-emaonly.ckpt"
    assert args.ddim_eta == 0.0 and args.from_file is None and args.config is None
    assert options.validate(args).sampler == "ddim"
    assert _spec("--plms").sampler == "plms"
    assert _spec("--plms", "--dpm_solver").sampler == "dpm_solver"  # classic precedence
    h = options.parse_args(["--height", "256", "--width", "128"])
    assert (h.H, h.W) == (256, 128)
    assert txt2img.build_parser is options.build_parser  # still importable from the CLI


def test_mlc_ckpt_is_the_default_checkpoint(monkeypatch):
    monkeypatch.setenv("MLC_CKPT", "/models/sd.safetensors")
    assert _spec().ckpt == "/models/sd.safetensors"
    assert _spec("--ckpt", "other.ckpt").ckpt == "other.ckpt"


def test_benchmark_defaults_replace_the_classic_ones():
    args = options.parse_args([], defaults={"n_iter": 3, "prompt": "p"})
    assert (args.n_iter, args.prompt, args.n_samples) == (3, "p", 3)
    assert options.parse_args(["--n_iter", "5"], defaults={"n_iter": 3}).n_iter == 5


def test_the_run_spec():
    spec = _spec("--n_samples", "2", "--n_iter", "3", "--seed", "7", "--n_rows", "0")
    assert spec.batches == [["a painting of a virus monster playing guitar"] * 2]
    assert spec.n_images == 6 and spec.n_rows == 2
    assert spec.outdir == Path("outputs/txt2img-samples")
    assert spec.speed_modes() == {} and spec.axes == [] and spec.combos() == [()]
    fast = _spec("--deepcache", "3", "--tome", "0.5")
    assert fast.speed_modes() == {"deepcache": 3, "tome": 0.5}
    assert _spec("--deepcache", "1").deepcache == 0  # 1: every step full, nothing cached
    last = ("--n_samples", "1", "--n_iter", "6")  # seeds seed .. seed+5
    assert _spec("--seed", str(MAX_SEED - 5), *last).seed == MAX_SEED - 5
    assert "--seed must be between 0 and" in _usage("--seed", str(MAX_SEED - 4), *last)
    assert _spec("--seed", str(MAX_SEED), "--fixed_code", *last).seed == MAX_SEED


def test_multiple_of_8_is_one_rule_for_flags_and_axes():
    assert multiple_of_8("--H", 64) == 64
    for where, value, text in (
        ("--H", 500, "--H 500 is not a multiple of 8; use 496 or 504"),
        ("--x size:", 7, "--x size: 7 is not a multiple of 8; use 8"),
        ("--W", 0, "--W 0 must be a positive multiple of 8, e.g. 512"),
        ("--H", -64, "--H -64 must be a positive multiple of 8, e.g. 512"),
    ):
        with pytest.raises(UsageError, match=text):
            multiple_of_8(where, value)


ERRORS = [
    (["--H", "500"], "--H 500 is not a multiple of 8; use 496 or 504"),
    (["--W", "4"], "--W 4 is not a multiple of 8; use 8"),
    (["--H", "-64"], "--H -64 must be a positive multiple of 8, e.g. 512"),
    (["--W", "0"], "--W 0 must be a positive multiple of 8, e.g. 512"),
    (["--sampler", "k_lms"], "unknown sampler 'k_lms'; choose one of: ddim, plms, dpm_solver"),
    (["--plms", "--ddim_eta", "0.5"], "ddim_eta must be 0 for PLMS"),
    (["--ddim_steps", "0"], "--ddim_steps must be at least 1"),
    (["--n_samples", "0"], "--n_samples must be at least 1"),
    (["--n_iter", "0"], "--n_iter must be at least 1"),
    (["--scale", "-1"], "--scale must be 0 or more"),
    (["--precision", "half"], "argument --precision: invalid choice"),
    (["--H", "abc"], "argument --H/--height: invalid int value"),
    (["--plms", "--sampler", "euler"], "--plms conflicts with --sampler euler"),
    (["--from-file", "/nonexistent/prompts.txt"], "prompt file not found"),
    (
        ["--ckpt", "/nonexistent/v1-5-pruned-emaonly.ckpt"],
        "checkpoint not found: /nonexistent/v1-5-pruned-emaonly.ckpt",
    ),
    (["--laion400m"], "--laion400m"),
    (["--seed", "-1"], f"--seed must be between 0 and {MAX_SEED - 5}"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_bad_input_is_one_line(capsys, args: list[str], message: str):
    """What mlc-txt2img says (main, in process); the subprocess side is test_txt2img_cli's."""
    code = txt2img.main(args)
    out, err = capsys.readouterr()
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mlc-txt2img: error: ") and message in lines[0]
    assert "Traceback" not in err and out == ""


def test_prompt_file(tmp_path: Path):
    pfile = tmp_path / "p.txt"
    pfile.write_bytes("\ufeffa red cube\n\n  a bär 🐻  \n".encode())
    assert options.read_prompt_file(str(pfile)) == ["a red cube", "a bär 🐻"]
    spec = _spec("--from-file", str(pfile), "--n_samples", "1")
    assert spec.batches == [["a red cube"], ["a bär 🐻"]]
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="has no prompts"):
        options.read_prompt_file(str(tmp_path / "blank.txt"))


# --- the speed flags ----------------------------------------------------------------------


def test_fast_is_dpmpp_2m_karras_at_20_steps_unless_told_otherwise():
    spec = _spec("--fast")
    assert (spec.sampler, spec.steps) == ("dpmpp_2m_karras", 20)
    assert any("--fast" in n for n in spec.notes)
    assert _spec("--fast", "--ddim_steps", "12").steps == 12
    assert _spec("--fast", "--ddim_steps", "50").steps == 50  # explicit, even at the default
    assert _spec("--fast", "--sampler", "euler_a").sampler == "euler_a"
    assert _spec("--fast", "--plms").sampler == "plms"
    assert (_spec().sampler, _spec().steps) == ("ddim", 50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tome", "1.5"], "--tome must be between 0 and 1"),
        (["--tome", "-0.2"], "--tome must be between 0 and 1"),
        (["--deepcache", "-1"], "--deepcache must be 0"),
        (["--tiny_vae", "/nonexistent/taesd"], "does not exist"),
        (["--compile", "--tome", "0.5"], "--compile cannot be combined with --tome"),
        (["--compile", "--deepcache", "3"], "--compile cannot be combined with --tome"),
        (["--compile", "--x", "deepcache=0,3"], "--compile cannot be combined with a deepcache"),
    ],
)
def test_bad_speed_flags_are_one_line_usage_errors(
    capsys, tiny: TinyModel, tmp_path: Path, argv: list[str], message: str
):
    out = tmp_path / "out"
    args = [*small_run(tiny.safetensors), "--n_samples", "1", "--n_iter", "1", "--skip_grid"]
    code = txt2img.main([*args, "--outdir", str(out), "--json", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not list(out.rglob("*.png"))


def test_bare_tiny_vae_uses_mlc_tiny_vae_or_says_how_to_get_it(monkeypatch, taesd: Path):
    monkeypatch.delenv("MLC_TINY_VAE", raising=False)
    with pytest.raises(UsageError, match="mlc setup NAME taesd"):
        _spec("--tiny_vae")
    monkeypatch.setenv("MLC_TINY_VAE", "  ")  # blank: as if unset
    with pytest.raises(UsageError, match="mlc setup NAME taesd"):
        _spec("--tiny_vae")
    monkeypatch.setenv("MLC_TINY_VAE", str(taesd))
    assert _spec("--tiny_vae").tiny_vae == str(taesd)
    assert _spec("--tiny_vae", str(taesd)).speed_modes() == {"tiny_vae": taesd.name}


# --- grid axes ----------------------------------------------------------------------------


def test_parse_axes_values_and_aliases():
    spec = _spec("--x", "sampler=DDIM, plms,euler_a", "--y", "cfg=1,7.5", "--z", "size=64x128,96")
    x, y, z = spec.axes
    assert (x.flag, x.name, x.values) == ("x", "sampler", ("ddim", "plms", "euler_a"))
    assert (y.name, y.values) == ("scale", (1.0, 7.5))
    assert (z.name, z.values) == ("size", ((64, 128), (96, 96)))
    assert z.labels == ["size: 64x128", "size: 96x96"] and y.labels[1] == "scale: 7.5"
    assert _spec("--y", "steps=2,3").axes[0].flag == "y"  # any axis alone is fine
    for text, values in (
        ("seed=1,2", (1, 2)),
        ("ddim_steps=5", (5,)),
        ("height=64,128", (64, 128)),
        ("eta=0,0.5", (0.0, 0.5)),
        ("deepcache=0,2,3", (0, 2, 3)),
        ("tome=0,0.5", (0.0, 0.5)),
    ):
        assert _spec("--x", text).axes[0].values == values


def test_one_axis_from_its_text():
    axis = Axis.parse("z", " Width = 64, 128 ")
    assert axis == Axis("z", "W", (64, 128)) and axis.labels == ["W: 64", "W: 128"]
    assert Axis.parse("x", "size=64×96").values == ((64, 96),)
    assert Axis.parse("y", "seed=7").as_json() == {"flag": "y", "name": "seed", "values": [7]}
    with pytest.raises(UsageError, match="^--x: unknown axis 'Colour'; valid axes: sampler"):
        Axis.parse("x", "Colour=red")


def test_prompt_values_with_commas():
    bar = _spec("--x", "prompt=a red cube, black background|a blue ball").axes[0]
    assert bar.values == ("a red cube, black background", "a blue ball")
    quoted = _spec("--x", 'prompt="a red cube, black background", a blue ball').axes[0]
    assert quoted.values == bar.values
    assert _spec("--x", "negative_prompt=|blurry").axes[0].values == ("", "blurry")


def test_a_cell_is_a_one_image_run():
    spec = _spec("--x", "size=64x128,96", "--y", "prompt=a|b", "--seed", "3", "--n_iter", "4")
    assert spec.combos() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    cell = spec.cell((0, 1))
    assert (cell.width, cell.height, cell.batches, cell.seed) == (64, 128, [["b"]], 3)
    assert (cell.n_iter, cell.n_samples, cell.skip_grid, cell.quiet, cell.axes) == (
        1,
        1,
        True,
        True,
        [],
    )
    assert spec.cell((1, 0)).width == 96 and spec.axes[0].as_json()["values"] == ["64x128", "96x96"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--x", "colour=red,blue"], "--x: unknown axis 'colour'; valid axes: sampler, steps"),
        (["--y", "steps"], "--y: expected AXIS=V1,V2,... not 'steps'; valid axes: sampler"),
        (["--x", "steps="], "--x steps: no values"),
        (["--x", "steps=10,,20"], "--x steps: empty value"),
        (["--x", "steps=0,10"], "--x steps: 0 must be 1 or more"),
        (["--x", "steps=ten"], "--x steps: 'ten' is not an integer"),
        (["--x", "scale=-1"], "--x scale: -1 must be 0 or more"),
        (["--x", "sampler=ddim,nope"], "--x sampler: unknown sampler 'nope'"),
        (["--x", "size=500x512"], "--x size: 500 is not a multiple of 8; use 496 or 504"),
        (["--x", "size=1x2x3"], "--x size: '1x2x3' is not a size"),
        (["--x", "H=7"], "--x H: 7 is not a multiple of 8; use 8"),
        (["--x", "seed=-1"], "--x seed: -1 must be between 0 and"),
        (["--x", "steps=1", "--y", "steps=2"], "--y steps varies steps, which --x already"),
        (["--x", "size=64", "--z", "W=64"], "--z W varies W, which --x already varies"),
        (["--x", "sampler=plms", "--ddim_eta", "0.5"], "ddim_eta must be 0 for PLMS"),
        (["--x", "sampler=ddim,plms", "--y", "eta=0,1"], "ddim_eta must be 0 for PLMS"),
        (["--x", "steps=1", "--skip_save"], "--skip_save cannot be combined with --x"),
        (["--x", "tome=0,1"], "--x tome: 1 must be between 0 and 0.99"),
        (["--x", "deepcache=-1"], "--x deepcache: -1 must be 0 or more"),
    ],
)
def test_invalid_axes_are_one_line_usage_errors(args: list[str], expected: str):
    assert expected in _usage(*args)


def test_from_file_conflicts(tmp_path: Path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    assert "use a prompt axis" in _usage("--from-file", str(prompts), "--x", "steps=1")


def test_cli_usage_error_exit_2(capsys):
    assert txt2img.main(["--x", "nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith("valid axes: " + VALID)


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--H", "4096", "--W", "4096"],
            "--W 4096 --H 4096 is 16.8 megapixels, over the limit of 4.2 megapixels "
            "(2048x2048); to run it anyway, pass --max_pixels 16777216 (or --no_limits)",
        ),
        (
            ["--ddim_steps", "900"],
            "--ddim_steps 900 is over the limit of 500 steps; to run it anyway, pass "
            "--max_steps 900 (or --no_limits)",
        ),
        (
            ["--n_samples", "100000"],
            "200000 images (--n_samples 100000 x --n_iter 2) in one run is over the limit of "
            "10000; to run it anyway, pass --max_images 200000 (or --no_limits)",
        ),
        (
            ["--x", "size=512,4096x2048"],
            "--W 4096 --H 2048 (a grid cell) is 8.4 megapixels, over the limit of 4.2 megapixels",
        ),
        (["--x", "steps=10,600"], "--ddim_steps 600 (a grid cell) is over the limit of 500"),
        (
            ["--x", "seed=1,2,3", "--y", "steps=1,2", "--max_images", "5"],
            "6 grid cells in one run is over the limit of 5; to run it anyway, pass "
            "--max_images 6 (or --no_limits)",
        ),
        (["--max_steps", "-1"], "--max_steps must be 0 (no limit) or more, not -1"),
    ],
)
def test_limits_say_how_to_go_over_them(args: list[str], message: str):
    assert message in _usage(*args)


def test_limits_are_overridden_by_flag_env_or_no_limits(monkeypatch, tmp_path: Path):
    big = ("--H", "4096", "--W", "4096", "--ddim_steps", "900", "--n_samples", "6000")
    assert _spec(*big, "--no_limits").height == 4096
    flags = ("--max_pixels", "16777216", "--max_steps", "900", "--max_images", "12000")
    assert _spec(*big, *flags).steps == 900
    assert _spec(*big, "--max_pixels", "0", "--max_steps", "0", "--max_images", "0").n_images
    monkeypatch.setenv("MLC_MAX_PIXELS", "16777216")
    monkeypatch.setenv("MLC_MAX_STEPS", "off")
    monkeypatch.setenv("MLC_MAX_IMAGES", "12_000")
    assert _spec(*big).n_images == 12000
    assert "--max_pixels 16809984" in _usage(*big, "--max_pixels", "16777216", "--W", "4104")
    monkeypatch.setenv("MLC_MAX_STEPS", "many")
    assert _usage() == "MLC_MAX_STEPS must be a whole number (or 0 or off: no limit), not 'many'"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\nd\n")
    monkeypatch.setenv("MLC_MAX_STEPS", "50")
    monkeypatch.setenv("MLC_MAX_IMAGES", "5")
    assert "8 images (4 prompts x --n_iter 2) in one run" in _usage("--from-file", str(prompts))
    assert Limits() == Limits(2048 * 2048, 500, 10_000)
    assert "MLC_MAX_PIXELS" in options.REQUEST_ENV  # a worker request carries the client's
