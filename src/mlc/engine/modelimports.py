"""The model classes the engine builds, imported with the smallest import graph.

``from diffusers.models import UNet2DConditionModel`` imports the UNet's module, but the
folders it lives in (``diffusers.models.unets``, ``.autoencoders``, ``.transformers``) have
an ``__init__`` that imports every model of their kind (video VAEs, audio VAEs, dozens of
transformers), about 1.5-2 s on a CPU before a weight is read. ``model_classes`` imports the
three modules SD v1 needs, with those three folders' ``__init__`` deferred: each folder is
registered as a package whose ``__init__`` runs the first time something asks it for a name
it does not hold (``diffusers.models.autoencoders.AutoencoderTiny``), so code that relies on
it still works, only later. Nothing of diffusers' or transformers' code is copied or changed.

What the default path cannot avoid (docs/benchmarks.md, "Import budget"): ``torch``,
``diffusers.utils`` (it imports ``torch._dynamo``), ``diffusers.loaders`` (the model classes'
mixins; ``diffusers.hooks`` calls ``torch.compiler.disable``, which needs ``torch._dynamo``),
``diffusers.quantizers`` (it imports ``transformers.models.auto``'s configuration registry)
and transformers' ``modeling_utils``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

DEFERRED_PACKAGES = (
    "diffusers.models.unets",
    "diffusers.models.autoencoders",
    "diffusers.models.transformers",
)
"""Folders whose ``__init__`` imports every model of its kind; SD v1 needs one module each."""

MODULES = {
    "UNet2DConditionModel": "diffusers.models.unets.unet_2d_condition",
    "AutoencoderKL": "diffusers.models.autoencoders.autoencoder_kl",
    "CLIPTextModel": "transformers.models.clip.modeling_clip",
    "CLIPTextConfig": "transformers.models.clip.configuration_clip",
    "CLIPTokenizer": "transformers.models.clip.tokenization_clip",
}
"""Where each class the default path uses is defined (imported directly, not through the
libraries' lazy top-level names, which resolve to the same modules)."""

NEEDED = {
    "diffusers.models.unets": ("unet_2d_condition", "unet_2d_blocks"),
    "diffusers.models.autoencoders": ("autoencoder_kl", "vae"),
    "diffusers.models.transformers": ("transformer_2d", "dual_transformer_2d"),
}
"""The modules of each deferred folder that SD v1 needs; the default path imports no other."""

NEVER_ON_DEFAULT_PATH = (
    "diffusers.pipelines",
    "transformers.pipelines",
    "docker",
    "typer",
    "rich",
    "mlc.cli",
)
"""Packages the one-shot engine's default path never imports (tests/engine/
test_import_budget.py): diffusers' and transformers' pipelines, the host CLI's libraries."""


def off_budget(modules: list[str] | set[str]) -> list[str]:
    """The names in MODULES (``sys.modules``' keys) that the default path must not import:
    under ``NEVER_ON_DEFAULT_PATH``, or a module of a deferred folder SD v1 does not need."""
    bad = []
    for name in sorted(modules):
        if any(name == p or name.startswith(p + ".") for p in NEVER_ON_DEFAULT_PATH):
            bad.append(name)
            continue
        parent, _, child = name.rpartition(".")
        if parent in NEEDED and child.split(".")[0] not in NEEDED[parent]:
            bad.append(name)
    return bad


_lock = threading.RLock()


def defer_package_init(name: str) -> bool:
    """Register package NAME without running its ``__init__`` (it runs on the first lookup of
    a name the package does not hold). False when NAME is imported already or not found."""
    with _lock:
        if name in sys.modules:
            return False
        parent, _, child = name.rpartition(".")
        importlib.import_module(parent)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return False
        module = importlib.util.module_from_spec(spec)

        def complete(attr: str) -> Any:
            # the package's own __init__, run once into this same module object
            with _lock:
                if module.__dict__.pop("__getattr__", None) is not None:
                    spec.loader.exec_module(module)
            try:
                return module.__dict__[attr]
            except KeyError:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

        module.__getattr__ = complete  # type: ignore[method-assign]  # PEP 562
        sys.modules[name] = module
        parent_module = sys.modules[parent]
        if isinstance(parent_module, types.ModuleType) and child not in vars(parent_module):
            # diffusers.models is a lazy module: keep it from resolving CHILD itself
            parent_module.__dict__[child] = module
        return True


def model_classes() -> tuple[
    type[UNet2DConditionModel], type[AutoencoderKL], type[CLIPTextModel], type[CLIPTextConfig]
]:
    """(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig), imported lean."""
    for name in DEFERRED_PACKAGES:
        defer_package_init(name)
    names = ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTextConfig")
    found = [getattr(importlib.import_module(MODULES[n]), n) for n in names]
    return found[0], found[1], found[2], found[3]


def tokenizer_class() -> type[CLIPTokenizer]:
    """CLIPTokenizer, from its own module (not through transformers' auto classes)."""
    return importlib.import_module(MODULES["CLIPTokenizer"]).CLIPTokenizer
