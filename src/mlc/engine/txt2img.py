"""The classic ``scripts/txt2img.py`` command line, on the bundled engine.

``python -m mlc.engine.txt2img [flags]`` or ``mlc-txt2img [flags]``. Accepts the CompVis /
AIME flags with their names, types and defaults, plus ``--sampler``, ``--negative_prompt``,
``--device``, ``--json`` and ``--batched``. This module and ``bench`` are the only ones
that print or exit. Exit codes: 0 success, 1 model/checkpoint/runtime error, 2 bad
command-line input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mlc.engine import EngineError, UsageError, offline
from mlc.engine.samplers import SAMPLERS, get_sampler

offline()

PROG = "mlc-txt2img"
DEFAULT_PROMPT = "a painting of a virus monster playing guitar"
DEFAULT_CKPT = "stable-diffusion-v1-5-emaonly/v1-5-pruned-emaonly.ckpt"
DEFAULT_STEPS = 50
FAST_SAMPLER, FAST_STEPS = "dpmpp_2m_karras", 20  # --fast
MAX_SEED = 2**64 - 1


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are a UsageError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser, reusable by the container-side ``mlc txt2img NAME ...``."""
    p = _Parser(
        prog=PROG,
        description="Stable Diffusion v1 text-to-image with the classic txt2img.py flags.",
    )
    a = p.add_argument
    a("--prompt", type=str, nargs="?", default=DEFAULT_PROMPT, help="the prompt to render")
    a("--negative_prompt", type=str, default="", help="what the image should not show")
    a(
        "--outdir",
        type=str,
        nargs="?",
        default="outputs/txt2img-samples",
        help="dir to write results to",
    )
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
    a("--sampler", type=str, default=None, help=f"sampler: {', '.join(SAMPLERS)} (default: ddim)")
    a("--laion400m", action="store_true", help=argparse.SUPPRESS)
    a("--fixed_code", action="store_true", help="use the same starting code (seed) for every image")
    a("--ddim_eta", type=float, default=0.0, help="ddim eta (eta=0.0 is deterministic sampling)")
    a("--n_iter", type=int, default=2, help="sample this often")
    a("--H", "--height", dest="H", type=int, default=512, help="image height, in pixel space")
    a("--W", "--width", dest="W", type=int, default=512, help="image width, in pixel space")
    a("--C", "--latent_channels", dest="C", type=int, default=4, help="latent channels")
    a("--f", "--downsampling_factor", dest="f", type=int, default=8, help="downsampling factor")
    a("--n_samples", type=int, default=3, help="images per prompt batch, a.k.a. batch size")
    a("--n_rows", type=int, default=0, help="images per grid row (default: n_samples)")
    a("--scale", type=float, default=7.5, help="classifier-free guidance scale")
    a("--from-file", dest="from_file", type=str, default=None, help="prompts, one per line")
    a("--config", type=str, default=None, help="original inference YAML or diffusers config folder")
    a(
        "--ckpt",
        type=str,
        default=os.environ.get("MLC_CKPT") or DEFAULT_CKPT,
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
    # the seed's benchmark (mlc.engine.bench; docs/benchmarks.md)
    a("--bench", action="store_true", help="run the seed's benchmark (flags override its defaults)")
    a("--baseline", choices=["diffusers"], default=None, help="--bench: also time plain diffusers")
    a("--bench_json", type=str, default=None, help="--bench: JSON path (default: in --outdir)")
    a("--bench_warmup", type=int, default=None, help="--bench: warm-up iterations (default 2)")
    a("--bench_repeat", type=int, default=1, help="--bench: alternate runs N times (medians)")
    a(
        "--bench_modes",
        action="store_true",
        help="--bench: time each speed mode against the exact output, with its pixel deviation",
    )
    for axis in ("x", "y", "z"):  # see mlc.engine.axes
        a(
            f"--{axis}",
            type=str,
            default=None,
            metavar="AXIS=V1,V2",
            help=f"grid {axis} axis, e.g. sampler=ddim,plms or steps=10,20 (axes: sampler, "
            "steps, scale, seed, size, H, W, prompt, negative_prompt, eta, deepcache, tome)",
        )
    return p


@dataclass
class RunSpec:
    """A validated run: what to make and where."""

    batches: list[list[str]]
    sampler: str
    steps: int
    scale: float
    eta: float
    height: int
    width: int
    latent_channels: int
    factor: int
    n_iter: int
    n_samples: int
    n_rows: int
    seed: int
    fixed_code: bool
    negative_prompt: str
    outdir: Path
    skip_grid: bool
    skip_save: bool
    ckpt: str
    config: str | None
    precision: str
    device: str
    batched: bool
    json: bool
    low_vram: bool = False
    compile: bool = False
    deepcache: int = 0
    tome: float = 0.0
    tiny_vae: str | None = None  # path of the TAESD weights
    notes: list[str] = field(default_factory=list)
    axes: list[Any] = field(default_factory=list)  # mlc.engine.axes.Axis: --x, --y, --z

    @property
    def n_images(self) -> int:
        """Images in the whole run."""
        return self.n_iter * sum(len(b) for b in self.batches)


def _multiple_of_8(flag: str, value: int) -> None:
    if value >= 8 and value % 8 == 0:
        return
    low = value // 8 * 8
    choices = f"{low} or {low + 8}" if low >= 8 else "8"
    raise UsageError(f"{flag} {value} is not a multiple of 8; use {choices}")


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


def validate(args: argparse.Namespace) -> RunSpec:
    """Check the flags and build the run; UsageError with one clear line otherwise."""
    notes: list[str] = []
    if args.laion400m:
        raise UsageError(
            "--laion400m (the LDM 1.4B model) is not supported; this engine runs SD v1"
        )
    chosen = [n for n, on in (("dpm_solver", args.dpm_solver), ("plms", args.plms)) if on]
    if args.sampler is not None:
        try:
            sampler = get_sampler(args.sampler.strip().lower()).name
        except ValueError as err:
            raise UsageError(str(err)) from None
        if chosen and chosen[0] != sampler:
            raise UsageError(f"--{chosen[0]} conflicts with --sampler {sampler}; use one of them")
    else:
        sampler = chosen[0] if chosen else FAST_SAMPLER if args.fast else "ddim"
    steps = args.ddim_steps
    if steps is None:
        steps = FAST_STEPS if args.fast else DEFAULT_STEPS
    if args.fast:
        notes.append(f"--fast: {sampler}, {steps} steps")
    _multiple_of_8("--H", args.H)
    _multiple_of_8("--W", args.W)
    for flag, value in (
        ("--ddim_steps", steps),
        ("--n_samples", args.n_samples),
        ("--n_iter", args.n_iter),
        ("--C", args.C),
        ("--f", args.f),
    ):
        if value < 1:
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
        outdir=Path(args.outdir if args.outdir is not None else "outputs/txt2img-samples"),
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
        from mlc.engine.axes import parse_axes

        spec.axes = parse_axes(spec, axis_flags, from_file=bool(args.from_file))
    return spec


def tiny_vae_path(value: str | None) -> str | None:
    """--tiny_vae's weights: the given path, or $MLC_TINY_VAE for a bare --tiny_vae."""
    if value is None:
        return None
    if value == "auto":
        value = os.environ.get("MLC_TINY_VAE", "")
        if not value:
            raise UsageError(
                "--tiny_vae: no TAESD weights set up; run `mlc setup NAME taesd` or "
                "pass --tiny_vae PATH"
            )
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"--tiny_vae: {path} does not exist")
    return str(path)


def pick_device(name: str) -> str:
    """``auto`` -> cuda, else mps, else cpu; an unavailable device is a UsageError."""
    import torch

    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if (name == "cuda" and not has_cuda) or (name == "mps" and not has_mps):
        raise UsageError(
            f"--device {name}: no such device is available (torch {torch.__version__})"
        )
    return name


def pick_dtype(precision: str, device: str) -> Any:
    """autocast: fp16 on GPUs, fp32 on CPU; full: fp32."""
    import torch

    return torch.float16 if precision == "autocast" and device != "cpu" else torch.float32


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Session:
    """A model loaded on a device, reused across runs (grids, the warm worker, benchmarks)."""

    key: tuple[Any, ...]
    device: str
    dtype: Any
    components: Any
    fresh: bool = True  # loaded for the run at hand (its load time counts there)
    offload: Any = None  # mlc.engine.lowvram.Offload with --low_vram on a GPU
    tiny_vaes: dict[str, Any] = field(default_factory=dict)  # --tiny_vae path -> model

    def serves(self, spec: RunSpec) -> bool:
        """Whether SPEC can run on this loaded model."""
        return self.key == session_key(spec)

    def tiny_vae(self, path: str | None) -> Any:
        """The TAESD model at PATH (loaded once per session), or None."""
        if path is None:
            return None
        if path not in self.tiny_vaes:
            from mlc.engine.tinyvae import load_tiny_vae

            where = "cpu" if self.offload is not None else self.device
            self.tiny_vaes[path] = load_tiny_vae(path, device=where, dtype=self.dtype)
        return self.tiny_vaes[path]


def session_key(spec: RunSpec) -> tuple[Any, ...]:
    """What identifies a loaded model: checkpoint, config, device, dtype and how it is held."""
    device = pick_device(spec.device)
    ckpt = str(Path(spec.ckpt).expanduser().resolve())
    config = str(Path(spec.config).expanduser().resolve()) if spec.config else None
    offload = spec.low_vram and device != "cpu"
    return (ckpt, config, device, str(pick_dtype(spec.precision, device)), offload, spec.compile)


def open_session(spec: RunSpec) -> Session:
    """Load SPEC's model (failing fast on a missing file before torch is imported)."""
    from mlc.engine.loading import load, resolve

    resolve(spec.ckpt, spec.config)
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.precision, device)
    offload = None
    if spec.low_vram and device != "cpu":
        from mlc.engine.lowvram import Offload

        offload = Offload(device)
    components = load(spec.ckpt, spec.config, device="cpu" if offload else device, dtype=dtype)
    from mlc.engine.accel import tune

    tune(components, device, compile=spec.compile)
    return Session(session_key(spec), device, dtype, components, offload=offload)


def check_shape(spec: RunSpec, components: Any) -> None:
    """--C, --f, --H and --W against the loaded model."""
    if components.latent_channels != spec.latent_channels:
        raise UsageError(
            f"--C {spec.latent_channels} does not match the model's "
            f"{components.latent_channels} latent channels"
        )
    if components.vae_scale_factor != spec.factor:
        raise UsageError(
            f"--f {spec.factor} does not match the model's VAE, which "
            f"downsamples by {components.vae_scale_factor}"
        )
    if spec.height % components.vae_scale_factor or spec.width % components.vae_scale_factor:
        raise UsageError(f"--H and --W must be multiples of {components.vae_scale_factor}")


def device_notes(spec: RunSpec, device: str) -> list[str]:
    """Notes on flags whose effect depends on the device."""
    notes = []
    if spec.low_vram and device == "cpu":
        notes.append("--low_vram has no effect on cpu (it saves GPU memory)")
    if spec.compile and device == "cpu":
        notes.append("--compile on cpu: the first run compiles for minutes")
    return notes


def speed_modes(spec: RunSpec) -> dict[str, Any]:
    """The pixel-changing speed modes of a run (empty: exact), for the metadata."""
    modes: dict[str, Any] = {}
    if spec.deepcache > 1:
        modes["deepcache"] = spec.deepcache
    if spec.tome > 0:
        modes["tome"] = spec.tome
    if spec.tiny_vae is not None:
        modes["tiny_vae"] = Path(spec.tiny_vae).name
    return modes


def speed_fields(modes: dict[str, Any]) -> list[tuple[str, Any]]:
    """The speed modes as A1111 ``parameters`` fields."""
    names = {"deepcache": "DeepCache interval", "tome": "ToMe ratio", "tiny_vae": "VAE"}
    return [(names[k], "TAESD" if k == "tiny_vae" else v) for k, v in modes.items()]


def execute(spec: RunSpec, session: Session | None = None) -> dict[str, Any]:
    """Load (unless SESSION already holds the model), generate and save; returns the summary
    (the ``--json`` document)."""
    if spec.axes:  # --x/--y/--z: a labelled grid of runs over one session
        from mlc.engine.axes import execute_axes

        return execute_axes(spec, session)
    from mlc import __version__
    from mlc.engine import outputs

    t0 = time.perf_counter()
    if session is None or not session.serves(spec):
        session = open_session(spec)
    from mlc.engine.generate import Renderer, Settings, plan

    device, dtype, components = session.device, session.dtype, session.components
    load_seconds = components.load_seconds if session.fresh else 0.0
    session.fresh = False
    check_shape(spec, components)
    sampler = get_sampler(spec.sampler)
    settings = Settings(
        spec.sampler,
        spec.steps,
        spec.scale,
        spec.eta,
        spec.height,
        spec.width,
        spec.batched,
        deepcache=spec.deepcache,
        tome=spec.tome,
        tiny_vae=spec.tiny_vae is not None,
    )
    batches = plan(
        spec.batches,
        n_iter=spec.n_iter,
        seed=spec.seed,
        negative_prompt=spec.negative_prompt,
        fixed_code=spec.fixed_code,
    )
    dtype_name = str(dtype).replace("torch.", "")
    run_info = {
        "sampler": spec.sampler,
        "steps": spec.steps,
        "scale": spec.scale,
        "eta": spec.eta,
        "width": spec.width,
        "height": spec.height,
        "model": components.name,
        "model_hash": components.model_hash,
        "config": components.source.config_label,
        "precision": spec.precision,
        "dtype": dtype_name,
        "device": device,
        "batched": spec.batched,
        "noise": "cpu",
        "version": __version__,
    }
    modes = speed_modes(spec)
    if modes:
        run_info["speed_modes"] = modes
    samples = outputs.sample_numbering(spec.outdir)
    done: list[dict[str, Any]] = []
    images: list[Any] = []
    t_gen = time.perf_counter()
    for note in [*spec.notes, *device_notes(spec, device)]:
        _log(f"note: {note}")
    if not spec.json:
        _log(
            f"model {components.name} loaded in {load_seconds:.1f} s on {device} "
            f"({dtype_name}); {spec.n_images} image(s), {spec.sampler}, {spec.steps} steps"
        )
    renderer = Renderer(
        components, device, dtype, tiny_vae=session.tiny_vae(spec.tiny_vae), offload=session.offload
    )
    for result in renderer.run(batches, settings):
        s = result.spec
        fields = [
            ("Steps", spec.steps),
            ("Sampler", sampler.label),
            ("CFG scale", spec.scale),
            ("Seed", s.seed),
            ("Size", f"{spec.width}x{spec.height}"),
            ("Model hash", components.model_hash),
            ("Model", components.name),
            ("Eta", spec.eta if sampler.uses_eta and spec.eta else None),
            *speed_fields(modes),
            ("Version", f"mlc {__version__}"),
        ]
        data = {
            **run_info,
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "seed": s.seed,
            "index": s.index,
        }
        path = None
        if not spec.skip_save:
            text = outputs.a1111_parameters(s.prompt, s.negative_prompt, fields)
            path = outputs.save_png(result.image, samples, text, data)
        entry = {
            "index": s.index,
            "file": str(path) if path else None,
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "seed": s.seed,
            "seconds": round(result.seconds, 4),
            "vae_fp32_fallback": result.vae_fallback,
        }
        done.append(entry)
        if not spec.skip_grid:
            images.append(result.image)
        if not spec.json:
            where = f" -> {path}" if path else ""
            _log(f"[{len(done)}/{spec.n_images}] seed {s.seed} {result.seconds:.2f} s{where}")
        if result.vae_fallback:
            _log(f"note: image {s.index}: fp16 VAE decode gave NaN/black; decoded in fp32")
    t_saved = time.perf_counter()
    grid_path = None
    if not spec.skip_grid and images:
        grid = outputs.make_grid(images, spec.n_rows)
        first = done[0]
        text = outputs.a1111_parameters(
            first["prompt"],
            first["negative_prompt"],
            [
                ("Steps", spec.steps),
                ("Sampler", sampler.label),
                ("CFG scale", spec.scale),
                ("Seed", first["seed"]),
                ("Size", f"{spec.width}x{spec.height}"),
                ("Model hash", components.model_hash),
                ("Model", components.name),
                ("Batch size", spec.n_samples),
                ("Batch count", spec.n_iter),
                *speed_fields(modes),
                ("Version", f"mlc {__version__}"),
            ],
        )
        data = {"run": run_info, "n_rows": spec.n_rows, "images": done}
        grid_path = outputs.save_png(grid, outputs.grid_numbering(spec.outdir), text, data)
    t_end = time.perf_counter()
    return {
        "outdir": str(spec.outdir),
        "files": [e["file"] for e in done if e["file"]],
        "grid": str(grid_path) if grid_path else None,
        "seeds": [e["seed"] for e in done],
        "images": done,
        **run_info,
        "timings": {
            "load_s": round(load_seconds, 4),
            "generate_s": round(t_saved - t_gen, 4),
            "grid_s": round(t_end - t_saved, 4),
            "total_s": round(t_end - t0, 4),
            "per_image_s": round((t_saved - t_gen) / max(1, len(done)), 4),
            "first_step_unix": renderer.first_step_at,  # the first denoising step began
        },
    }


def main(
    argv: list[str] | None = None, run: Callable[[RunSpec], dict[str, Any]] | None = None
) -> int:
    """Run the CLI; returns the exit code. RUN replaces ``execute`` (the warm worker passes
    one that keeps its Session)."""
    spec: RunSpec | None = None
    try:
        args = build_parser().parse_args(argv)
        if args.bench:  # the seed's defaults instead of the classic ones: see mlc.engine.bench
            from mlc.engine.bench import run_bench

            return run_bench(argv)
        spec = validate(args)
        summary = (run or execute)(spec)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except EngineError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; try smaller --H/--W or --n_samples", file=sys.stderr)
        return 1
    except Exception as err:  # torch/diffusers failures: one line, no traceback
        if type(err).__name__ == "OutOfMemoryError":
            msg = (
                "out of GPU memory; try --low_vram, smaller --H/--W, drop --batched, or "
                "--precision autocast"
            )
        else:
            lines = str(err).strip().splitlines()
            msg = f"{type(err).__name__}: {lines[0] if lines else 'failed'}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    try:
        if spec.json:
            print(json.dumps(summary, ensure_ascii=False, indent=2))
        else:
            print(f"Your samples are ready and waiting for you here: \n{spec.outdir} \n \nEnjoy.")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`: the reader left; the images are saved
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
