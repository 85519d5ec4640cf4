"""``--low_vram``: the models visit the GPU one at a time, for 4 GB cards.

The text encoder, UNet and VAE stay in host memory; each is moved to the GPU just before it
runs and stays there until another model needs the room. A 512x512 fp16 image then needs
the UNet's weights (1.7 GB) plus activations on the GPU, instead of all three models. The
pixels are the same as without it; each image pays the transfers (about 2 GB over PCIe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class Offload:
    """Keeps at most one model on DEVICE; ``use(model)`` makes it that one."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.current: Any = None
        self.moves = 0  # models moved to the device (for reports and tests)

    @contextlib.contextmanager
    def use(self, model: Any) -> Iterator[Any]:
        """Move MODEL to the device (evicting the previous one to the host) and yield it."""
        if self.current is not model:
            self.release()
            self.current = model  # before the move: an interrupted move is still released
            model.to(self.device)
            self.moves += 1
        yield model

    def release(self) -> None:
        """Move the model on the device (if any) back to the host."""
        if self.current is not None:
            model, self.current = self.current, None
            model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
