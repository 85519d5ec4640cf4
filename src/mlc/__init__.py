"""mlc: per-user ML containers and a bundled Stable Diffusion v1 engine."""

__version__ = "0.1.0"
