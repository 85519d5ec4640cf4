"""One device's part of a sharded run: the model loaded once, then one image per call.

Used by both back ends: a device process of ``scale.pool`` and a Ray actor of
``scale.rayrun``. The image comes back as a PIL image; the driver writes it (``scale.plan``),
so every file of the run has the name and metadata a one-device run would give it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mlc.engine.spec import RunSpec

if TYPE_CHECKING:
    from mlc.engine.scale.plan import Job


@dataclass
class Made:
    """One image made on a device."""

    index: int
    image: Any  # PIL.Image.Image
    seconds: float
    vae_fallback: bool


class Shard:
    """SPEC's model loaded on DEVICE (``cpu``, ``cuda``, ``mps``: a process that should use
    one of several GPUs sees only that one, as ``cuda``)."""

    def __init__(self, spec: RunSpec, device: str):
        self.spec = replace(spec, device=device, devices=[], ray=None, resume=False, quiet=True)
        self.renderer: Any = None

    def load(self) -> dict[str, Any]:
        """Load the model (once); the run's metadata as this device would write it."""
        from mlc.engine.run import make_renderer, run_info
        from mlc.engine.session import check_shape, open_session

        session = open_session(self.spec)
        check_shape(self.spec, session.components)
        self.renderer = make_renderer(self.spec, session)
        self.settings = _settings(self.spec)
        return run_info(self.spec, session)

    def make(self, job: Job) -> Made:
        """JOB's image."""
        from mlc.engine.generate import ImageSpec

        image = ImageSpec(job.index, job.prompt, job.negative_prompt, job.seed)
        (result,) = self.renderer.render([image], self.settings)
        return Made(job.index, result.image, result.seconds, result.vae_fallback)


def _settings(spec: RunSpec) -> Any:
    from mlc.engine.run import settings_of

    return settings_of(spec)
