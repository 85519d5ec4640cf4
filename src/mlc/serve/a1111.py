"""AUTOMATIC1111's txt2img request and response shapes <-> the engine's flags and image entries.

:data:`FIELDS` is A1111's ``StableDiffusionTxt2ImgProcessingAPI`` with its defaults (the
request body's schema, and the ``parameters`` echo); :func:`parse` checks a body and turns it
into a :class:`Txt2Img` (the engine's command line, the chosen sampler, the limits checked),
or raises :class:`mlc.serve.RequestError` with one line and the HTTP status: 422 for a value of
the wrong type, 400 for a bad or too large value, 501 for what mlc does not do (hires fix,
face restoration, tiling, variation seeds, styles, scripts, refiners, ...). Fields that only
matter with such a feature (``hr_*`` without ``enable_hr``) are accepted and ignored, as A1111
does; unknown fields are ignored too (A1111's model drops them). :func:`info` builds the
``info`` JSON string of a response from the images the engine made.
"""

from __future__ import annotations

import copy
import random
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from mlc import __version__
from mlc.serve import RequestError, not_supported
from mlc.serve.names import Choice, resolve

MAX_SEED = 2**64 - 1  # the engine's (per-image seeds seed+k must fit)
RANDOM_SEEDS = 4294967294  # A1111 draws seed -1 from range(2**32 - 2)
MAX_PROMPT = 20_000  # characters: far beyond what CLIP reads (77 tokens)


@dataclass(frozen=True)
class Field:
    """One request field: name, A1111's default, JSON type, and what mlc does with it."""

    name: str
    default: Any
    kind: str  # JSON schema type: string, integer, number, boolean, array, object
    doc: str = ""


def _f(name: str, default: Any, kind: str, doc: str = "") -> Field:
    return Field(name, default, kind, doc)


IGNORED = "accepted and ignored"
NO_HR = "ignored (hires fix is not supported)"
FIELDS: list[Field] = [
    _f("prompt", "", "string", "the prompt"),
    _f("negative_prompt", "", "string", "what the image should not show"),
    _f("styles", None, "array", "not supported (must be empty)"),
    _f("seed", -1, "integer", "seed of the first image (image k: seed+k); -1 picks one"),
    _f("subseed", -1, "integer", IGNORED),
    _f("subseed_strength", 0, "number", "variation seeds are not supported (must be 0)"),
    _f("seed_resize_from_h", -1, "integer", "not supported (must be -1, 0 or the height)"),
    _f("seed_resize_from_w", -1, "integer", "not supported (must be -1, 0 or the width)"),
    _f("sampler_name", None, "string", "A1111 sampler name (GET /sdapi/v1/samplers)"),
    _f("scheduler", None, "string", "schedule type (GET /sdapi/v1/schedulers); default Automatic"),
    _f("batch_size", 1, "integer", "images per batch (--n_samples)"),
    _f("n_iter", 1, "integer", "number of batches (--n_iter)"),
    _f("steps", 50, "integer", "sampling steps"),
    _f("cfg_scale", 7.0, "number", "classifier-free guidance scale"),
    _f("width", 512, "integer", "a multiple of 8"),
    _f("height", 512, "integer", "a multiple of 8"),
    _f("restore_faces", None, "boolean", "not supported"),
    _f("tiling", None, "boolean", "not supported"),
    _f("do_not_save_samples", False, "boolean", "true: do not write the images to the workspace"),
    _f("do_not_save_grid", False, "boolean", "true: no grid"),
    _f("eta", None, "number", "DDIM eta (other samplers ignore it)"),
    _f("denoising_strength", None, "number", NO_HR),
    _f("s_min_uncond", None, "number", "not supported (must be 0)"),
    _f("s_churn", None, "number", "not supported (must be 0)"),
    _f("s_tmax", None, "number", IGNORED),
    _f("s_tmin", None, "number", IGNORED),
    _f("s_noise", None, "number", "not supported (must be 1)"),
    _f("override_settings", None, "object", "only sd_model_checkpoint"),
    _f("override_settings_restore_afterwards", True, "boolean", IGNORED),
    _f("refiner_checkpoint", None, "string", "not supported"),
    _f("refiner_switch_at", None, "number", "not supported"),
    _f("disable_extra_networks", False, "boolean", IGNORED),
    _f("firstpass_image", None, "string", "not supported"),
    _f("comments", None, "object", IGNORED),
    _f("enable_hr", False, "boolean", "hires fix: not supported"),
    _f("firstphase_width", 0, "integer", NO_HR),
    _f("firstphase_height", 0, "integer", NO_HR),
    _f("hr_scale", 2.0, "number", NO_HR),
    _f("hr_upscaler", None, "string", NO_HR),
    _f("hr_second_pass_steps", 0, "integer", NO_HR),
    _f("hr_resize_x", 0, "integer", NO_HR),
    _f("hr_resize_y", 0, "integer", NO_HR),
    _f("hr_checkpoint_name", None, "string", NO_HR),
    _f("hr_sampler_name", None, "string", NO_HR),
    _f("hr_scheduler", None, "string", NO_HR),
    _f("hr_prompt", "", "string", NO_HR),
    _f("hr_negative_prompt", "", "string", NO_HR),
    _f("force_task_id", None, "string", IGNORED),
    _f("sampler_index", "Euler", "string", "the sampler when sampler_name is not given"),
    _f("script_name", None, "string", "scripts are not supported"),
    _f("script_args", [], "array", "scripts are not supported"),
    _f("send_images", True, "boolean", "false: no images in the response"),
    _f("save_images", False, "boolean", "write the images to the workspace (see docs/api.md)"),
    _f("alwayson_scripts", {}, "object", "scripts are not supported (must be empty)"),
    _f("infotext", None, "string", "not supported"),
]
BY_NAME = {f.name: f for f in FIELDS}
PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass(frozen=True)
class Limits:
    """The most one request may ask for (None: no limit); the engine enforces them too."""

    pixels: int | None = 2048 * 2048  # the engine's default
    steps: int | None = 500  # the engine's default
    images: int | None = 100  # each response holds its images in memory (engine: 10000)

    def engine_flags(self) -> list[str]:
        """The same limits as engine flags (0 lifts one)."""
        return [
            f"--max_pixels={self.pixels or 0}",
            f"--max_steps={self.steps or 0}",
            f"--max_images={self.images or 0}",
        ]


@dataclass
class Txt2Img:
    """A checked txt2img request."""

    body: dict[str, Any]  # the request's known fields, A1111's defaults filled in
    choice: Choice
    seed: int
    save: bool
    send: bool
    grid: bool
    checkpoint: str | None  # override_settings' sd_model_checkpoint, as given
    n_images: int = 0
    created: float = field(default_factory=time.time)

    @property
    def steps(self) -> int:
        return int(self.body["steps"])

    def argv(self, ckpt: str | None = None, limits: Limits | None = None) -> list[str]:
        """The engine's command line (``--json``: the summary names the model and the grid)."""
        b = self.body
        flags = [
            f"--prompt={b['prompt']}",
            f"--negative_prompt={b['negative_prompt']}",
            f"--sampler={self.choice.engine}",
            f"--ddim_steps={b['steps']}",
            f"--scale={b['cfg_scale']}",
            f"--W={b['width']}",
            f"--H={b['height']}",
            f"--seed={self.seed}",
            f"--n_samples={b['batch_size']}",
            f"--n_iter={b['n_iter']}",
            "--json",
        ]
        if self.choice.engine == "ddim" and b["eta"]:
            flags.append(f"--ddim_eta={b['eta']}")
        if not self.grid:
            flags.append("--skip_grid")
        if ckpt:
            flags.append(f"--ckpt={ckpt}")
        return flags + (limits or Limits()).engine_flags()


# -- checking a request --------------------------------------------------------------------------


def _typed(body: dict[str, Any]) -> dict[str, Any]:
    """Every known field with its value or A1111's default; 422 for a value of the wrong type."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        value = body.get(f.name)
        if value is None:  # absent or null: A1111's default (a fresh copy of a list or dict)
            out[f.name] = copy.deepcopy(f.default)
            continue
        types = PY_TYPES[f.kind]
        if f.kind == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) and f.kind != "boolean" or not isinstance(value, types):
            raise RequestError(
                f"{f.name} must be {'an' if f.kind[0] in 'aio' else 'a'} {f.kind}, "
                f"not {value!r:.60}",
                422,
                "ValidationError",
            )
        out[f.name] = value
    return out


def _unsupported(b: dict[str, Any]) -> None:
    """501 for a feature mlc does not have, when the request switches it on."""
    checks = [
        (b["enable_hr"], "hires fix (enable_hr)"),
        (b["restore_faces"], "face restoration (restore_faces)"),
        (b["tiling"], "tiling"),
        ((b["subseed_strength"] or 0) != 0, "variation seeds (subseed_strength)"),
        (b["styles"], "styles"),
        (b["script_name"], f"scripts (script_name {b['script_name']!r})"),
        (b["alwayson_scripts"], f"scripts (alwayson_scripts: {', '.join(b['alwayson_scripts'])})"),
        (b["refiner_checkpoint"], "refiner models (refiner_checkpoint)"),
        ((b["s_churn"] or 0) != 0, "s_churn"),
        ((b["s_min_uncond"] or 0) != 0, "s_min_uncond"),
        (b["s_noise"] not in (None, 1, 1.0), "s_noise other than 1"),
        (b["infotext"], "infotext"),
        (b["firstpass_image"], "firstpass_image"),
    ]
    for side in ("h", "w"):
        size = b["height" if side == "h" else "width"]
        resize = b[f"seed_resize_from_{side}"]
        checks.append((resize not in (None, -1, 0, size), "seed resizing (seed_resize_from_*)"))
    extra = sorted(set(b["override_settings"] or {}) - {"sd_model_checkpoint"})
    checks.append((extra, f"override_settings {', '.join(extra)} (only sd_model_checkpoint)"))
    for active, what in checks:
        if active:
            raise not_supported(f"{what} is not supported by mlc serve")


def _multiple_of_8(name: str, value: int) -> None:
    if value <= 0:
        raise RequestError(f"{name} must be a positive multiple of 8, e.g. 512, not {value}")
    if value % 8:
        low = value - value % 8
        raise RequestError(f"{name} {value} is not a multiple of 8; use {low or 8} or {low + 8}")


def _check_values(b: dict[str, Any], limits: Limits) -> int:
    """400 for a bad or too large value; the number of images."""
    for name in ("prompt", "negative_prompt"):
        if len(b[name]) > MAX_PROMPT:
            raise RequestError(f"{name} is {len(b[name])} characters, over {MAX_PROMPT}")
    for name in ("batch_size", "n_iter", "steps"):
        if b[name] < 1:
            raise RequestError(f"{name} must be at least 1, not {b[name]}")
    if b["cfg_scale"] < 0:
        raise RequestError(f"cfg_scale must be >= 0, not {b['cfg_scale']}")
    if b["eta"] is not None and b["eta"] < 0:
        raise RequestError(f"eta must be >= 0, not {b['eta']}")
    _multiple_of_8("width", b["width"])
    _multiple_of_8("height", b["height"])
    pixels, n = b["width"] * b["height"], b["batch_size"] * b["n_iter"]
    if limits.pixels and pixels > limits.pixels:
        side = int(limits.pixels**0.5)
        raise RequestError(
            f"{b['width']}x{b['height']} is {pixels:,} pixels, over this server's limit of "
            f"{limits.pixels:,} ({side}x{side}; mlc serve --max-pixels)"
        )
    if limits.steps and b["steps"] > limits.steps:
        raise RequestError(
            f"steps {b['steps']} is over this server's limit of {limits.steps} (mlc serve "
            "--max-steps)"
        )
    if limits.images and n > limits.images:
        raise RequestError(
            f"{n} images (batch_size {b['batch_size']} x n_iter {b['n_iter']}) is over this "
            f"server's limit of {limits.images} per request (mlc serve --max-images)"
        )
    return n


def parse(body: Any, limits: Limits | None = None, save_default: bool = True) -> Txt2Img:
    """A txt2img request body, checked (see the module's doc). SAVE_DEFAULT: whether images are
    written to the workspace when the request does not say (``save_images``); a request with
    ``do_not_save_samples: true`` is never saved."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", 422, "ValidationError")
    limits = limits or Limits()
    b = _typed(body)
    _unsupported(b)
    n = _check_values(b, limits)
    choice = resolve(b["sampler_name"] or b["sampler_index"], b["scheduler"])
    seed = b["seed"]
    if seed == -1:
        seed = random.randrange(RANDOM_SEEDS)
    elif seed < -1 or seed + n - 1 > MAX_SEED:
        raise RequestError(f"seed must be -1 or between 0 and {MAX_SEED - n + 1}, not {seed}")
    save = bool(body["save_images"]) if "save_images" in body else save_default
    if b["do_not_save_samples"]:
        save = False
    return Txt2Img(
        body=b,
        choice=choice,
        seed=seed,
        save=save,
        send=b["send_images"],
        grid=save and n > 1 and not b["do_not_save_grid"],
        checkpoint=(b["override_settings"] or {}).get("sd_model_checkpoint"),
        n_images=n,
    )


def schema() -> dict[str, Any]:
    """The request body's JSON schema (for the OpenAPI document at /docs)."""
    props = {}
    for f in FIELDS:
        prop: dict[str, Any] = {"type": f.kind, "description": f.doc}
        if f.default is not None:
            prop["default"] = f.default
        props[f.name] = prop
    return {"title": "Txt2Img", "type": "object", "properties": props}


# -- the response ---------------------------------------------------------------------------------


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt): A1111's ``parameters`` and mlc's ``mlc``."""
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, text = rest.partition(b"\0")
            out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode()
        elif kind == b"IEND":
            break
    return out


def info(
    req: Txt2Img,
    samples: list[tuple[dict[str, Any], bytes]],
    model: dict[str, Any],
    *,
    grid: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A1111's ``info`` document (``Processed.js()``) for the SAMPLES made (entry, PNG bytes)
    by REQ on MODEL (``name``, ``hash``), and its GRID (sent first, as A1111 does); EXTRA goes
    under ``mlc`` (files, grid, the engine's sampler)."""
    b = req.body
    entries = [e for e, _ in samples]
    prompts = [str(e.get("prompt", b["prompt"])) for e in entries] or [b["prompt"]]
    negatives = [str(e.get("negative_prompt", b["negative_prompt"])) for e in entries]
    negatives = negatives or [b["negative_prompt"]]
    seeds = [int(e["seed"]) for e in entries] or [req.seed]
    texts = [png_text(data).get("parameters", "") for data in ([grid] if grid else [])]
    texts += [png_text(data).get("parameters", "") for _, data in samples]
    generation: dict[str, Any] = {}
    if req.choice.scheduler is not None:
        generation["Schedule type"] = req.choice.schedule_label
    return {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": negatives[0],
        "all_negative_prompts": negatives,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": b["subseed"],
        "all_subseeds": [b["subseed"]] * len(seeds),
        "subseed_strength": b["subseed_strength"],
        "width": b["width"],
        "height": b["height"],
        "sampler_name": req.choice.sampler,
        "cfg_scale": b["cfg_scale"],
        "steps": b["steps"],
        "batch_size": b["batch_size"],
        "restore_faces": bool(b["restore_faces"]),
        "face_restoration_model": None,
        "sd_model_name": model.get("name"),
        "sd_model_hash": model.get("hash"),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": b["denoising_strength"],
        "extra_generation_params": generation,
        "index_of_first_image": 1 if grid else 0,
        "infotexts": texts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(req.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"mlc {__version__}",
        "mlc": {"engine_sampler": req.choice.engine, **(extra or {})},
    }
