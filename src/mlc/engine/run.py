"""One run of the engine: a RunSpec to saved PNGs (A1111 ``parameters`` + JSON metadata), an
optional grid, and the ``--json`` summary.

``execute`` reads top to bottom as numbered steps, each a named helper: 1. load, 2. check,
3. plan, 4. announce, 5. render and save, 6. grid, 7. summary. Progress and notes go to
stderr (``mlc.engine.say``), with ``--json`` too; nothing is printed on stdout here. A grid
run (``--x/--y/--z``) is ``mlc.engine.grid``'s, which renders each cell through ``execute``.

Each image is saved (and announced: one line, and ``Control.on_image``) as soon as it is
decoded, so an interrupted run keeps every finished image; the grid is built from the saved
files at the end (only the grid is in memory), and skipped, with a note, when it would be too
large to open. A ``Control`` lets the caller (the warm worker) stop the run between two
denoising steps (``Cancelled``) and resume a run an earlier try had begun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc import __version__
from mlc.engine import outputs, say
from mlc.engine.samplers import get_sampler
from mlc.engine.session import Session, check_shape, device_notes, session_for
from mlc.engine.spec import RunSpec, SpeedModes
from mlc.errors import NoSpaceError

if TYPE_CHECKING:
    from PIL.Image import Image

    from mlc.engine.generate import Generated, ImageSpec, Renderer, Settings
    from mlc.engine.loading import Components

Summary = dict[str, Any]
"""The ``--json`` document of a run (JSON values)."""

Entry = dict[str, Any]
"""One image's summary entry: index, file, prompt, negative_prompt, seed, seconds, ..."""

SPEED_FIELDS = {"deepcache": "DeepCache interval", "tome": "ToMe ratio", "tiny_vae": "VAE"}

log = logging.getLogger("mlc.engine.run")


class Cancelled(KeyboardInterrupt):
    """A run stopped on request (``Control.stop``) between two denoising steps; reported as
    an interrupt (exit 130), with every image finished before it kept."""


@dataclass
class Control:
    """How a caller follows and steers a run (the warm worker; a plain run needs none)."""

    on_image: Callable[[Entry], None] | None = None
    """Told each image's entry as soon as its PNG is saved (before its progress line)."""
    stop: Callable[[], str | None] | None = None
    """Why the run must stop now (None: go on); asked after every denoising step."""
    resume: Sequence[Entry] = ()
    """Images an earlier try of this run saved (their entries): not made again."""
    saved: list[Entry] = field(default_factory=list)
    """Every image saved by this command so far (resumed ones first; a grid's cells share
    it): how many images a failure says were kept."""

    def check(self, where: str = "") -> None:
        """Raise Cancelled when the run must stop (WHERE: the step, for the log)."""
        reason = self.stop() if self.stop is not None else None
        if reason:
            n = len(self.saved)
            what = f"{reason}: stopped {where or 'before the next image'}"
            log.info("%s", what)
            say(f"note: {what}; {n} image{'s' if n != 1 else ''} of this run kept")
            raise Cancelled(reason)


def execute(
    spec: RunSpec, session: Session | None = None, control: Control | None = None
) -> Summary:
    """Load (unless SESSION already holds the model), generate and save; returns the summary
    (the ``--json`` document). CONTROL: see ``Control``.

    The summary's ``accel`` is ``accel.report`` of the session's UNet: what the speed machinery
    did (CUDA-graph captures and replays, eager steps and why, compiled shapes), counted since
    the model was loaded (in a warm worker, its earlier requests too)."""
    from mlc.engine.accel import report as accel_report

    control = control or Control()
    t0 = time.perf_counter()
    # 1. load: the model, unless SESSION already holds it
    session, load_seconds = session_for(spec, session)
    # 2. check: the flags against the loaded model
    check_shape(spec, session.components)
    # 3. plan: every image's prompt and seed (less those an earlier try saved), and what the
    #    metadata says of the run
    batches, resumed = plan_images(spec), [dict(e) for e in control.resume if e.get("file")]
    info = run_info(spec, session)
    t_gen = time.perf_counter()
    # 4. announce: notes, and what is about to happen
    announce(spec, session, load_seconds, len(resumed))
    # 5. render and save each image
    renderer = make_renderer(spec, session)
    grid = grid_fits(spec)
    done, images = render_and_save(
        spec, session.components, renderer, batches, info, control, resumed, grid
    )
    t_saved = time.perf_counter()
    # 6. grid: the run's images in one PNG, from the saved files (--skip_save: kept images)
    grid_path = save_grid(spec, session.components, done, images, info, control) if grid else None
    t_end = time.perf_counter()
    made = len(done) - len(resumed)
    # 7. summary
    return {
        "outdir": str(spec.outdir),
        "files": [e["file"] for e in done if e["file"]],
        "grid": str(grid_path) if grid_path else None,
        "seeds": [e["seed"] for e in done],
        "images": done,
        **({"resumed": len(resumed)} if resumed else {}),
        **info,
        "timings": {
            "load_s": round(load_seconds, 4),
            "generate_s": round(t_saved - t_gen, 4),
            "grid_s": round(t_end - t_saved, 4),
            "total_s": round(t_end - t0, 4),
            "per_image_s": round((t_saved - t_gen) / max(1, made), 4),
            "first_step_unix": renderer.first_step_at,  # the first denoising step began
        },
        "accel": accel_report(session.components.unet),
    }


# -- the steps ----------------------------------------------------------------------------------


def plan_images(spec: RunSpec) -> list[list[ImageSpec]]:
    """Step 3: the images in the classic loop order, each with its prompt and seed."""
    from mlc.engine.generate import plan

    return plan(
        spec.batches,
        n_iter=spec.n_iter,
        seed=spec.seed,
        negative_prompt=spec.negative_prompt,
        fixed_code=spec.fixed_code,
    )


def run_info(spec: RunSpec, session: Session) -> dict[str, Any]:
    """Step 3: the run's settings as every image's metadata and the summary show them."""
    components = session.components
    info: dict[str, Any] = {
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
        "dtype": dtype_name(session),
        "device": session.device,
        "batched": spec.batched,
        "noise": "cpu",
        "version": __version__,
    }
    if spec.match:
        info["match"] = spec.match
    modes = spec.speed_modes()
    if modes:
        info["speed_modes"] = modes
    return info


def dtype_name(session: Session) -> str:
    """``float16``, ``float32``: the session's dtype without ``torch.``."""
    return str(session.dtype).replace("torch.", "")


def announce(spec: RunSpec, session: Session, load_seconds: float, resumed: int = 0) -> None:
    """Step 4: the run's notes, and (unless a grid cell) what is about to be made."""
    for note in [*spec.notes, *device_notes(spec, session.device)]:
        say(f"note: {note}")
    if resumed:
        say(
            f"note: resuming: {resumed} image(s) of this run were saved before the engine "
            f"worker stopped; making the other {spec.n_images - resumed}"
        )
    if not spec.quiet:
        say(
            f"model {session.components.name} loaded in {load_seconds:.1f} s on "
            f"{session.device} ({dtype_name(session)}); {spec.n_images} image(s), "
            f"{spec.sampler}, {spec.steps} steps"
        )


def settings_of(spec: RunSpec) -> Settings:
    """The sampling settings shared by every image of SPEC."""
    from mlc.engine.generate import Settings

    return Settings(
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
        latents=spec.latents,
        cuda_graphs=spec.cuda_graphs,
    )


def make_renderer(spec: RunSpec, session: Session) -> Renderer:
    """Step 5: the denoise loop on the session's model (with SPEC's tiny VAE, if any)."""
    from mlc.engine.generate import Renderer

    return Renderer(
        session.components,
        session.device,
        session.dtype,
        tiny_vae=session.tiny_vae(spec.tiny_vae),
        offload=session.offload,
    )


def render_and_save(
    spec: RunSpec,
    components: Components,
    renderer: Renderer,
    batches: list[list[ImageSpec]],
    info: dict[str, Any],
    control: Control,
    resumed: list[Entry],
    grid: bool = False,
) -> tuple[list[Entry], list[Image]]:
    """Step 5: render every image (but the RESUMED ones), save each as soon as it is decoded
    (unless --skip_save), tell CONTROL and report it; every image's summary entry, in order,
    and, with --skip_save and a GRID to make, the images (nothing else keeps them).

    A full disk stops the run with one line that names the file and counts what was kept."""
    samples = outputs.sample_numbering(spec.outdir)
    done = list(resumed)
    images: list[Image] = []
    control.saved.extend(resumed)
    skip = {e["index"] for e in resumed}
    todo = [b for b in ([s for s in batch if s.index not in skip] for batch in batches) if b]
    images_ahead = sum(len(b) for b in todo)
    made = 0

    def on_step(i: int, n: int) -> None:
        control.check(f"at step {i}/{n} of image {len(done) + 1}/{spec.n_images}")

    control.check()
    try:
        for result in renderer.run(todo, settings_of(spec), on_step=on_step):
            entry = save_image(spec, components, result, samples, info)
            done.append(entry)
            made += 1
            if grid and spec.skip_save:
                images.append(result.image)
            if entry["file"]:
                control.saved.append(entry)
                if control.on_image is not None:
                    control.on_image(entry)
            if not spec.quiet:
                where = f" -> {entry['file']}" if entry["file"] else ""
                say(
                    f"[{len(done)}/{spec.n_images}] seed {entry['seed']} "
                    f"{result.seconds:.2f} s{where}"
                )
            if result.vae_fallback:
                say(
                    f"note: image {entry['index']}: fp16 VAE decode gave NaN/black; decoded in fp32"
                )
            if made < images_ahead:
                control.check()
    except NoSpaceError as err:
        raise kept(err, control, samples.directory) from None
    return sorted(done, key=lambda e: e["index"]), images


def kept(err: NoSpaceError, control: Control, where: Path) -> NoSpaceError:
    """ERR with how many images of this command are kept, and where (one line)."""
    n = len(control.saved)
    return NoSpaceError(
        f"{err.message}; {n} image{'s' if n != 1 else ''} of this run kept in {where}",
        hint="free some space, then run again",
    )


def save_image(
    spec: RunSpec,
    components: Components,
    result: Generated,
    samples: outputs.Numbering,
    info: dict[str, Any],
) -> dict[str, Any]:
    """One image's PNG (unless --skip_save) with its metadata; its summary entry."""
    s = result.spec
    path = None
    if not spec.skip_save:
        text = parameters(spec, components, s.prompt, s.negative_prompt, s.seed)
        data = {
            **info,
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "seed": s.seed,
            "index": s.index,
        }
        path = outputs.save_png(result.image, samples, text, data)
    return {
        "index": s.index,
        "file": str(path) if path else None,
        "prompt": s.prompt,
        "negative_prompt": s.negative_prompt,
        "seed": s.seed,
        "seconds": round(result.seconds, 4),
        "vae_fallback": result.vae_fallback,
    }


def grid_fits(spec: RunSpec) -> bool:
    """Step 5: whether the run makes a grid: not with --skip_grid, and not (a note says so)
    when it would be too large to open."""
    if spec.skip_grid:
        return False
    width, height = outputs.grid_size(spec.n_images, (spec.width, spec.height), spec.n_rows)
    if width * height > outputs.GRID_MAX_PIXELS:
        say(
            f"note: no grid: {spec.n_images} images of {spec.width}x{spec.height} would make a "
            f"{width}x{height} grid, more than image viewers open; the samples are saved"
        )
        return False
    return True


def save_grid(
    spec: RunSpec,
    components: Components,
    done: list[Entry],
    images: list[Image],
    info: dict[str, Any],
    control: Control,
) -> Path | None:
    """Step 6: the grid PNG of the run's images, parameters of the first; read back from the
    saved files (only the grid is in memory), or the IMAGES kept with --skip_save."""
    sources: Sequence[Any] = images if spec.skip_save else [e["file"] for e in done]
    if not sources:
        return None
    grid = outputs.make_grid(sources, spec.n_rows)
    first = done[0]
    text = parameters(
        spec, components, first["prompt"], first["negative_prompt"], first["seed"], grid=True
    )
    data = {"run": info, "n_rows": spec.n_rows, "images": done}
    try:
        return outputs.save_png(grid, outputs.grid_numbering(spec.outdir), text, data)
    except NoSpaceError as err:
        raise kept(err, control, Path(spec.outdir) / "samples") from None


# -- metadata -----------------------------------------------------------------------------------


def speed_fields(modes: SpeedModes) -> list[tuple[str, Any]]:
    """The speed modes as A1111 ``parameters`` fields."""
    return [(SPEED_FIELDS[k], "TAESD" if k == "tiny_vae" else v) for k, v in modes.items()]


def parameters(
    spec: RunSpec,
    components: Components,
    prompt: str,
    negative_prompt: str,
    seed: int,
    *,
    grid: bool = False,
) -> str:
    """A1111's ``parameters`` text of an image of SPEC (GRID: of the run's grid, which names
    the batch size and count instead of eta)."""
    sampler = get_sampler(spec.sampler)
    fields: list[tuple[str, Any]] = [
        ("Steps", spec.steps),
        ("Sampler", sampler.label),
        ("CFG scale", spec.scale),
        ("Seed", seed),
        ("Size", f"{spec.width}x{spec.height}"),
        ("Model hash", components.model_hash),
        ("Model", components.name),
    ]
    if grid:
        fields += [("Batch size", spec.n_samples), ("Batch count", spec.n_iter)]
    else:
        fields.append(("Eta", spec.eta if sampler.uses_eta and spec.eta else None))
    fields += [*speed_fields(spec.speed_modes()), ("Version", f"mlc {__version__}")]
    return outputs.a1111_parameters(prompt, negative_prompt, fields)
