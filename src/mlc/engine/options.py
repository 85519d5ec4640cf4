"""The engine's command line: the classic ``scripts/txt2img.py`` flags (argparse), their
validation into a ``RunSpec`` and the ``--x/--y/--z AXIS=V1,V2`` syntax.

Every check raises a ``UsageError`` with one clear line (exit 2). The defaults that come from
``MLC_*`` environment variables are read through ``mlc.engine.env`` (the engine's only reader
of ``MLC_*``), whose names this module re-exports.

One axis's text (``AXIS=V1,V2``) is parsed by ``spec.Axis.parse``; how the axes combine
(with each other and with the other flags) is checked here.

Why one module of ~500 lines: most of it is the flag table itself (the classic flags and
mlc's, each with its help text), which reads best as one parser; the environment is in
``mlc.engine.env``, the scale-out flags in ``mlc.engine.scale.flags``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from mlc.engine import PROG, UsageError

# re-exported: the environment, for the callers that read it beside the flags
from mlc.engine.env import (  # noqa: F401
    CACHE_MIN_BYTES,
    REQUEST_ENV,
    apply_request_env,
    bench_dir,
    cache_min_bytes,
    cache_root,
    default_ckpt,
    limit_default,
    request_env,
    request_tag,
    tiny_vae_default,
    worker_dir,
    worker_idle,
)
from mlc.engine.samplers import SAMPLERS, get_sampler
from mlc.engine.scale import flags as scale_flags
from mlc.engine.spec import (
    DEFAULT_OUTDIR,
    DEFAULT_PROMPT,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    FAST_SAMPLER,
    FAST_STEPS,
    MAX_IMAGES,
    MAX_PIXELS,
    MAX_SEED,
    MAX_STEPS,
    Axis,
    Limits,
    RunSpec,
    multiple_of_8,
)

# -- the parser ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are a UsageError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser (defaults read from the environment now)."""
    p = _Parser(
        prog=PROG,
        description="Stable Diffusion v1 text-to-image with the classic txt2img.py flags.",
        epilog=f"{PROG} --serve [--port P] ...: serve the warm worker with AUTOMATIC1111's web "
        f"API instead (flags: {PROG} --serve --help).",
    )
    a = p.add_argument
    a("--prompt", type=str, nargs="?", default=DEFAULT_PROMPT, help="the prompt to render")
    a("--negative_prompt", type=str, default="", help="what the image should not show")
    a("--outdir", type=str, nargs="?", default=DEFAULT_OUTDIR, help="dir to write results to")
    a("--skip_grid", action="store_true", help="do not save a grid, only individual samples")
    a("--skip_save", action="store_true", help="do not save individual samples")
    a(
        "--ddim_steps",
        type=int,
        default=None,
        help=f"number of sampling steps, every sampler (default {DEFAULT_STEPS}; "
        f"{FAST_STEPS} with --fast)",
    )
    a("--plms", action="store_true", help="use plms sampling (= --sampler plms)")
    a("--dpm_solver", action="store_true", help="use dpm_solver sampling (= --sampler dpm_solver)")
    a(
        "--sampler",
        type=str,
        default=None,
        help=f"sampler: {', '.join(SAMPLERS)} (default: {DEFAULT_SAMPLER})",
    )
    a("--laion400m", action="store_true", help=argparse.SUPPRESS)
    a("--fixed_code", action="store_true", help="use the same starting code (seed) for every image")
    a("--ddim_eta", type=float, default=0.0, help="ddim eta (eta=0.0 is deterministic sampling)")
    a("--n_iter", type=int, default=2, help="sample this often")
    a(
        "--H",
        "--height",
        dest="H",
        type=int,
        default=None,
        help="image height, in pixel space (default: the model's native size, 512 for SD v1)",
    )
    a(
        "--W",
        "--width",
        dest="W",
        type=int,
        default=None,
        help="image width, in pixel space (default: the model's native size, 512 for SD v1)",
    )
    a(
        "--C",
        "--latent_channels",
        dest="C",
        type=int,
        default=None,
        help="latent channels (default: the model's, 4 for SD v1; another value is refused)",
    )
    a(
        "--f",
        "--downsampling_factor",
        dest="f",
        type=int,
        default=None,
        help="downsampling factor (default: the model's VAE's, 8 for SD v1; another value is "
        "refused)",
    )
    a("--n_samples", type=int, default=3, help="images per prompt batch, a.k.a. batch size")
    a("--n_rows", type=int, default=0, help="images per grid row (default: n_samples)")
    a(
        "--scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: what the model's config recommends, "
        "else 7.5)",
    )
    a("--from-file", dest="from_file", type=str, default=None, help="prompts, one per line")
    a("--config", type=str, default=None, help="original inference YAML or diffusers config folder")
    a(
        "--ckpt",
        type=str,
        default=default_ckpt(),
        help="checkpoint (.ckpt/.safetensors) or model folder (default: $MLC_CKPT, which "
        "`mlc setup` sets, else the classic path)",
    )
    a("--seed", type=int, default=42, help="seed of the first image; image k gets seed+k")
    a(
        "--precision",
        type=str,
        choices=["full", "autocast"],
        default="autocast",
        help="autocast: fp16 on GPUs, fp32 on CPU; full: fp32",
    )
    a("--device", type=str, choices=["auto", "cuda", "cpu", "mps"], default="auto")
    a(
        "--batched",
        action="store_true",
        help="one UNet call per batch: faster on GPUs; images match within 1/255",
    )
    a("--json", action="store_true", help="print a machine-readable summary on stdout")
    g = p.add_argument_group(
        "speed",
        "memory and speed options; those marked (changes pixels) trade exactness "
        "for speed, with their measured cost in docs/benchmarks.md",
    ).add_argument
    g("--low_vram", action="store_true", help="GPU: one model on the GPU at a time (4 GB cards)")
    g(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (GPU; the first run compiles for minutes, later runs "
        "reuse the compiled code from the cache)",
    )
    g(
        "--no_cuda_graphs",
        action="store_true",
        help="GPU: run each denoising step eagerly instead of replaying a captured CUDA graph",
    )
    g(
        "--match",
        choices=["diffusers"],
        default=None,
        help="keep latents and sampler math in the model dtype like diffusers' fp16 pipeline",
    )
    g(
        "--fast",
        action="store_true",
        help="(changes pixels) DPM++ 2M Karras, 20 steps, unless --sampler/--ddim_steps say "
        "otherwise",
    )
    g(
        "--deepcache",
        type=int,
        default=0,
        metavar="N",
        help="(changes pixels) full UNet every N steps, cached deep features between (try 3)",
    )
    g(
        "--tome",
        type=float,
        default=0.0,
        metavar="RATIO",
        help="(changes pixels) merge this share of tokens in the highest-resolution "
        "attention (0 < RATIO < 1, try 0.5)",
    )
    g(
        "--tiny_vae",
        type=str,
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="(changes pixels) decode with TAESD: a folder or .safetensors (default: "
        "$MLC_TINY_VAE, which `mlc setup NAME taesd` sets)",
    )
    lim = p.add_argument_group(
        "limits",
        "the most one run may do (a typo must not be hours of work); 0 = no limit",
    ).add_argument
    lim(
        "--max_pixels",
        type=int,
        default=None,
        metavar="N",
        help=f"largest W x H (default: $MLC_MAX_PIXELS, else {MAX_PIXELS}, i.e. 2048x2048)",
    )
    lim(
        "--max_steps",
        type=int,
        default=None,
        metavar="N",
        help=f"most --ddim_steps (default: $MLC_MAX_STEPS, else {MAX_STEPS})",
    )
    lim(
        "--max_images",
        type=int,
        default=None,
        metavar="N",
        help=f"most images (or grid cells) per run (default: $MLC_MAX_IMAGES, else {MAX_IMAGES})",
    )
    lim("--no_limits", action="store_true", help="no limit on pixels, steps or images")
    scale_flags.add_flags(p)  # --devices, --resume, --ray (mlc.engine.scale)
    # the seed's benchmark (mlc.engine.bench; docs/benchmarks.md)
    a("--bench", action="store_true", help="run the seed's benchmark (flags override its defaults)")
    a("--baseline", choices=["diffusers"], default=None, help="--bench: also time plain diffusers")
    a("--bench_json", type=str, default=None, help="--bench: JSON path (default: in --outdir)")
    a("--bench_warmup", type=int, default=None, help="--bench: warm-up iterations (default 2)")
    a("--bench_repeat", type=int, default=1, help="--bench: alternate runs N times (medians)")
    a("--bench_warm", type=int, default=0, help="--bench: also time N requests to a warm worker")
    a(
        "--bench_modes",
        action="store_true",
        help="--bench: time each speed mode against the exact output, with its pixel deviation",
    )
    for axis in ("x", "y", "z"):  # see mlc.engine.grid
        a(
            f"--{axis}",
            type=str,
            default=None,
            metavar="AXIS=V1,V2",
            help=f"grid {axis} axis, e.g. sampler=ddim,plms or steps=10,20 (axes: sampler, "
            "steps, scale, seed, size, H, W, prompt, negative_prompt, eta, deepcache, tome)",
        )
    return p


def parse_args(
    argv: list[str] | None, defaults: Mapping[str, Any] | None = None
) -> argparse.Namespace:
    """ARGV as flags (DEFAULTS replace the classic ones: the benchmark's); UsageError when
    argparse refuses them, SystemExit(0) for ``--help``."""
    parser = build_parser()
    if defaults:
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.H is None or args.W is None or args.scale is None:
        size, scale = model_defaults(args.ckpt, args.config)
        args.H = size if args.H is None else args.H
        args.W = size if args.W is None else args.W
        args.scale = scale if args.scale is None else args.scale
    return args


def model_defaults(ckpt: str, config: str | None) -> tuple[int, float]:
    """The defaults a model's own config gives: --H/--W (its native size) and --scale (the
    guidance it recommends); SD v1's 512 and 7.5 otherwise, and when the checkpoint cannot be
    found (loading it reports that)."""
    from mlc.engine.checkpoint import (
        CLASSIC_SCALE,
        CLASSIC_SIZE,
        CheckpointError,
        native_size,
        recommended_scale,
        resolve,
    )

    try:
        source = resolve(ckpt, config)
    except CheckpointError:
        return CLASSIC_SIZE, CLASSIC_SCALE
    return native_size(source), recommended_scale(source)


def parse(argv: list[str] | None) -> RunSpec:
    """A command line straight to its validated RunSpec."""
    return validate(parse_args(argv))


# -- validation ---------------------------------------------------------------------------------


def read_prompt_file(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 file (a BOM is ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"prompt file not found: {Path(path).resolve()}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read prompt file {path}: {err}") from None
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise UsageError(f"prompt file {path} has no prompts (it is empty or blank)")
    return prompts


def tiny_vae_path(value: str | None) -> str | None:
    """--tiny_vae's weights: the given path, or $MLC_TINY_VAE for a bare --tiny_vae."""
    if value is None:
        return None
    path = Path(value).expanduser() if value != "auto" else tiny_vae_default()
    if path is None:
        raise UsageError(
            "--tiny_vae: no TAESD weights set up; run `mlc setup NAME taesd` or "
            "pass --tiny_vae PATH"
        )
    if not path.exists():
        raise UsageError(f"--tiny_vae: {path} does not exist")
    return str(path)


def _sampler_and_steps(args: argparse.Namespace) -> tuple[str, int]:
    """--sampler / --plms / --dpm_solver / --fast and --ddim_steps, by the classic precedence."""
    chosen = [n for n, on in (("dpm_solver", args.dpm_solver), ("plms", args.plms)) if on]
    if args.sampler is not None:
        try:
            sampler = get_sampler(args.sampler.strip().lower()).name
        except ValueError as err:
            raise UsageError(str(err)) from None
        if chosen and chosen[0] != sampler:
            raise UsageError(f"--{chosen[0]} conflicts with --sampler {sampler}; use one of them")
    else:
        sampler = chosen[0] if chosen else FAST_SAMPLER if args.fast else DEFAULT_SAMPLER
    steps = args.ddim_steps
    if steps is None:
        steps = FAST_STEPS if args.fast else DEFAULT_STEPS
    return sampler, steps


def validate(args: argparse.Namespace) -> RunSpec:
    """Check the flags and build the run; UsageError with one clear line otherwise."""
    notes: list[str] = []
    if args.laion400m:
        raise UsageError(
            "--laion400m (the LDM 1.4B model) is not supported; this engine runs SD v1"
        )
    sampler, steps = _sampler_and_steps(args)
    if args.fast:
        notes.append(f"--fast: {sampler}, {steps} steps")
    multiple_of_8("--H", args.H)
    multiple_of_8("--W", args.W)
    for flag, value in (
        ("--ddim_steps", steps),
        ("--n_samples", args.n_samples),
        ("--n_iter", args.n_iter),
        ("--C", args.C),
        ("--f", args.f),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    if args.n_rows < 0:
        raise UsageError(f"--n_rows must be 0 (= n_samples) or more, not {args.n_rows}")
    if not args.scale >= 0:
        raise UsageError(f"--scale must be 0 or more, not {args.scale}")
    if not args.ddim_eta >= 0:
        raise UsageError(f"--ddim_eta must be 0 or more, not {args.ddim_eta}")
    if args.ddim_eta != 0 and sampler == "plms":
        raise UsageError("ddim_eta must be 0 for PLMS")
    if args.ddim_eta != 0 and not get_sampler(sampler).uses_eta:
        notes.append(f"--ddim_eta only affects ddim; ignored for {sampler}")
    if args.deepcache < 0:
        raise UsageError(f"--deepcache must be 0 (off) or more, not {args.deepcache}")
    if args.deepcache == 1:
        notes.append("--deepcache 1 runs the full UNet every step (no caching)")
    if not (args.tome == 0 or 0 < args.tome < 1):
        raise UsageError(f"--tome must be between 0 and 1 (a share of tokens), not {args.tome}")
    if args.compile and (args.tome or args.deepcache > 1):
        raise UsageError(
            "--compile cannot be combined with --tome or --deepcache (they patch or bypass "
            "the compiled UNet); use one or the other"
        )
    if args.from_file:
        prompts = read_prompt_file(args.from_file)
        batches = [prompts[i : i + args.n_samples] for i in range(0, len(prompts), args.n_samples)]
    else:
        if args.prompt is None:
            raise UsageError("--prompt needs a value (or use --from-file)")
        batches = [[args.prompt] * args.n_samples]
    spec = RunSpec(
        batches=batches,
        sampler=sampler,
        steps=steps,
        scale=args.scale,
        eta=args.ddim_eta,
        height=args.H,
        width=args.W,
        latent_channels=args.C,
        factor=args.f,
        n_iter=args.n_iter,
        n_samples=args.n_samples,
        n_rows=args.n_rows or args.n_samples,
        seed=args.seed,
        fixed_code=args.fixed_code,
        negative_prompt=args.negative_prompt or "",
        outdir=Path(args.outdir if args.outdir is not None else DEFAULT_OUTDIR),
        skip_grid=args.skip_grid,
        skip_save=args.skip_save,
        ckpt=args.ckpt,
        config=args.config,
        precision=args.precision,
        device=args.device,
        batched=args.batched,
        json=args.json,
        low_vram=args.low_vram,
        compile=args.compile,
        cuda_graphs=not args.no_cuda_graphs,
        match=args.match,
        deepcache=args.deepcache if args.deepcache > 1 else 0,
        tome=args.tome,
        tiny_vae=tiny_vae_path(args.tiny_vae),
        notes=notes,
    )
    last = spec.seed if spec.fixed_code else spec.seed + spec.n_images - 1
    if spec.seed < 0 or last > MAX_SEED:
        raise UsageError(f"--seed must be between 0 and {MAX_SEED - spec.n_images + 1}")
    axis_flags = {k: getattr(args, k, None) for k in ("x", "y", "z")}
    if any(v is not None for v in axis_flags.values()):
        spec = with_axes(spec, axis_flags, from_file=bool(args.from_file))
    limits(args).check(spec)
    return scale_flags.apply(args, spec)


def limits(args: argparse.Namespace) -> Limits:
    """The run's limits: --no_limits, else each --max_* flag, else ``limit_default``."""
    if getattr(args, "no_limits", False):
        return Limits(None, None, None)
    values: dict[str, int | None] = {}
    for what in ("pixels", "steps", "images"):
        given = getattr(args, f"max_{what}", None)
        if given is not None and given < 0:
            raise UsageError(f"--max_{what} must be 0 (no limit) or more, not {given}")
        values[what] = limit_default(what) if given is None else (given or None)
    return Limits(**values)


# -- grid axes ----------------------------------------------------------------------------------


def with_axes(spec: RunSpec, flags: dict[str, str | None], *, from_file: bool = False) -> RunSpec:
    """SPEC with its --x/--y/--z axes; the axes and every cell they make are checked."""
    axes = [Axis.parse(flag, text) for flag, text in flags.items() if text is not None]
    if from_file:
        raise UsageError("--from-file cannot be combined with --x/--y/--z; use a prompt axis")
    if spec.skip_save:
        raise UsageError("--skip_save cannot be combined with --x/--y/--z (cells are the images)")
    for axis in axes:
        if spec.compile and axis.name in ("deepcache", "tome"):
            raise UsageError(
                f"--compile cannot be combined with a {axis.name} axis (it patches or "
                "bypasses the compiled UNet)"
            )
    seen: dict[str, str] = {}  # what is varied (size counts as H and W) -> flag
    for axis in axes:
        varies = ("H", "W") if axis.name == "size" else (axis.name,)
        for what in varies:
            if what in seen:
                raise UsageError(
                    f"--{axis.flag} {axis.name} varies {what}, which --{seen[what]} already varies"
                )
        seen.update(dict.fromkeys(varies, axis.flag))
    spec = replace(spec, axes=axes)
    for combo in spec.combos():
        cell = spec.cell(combo)
        if cell.eta != 0 and cell.sampler == "plms":
            raise UsageError("ddim_eta must be 0 for PLMS (a grid cell has plms with eta > 0)")
    return spec
