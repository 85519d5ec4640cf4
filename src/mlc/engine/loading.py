"""Checkpoint -> components: the UNet, VAE, text encoder and tokenizer on one device and dtype.

``load`` finds and reads the checkpoint (``mlc.engine.checkpoint``), takes the converted
weights from the cache when it holds them (``mlc.engine.convcache``), else builds the three
models from the single file or the diffusers folder, offline, without executing pickled
code; the tokenizer loads in a thread meanwhile. The models are the engine's own
(``mlc.engine.nets``: no transformers or diffusers model code imported) wherever they fit,
else diffusers' and transformers' classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlc.engine.checkpoint import (
    CheckpointError,
    ModelSource,
    check_sd_v1,
    first_line,
    legacy_model_hash,
    load_state,
    read_checkpoint,
    resolve,
    schedule_of,
    text_keys_for,
    text_weights,
)
from mlc.engine.convcache import converted_cache
from mlc.engine.env import native_models
from mlc.engine.modelimports import model_classes, quiet_libraries, tokenizer_class

if TYPE_CHECKING:
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from mlc.engine.convcache import Models


@dataclass
class Components:
    """Everything generation needs, on one device and dtype."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    schedule: dict[str, Any]  # training schedule for samplers.scheduler_config
    name: str  # model name for metadata (file stem)
    model_hash: str | None  # A1111 "Model hash" (legacy 8-hex form)
    source: ModelSource
    load_seconds: float = 0.0

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD v1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Latent channels (4 for SD v1)."""
        return int(self.unet.config.in_channels)


def load_tokenizer(source: ModelSource) -> CLIPTokenizer:
    """transformers' CLIP tokenizer from local files only."""
    return tokenizer_class().from_pretrained(str(source.part("tokenizer")), local_files_only=True)


def native_tokenizer(source: ModelSource) -> CLIPTokenizer | None:
    """The engine's own CLIP tokenizer (``mlc.engine.nets``), or None when the folder lacks
    what it reads (a ``tokenizer.json`` alone: transformers' then reads it)."""
    from mlc.engine.nets.tokenizer import ClipTokenizer

    try:
        return ClipTokenizer.from_folder(source.part("tokenizer"))  # type: ignore[return-value]
    except (OSError, ValueError):
        return None


def _native() -> bool:
    """Whether to build the engine's own models (``MLC_NATIVE_MODELS``, and a torch that has
    what they use)."""
    if not native_models():
        return False
    from mlc.engine.nets.models import available

    return available()


def _or_library(tokenizer: CLIPTokenizer | None, source: ModelSource) -> CLIPTokenizer:
    return tokenizer if tokenizer is not None else load_tokenizer(source)


def yaml_text_config(source: ModelSource) -> dict[str, Any]:
    """CLIP text config overrides from an original YAML (an mlc extension, usually empty).

    ``model.params.cond_stage_config.params.text_config`` may hold CLIPTextConfig values
    (e.g. ``hidden_size``) for non-ViT-L/14 encoders; the bundled ViT-L/14 config is the base.
    """
    if source.yaml is None:
        return {}
    cond = source.yaml["model"]["params"].get("cond_stage_config") or {}
    extra = (cond.get("params") or {}).get("text_config") or {}
    return dict(extra) if isinstance(extra, dict) else {}


def _text_encoder_from_state(
    sd: dict[str, torch.Tensor],
    config_dir: Path,
    dtype: torch.dtype,
    overrides: dict[str, Any] | None = None,
) -> CLIPTextModel:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(
        str(config_dir), local_files_only=True, **(overrides or {})
    )
    with init_empty_weights():
        model = CLIPTextModel(config)
    weights = {k: v.to(dtype) for k, v in text_keys_for(model, text_weights(sd)).items()}
    mismatch = "the checkpoint's text encoder does not match its config"
    assign_weights(model, weights, lambda why: CheckpointError(f"{mismatch}{why}"), strict=False)
    return model


def assign_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    error: Callable[[str], Exception],
    *,
    strict: bool = True,
) -> None:
    """Put WEIGHTS into MODEL (built on the meta device) in place; ``error(why)`` is raised
    when they do not fit, WHY being `` (missing [...], unexpected [...])`` or ``: <first
    detail of torch's message>``. Not STRICT: buffers the weights lack (``position_ids``)
    keep their values."""
    expected = {k for k in model.state_dict() if strict or not k.endswith("position_ids")}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise error(f" (missing {missing[:2]}, unexpected {unexpected[:2]})")
    try:
        load_state(model, weights, strict=strict)
    except RuntimeError as err:
        raise error(f": {first_line(err, skip_header=True)}") from None


def load(
    ckpt: str | Path,
    config: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    native: bool = True,
) -> Components:
    """Load UNet, VAE, text encoder and tokenizer for ``ckpt`` onto ``device`` in ``dtype``:
    the engine's own models where they can be (``mlc.engine.nets``; not when NATIVE is
    False: training, and whatever hands the models to diffusers, needs its classes)."""
    import time

    import torch

    start = time.perf_counter()
    dtype = dtype or torch.float32
    source = resolve(ckpt, config)
    on_device = torch.device(device).type != "cpu"
    if source.is_folder:
        tokenizer = _Background(load_tokenizer, source)  # overlaps the weights (thread)
        quiet_libraries()
        unet, vae, text_encoder = _load_folder(source, dtype)
        model_hash = legacy_model_hash(_first_weights(source.path / "unet"))
    else:
        model_hash = legacy_model_hash(source.path)
        cached = converted_cache(source, dtype, model_hash)
        # the cached tensors go straight onto the device (thread) while the classes import;
        # the libraries are imported by this thread alone (two threads importing transformers
        # at once can see it half-initialised)
        weights = _Background(cached.read, device) if cached is not None else None
        native = native and _native()
        if not native:
            model_classes()  # first: the lean imports (modelimports) cover diffusers' first import
            tokenizer_class()
            quiet_libraries()
        # the tokenizer overlaps building the models (transformers' only after its imports)
        tokenizer = _Background(native_tokenizer if native else load_tokenizer, source)
        read = weights.result() if weights is not None else None
        loaded = None
        if cached is not None and read is not None:
            loaded = cached.load(device, read, native=native)
        if loaded is None:
            loaded = _load_single_file(source, dtype, native=native)
            if cached is not None:
                cached.save(*loaded)
        elif on_device:
            on_device = False  # already there
        unet, vae, text_encoder = loaded
    for model in (unet, vae, text_encoder):
        if on_device:
            model.to(device)
        model.eval().requires_grad_(False)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_or_library(tokenizer.result(), source),
        schedule=schedule_of(source),
        name=source.path.stem if not source.is_folder else source.path.name,
        model_hash=model_hash,
        source=source,
        load_seconds=time.perf_counter() - start,
    )


def _first_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return folder / "missing"


def _load_single_file(source: ModelSource, dtype: torch.dtype, *, native: bool) -> Models:
    """The three models from a single-file checkpoint: the engine's own (NATIVE, a config
    folder, weights that fit: ``nets.original``), else converted by diffusers."""
    sd = read_checkpoint(source.path)
    check_sd_v1(sd, source.path)
    if native and source.yaml is None:
        from mlc.engine.nets.original import from_original, read_configs

        configs = read_configs({n: source.part(n) for n in ("unet", "vae", "text_encoder")})
        models = from_original(sd, configs, dtype) if configs is not None else None
        if models is not None:
            return models
    model_classes()
    quiet_libraries()
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

    parts = []
    for cls, name in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        if source.yaml is not None:
            kwargs: dict[str, Any] = {"original_config": source.yaml}
        else:
            kwargs = {"config": str(source.part(name).parent), "subfolder": source.part(name).name}
        try:
            parts.append(
                cls.from_single_file(sd, local_files_only=True, torch_dtype=dtype, **kwargs)
            )
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{source.path} does not match config {source.config_label} ({name}): "
                f"{first_line(err)}"
            ) from None
    parts.append(
        _text_encoder_from_state(sd, source.part("text_encoder"), dtype, yaml_text_config(source))
    )
    return parts[0], parts[1], parts[2]


def _load_folder(source: ModelSource, dtype: torch.dtype) -> Models:
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = str(source.path)
    try:
        unet = UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", local_files_only=True, torch_dtype=dtype
        )
        vae = AutoencoderKL.from_pretrained(
            root, subfolder="vae", local_files_only=True, torch_dtype=dtype
        )
        text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load diffusers folder {root}: {first_line(err)}") from None
    return unet, vae, text_encoder


class _Background:
    """Run ``fn(*args)`` in a daemon thread; ``result()`` waits and re-raises its error."""

    def __init__(self, fn: Any, *args: Any) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the caller in result()
            self._error = err

    def result(self) -> Any:
        """The function's value (or its exception, raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
