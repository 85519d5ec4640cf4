"""mlc.engine: the bundled Stable Diffusion v1 txt2img engine (container side).

Imports nothing heavy: torch and diffusers are loaded by the submodules that need
them. Never imports docker, typer or rich.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd-v1"
"""The bundled SD v1 diffusers config folder (configs and tokenizer, no weights)."""

V1_INFERENCE_YAML = Path(__file__).resolve().parent / "configs" / "v1-inference.yaml"
"""The original CompVis inference YAML, as shipped with SD v1."""


def offline() -> None:
    """Keep huggingface_hub and transformers off the network (call before importing them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")


offline()


from mlc.errors import MlcError  # noqa: E402  (light: no third-party imports)


class EngineError(MlcError):
    """A problem the user can fix (bad checkpoint, bad config); exit code 1."""


class UsageError(EngineError):
    """Bad command-line input; exit code 2."""

    exit_code = 2
