"""A loaded model on a device: device and dtype picking, ``Session`` and ``open_session``.

A Session outlives one run: the grid renders every cell on one, the warm worker keeps one
between requests, the benchmark's engine child times one. ``session.serves(spec)`` says
whether a run can use it (same checkpoint, config, device, dtype, offload and compile).
torch is imported when a device is picked, not on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlc.engine import UsageError, loading
from mlc.engine.spec import RunSpec

if TYPE_CHECKING:
    import torch
    from diffusers.models import AutoencoderTiny

    from mlc.engine.loading import Components
    from mlc.engine.lowvram import Offload

SessionKey = tuple[str, str | None, str, str, bool, bool]
"""checkpoint, config, device, dtype, offloaded, compiled."""


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


def pick_dtype(precision: str, device: str) -> torch.dtype:
    """autocast: fp16 on GPUs, fp32 on CPU; full: fp32."""
    import torch

    return torch.float16 if precision == "autocast" and device != "cpu" else torch.float32


def session_key(spec: RunSpec) -> SessionKey:
    """What identifies a loaded model: checkpoint, config, device, dtype and how it is held."""
    device = pick_device(spec.device)
    ckpt = str(Path(spec.ckpt).expanduser().resolve())
    config = str(Path(spec.config).expanduser().resolve()) if spec.config else None
    offload = spec.low_vram and device != "cpu"
    return (ckpt, config, device, str(pick_dtype(spec.precision, device)), offload, spec.compile)


@dataclass
class Session:
    """A model loaded on a device, reused across runs (grids, the warm worker, benchmarks)."""

    key: SessionKey
    device: str
    dtype: torch.dtype
    components: Components
    fresh: bool = True  # loaded for the run at hand (its load time counts there)
    offload: Offload | None = None  # with --low_vram on a GPU
    tiny_vaes: dict[str, AutoencoderTiny] = field(default_factory=dict)  # --tiny_vae path -> model

    def serves(self, spec: RunSpec) -> bool:
        """Whether SPEC can run on this loaded model."""
        return self.key == session_key(spec)

    def tiny_vae(self, path: str | None) -> AutoencoderTiny | None:
        """The TAESD model at PATH (loaded once per session), or None."""
        if path is None:
            return None
        if path not in self.tiny_vaes:
            from mlc.engine.tinyvae import load_tiny_vae

            where = "cpu" if self.offload is not None else self.device
            self.tiny_vaes[path] = load_tiny_vae(path, device=where, dtype=self.dtype)
        return self.tiny_vaes[path]


def open_session(spec: RunSpec) -> Session:
    """Load SPEC's model (failing fast on a missing file before torch is imported)."""
    loading.resolve(spec.ckpt, spec.config)
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.precision, device)
    offload = None
    if spec.low_vram and device != "cpu":
        from mlc.engine.lowvram import Offload

        offload = Offload(device)
    components = loading.load(
        spec.ckpt, spec.config, device="cpu" if offload else device, dtype=dtype
    )
    from mlc.engine.accel import tune

    tune(components, device, compile=spec.compile)
    return Session(session_key(spec), device, dtype, components, offload=offload)


def session_for(spec: RunSpec, session: Session | None = None) -> tuple[Session, float]:
    """SESSION when it serves SPEC, else a newly loaded one; and the load time SPEC's run
    reports (0 when the model was loaded for an earlier run)."""
    if session is None or not session.serves(spec):
        session = open_session(spec)
    seconds = session.components.load_seconds if session.fresh else 0.0
    session.fresh = False
    return session, seconds


def check_shape(spec: RunSpec, components: Components) -> None:
    """--C, --f, --H and --W against the loaded model (--C and --f only when given: their
    default is the model's own)."""
    if spec.latent_channels is not None and components.latent_channels != spec.latent_channels:
        raise UsageError(
            f"--C {spec.latent_channels} does not match the model's "
            f"{components.latent_channels} latent channels"
        )
    if spec.factor is not None and components.vae_scale_factor != spec.factor:
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
