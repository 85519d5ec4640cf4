"""The model classes the engine builds, imported with the smallest import graph.

``from diffusers.models import UNet2DConditionModel`` imports the UNet's module, but the
folders it lives in (``diffusers.models.unets``, ``.autoencoders``, ``.transformers``) have
an ``__init__`` that imports every model of their kind (video VAEs, audio VAEs, dozens of
transformers), about 1.5-2 s on a CPU before a weight is read. ``model_classes`` imports the
three modules SD v1 needs, with those three folders' ``__init__`` deferred: each folder is
registered as a package whose ``__init__`` runs the first time something asks it for a name
it does not hold (``diffusers.models.autoencoders.AutoencoderTiny``), so code that relies on
it still works, only later. Nothing of diffusers' or transformers' code is copied or changed.

``torch._dynamo`` (torch.compile's frontend: 1.3-2 s and 90 modules, sympy's among them) is
imported by diffusers and transformers only to *decorate* classes and functions at import
time (``allow_in_graph``, ``assume_constant_result``: registrations that return the object
unchanged; ``torch.compiler.disable``). While the model modules import, ``torch._dynamo``
is a stand-in (``_DynamoStandIn``) that records those registrations and wraps ``disable``;
``real_dynamo()`` imports the real one and replays them, and ``--compile`` calls it before
``torch.compile`` (``accel.compile_unet``), so a compiled UNet sees what it always saw. Any
other use of the stand-in imports the real module on the spot (nothing is lost, only the
time). ``MLC_LEAN_IMPORTS=0`` turns both tricks off.

What the default path cannot avoid (docs/benchmarks.md, "Import budget"): ``torch``,
``diffusers.utils``, ``diffusers.loaders`` (the model classes' mixins: LoRA and single-file
loading, which import scipy), ``diffusers.quantizers`` and transformers' ``modeling_utils``
(which import ``transformers.models.auto``: ``modeling_layers`` uses ``AutoModel``),
``accelerate`` and ``huggingface_hub``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mlc.engine.env import lean_imports

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
    "torch._inductor",
    "docker",
    "typer",
    "rich",
    "mlc.cli",
)
"""Packages the one-shot engine's default path never imports (tests/engine/
test_import_budget.py): diffusers' and transformers' pipelines, torch.compile's backend, the
host CLI's libraries."""

NEVER_EXACT = ("torch._dynamo",)
"""Modules it never imports, though it may import a submodule of theirs without running
their ``__init__`` (transformers' ``masking_utils`` imports
``torch._dynamo._trace_wrapped_higher_order_op``)."""

NEVER_ON_NATIVE_PATH = (
    *NEVER_ON_DEFAULT_PATH,
    "transformers",
    "diffusers.models",
    "diffusers.loaders",
    "diffusers.quantizers",
    "accelerate",
    "scipy",
    "sympy",
)
"""What the default path with the engine's own models (``mlc.engine.nets``, built from the
converted cache) never imports: none of the libraries' model code, nor what it pulls in.
(diffusers' schedulers still come through ``diffusers.utils``.)"""


def off_budget(modules: list[str] | set[str], *, native: bool = False) -> list[str]:
    """The names in MODULES (``sys.modules``' keys) that the default path must not import:
    under ``NEVER_ON_DEFAULT_PATH`` (NATIVE: ``NEVER_ON_NATIVE_PATH``), or a module of a
    deferred folder SD v1 does not need."""
    never = NEVER_ON_NATIVE_PATH if native else NEVER_ON_DEFAULT_PATH
    bad = []
    for name in sorted(modules):
        if name in NEVER_EXACT or any(name == p or name.startswith(p + ".") for p in never):
            bad.append(name)
            continue
        parent, _, child = name.rpartition(".")
        if parent in NEEDED and child.split(".")[0] not in NEEDED[parent]:
            bad.append(name)
    return bad


_lock = threading.RLock()
_replay_lock = threading.Lock()


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
    names = ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTextConfig")
    if all(MODULES[n] in sys.modules for n in names):
        return tuple(getattr(sys.modules[MODULES[n]], n) for n in names)  # type: ignore[return-value]
    with _dynamo_stood_in() as lean:
        if lean:
            for name in DEFERRED_PACKAGES:
                defer_package_init(name)
        found = [getattr(importlib.import_module(MODULES[n]), n) for n in names]
    return found[0], found[1], found[2], found[3]


@contextlib.contextmanager
def _dynamo_stood_in() -> Iterator[bool]:
    """Under the module lock, ``torch._dynamo`` stood in for while the body imports (when
    ``lean_imports()``; yields whether it is)."""
    with _lock:
        lean = lean_imports()
        stand_in = _DynamoStandIn.install() if lean else None
        try:
            yield lean
        finally:
            if stand_in is not None:
                stand_in.uninstall()


def no_init_weights() -> contextlib.AbstractContextManager[Any]:
    """transformers' context that turns ``torch.nn.init`` into no-ops (the models are built on
    the meta device for weights assigned after: an init there is wasted, and a ``normal_``
    on a meta tensor goes through torch's Python references, which import torch._dynamo)."""
    try:
        from transformers.initialization import no_init_weights as context
    except ImportError:  # transformers 4
        try:
            from transformers.modeling_utils import no_init_weights as context
        except ImportError:
            return contextlib.nullcontext()
    return context()


def quiet_libraries() -> None:
    """Keep diffusers/transformers from printing warnings meant for library developers."""
    from transformers.utils import logging as transformers_logging

    quiet_diffusers()
    transformers_logging.set_verbosity_error()


def quiet_diffusers() -> None:
    """``quiet_libraries`` for diffusers alone (the engine's own models need no transformers)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def lean_attribute(module: str, name: str) -> Any:
    """``module.name``, both imported with ``torch._dynamo`` stood in for (when
    ``lean_imports()``): diffusers' schedulers import ``diffusers.utils``, whose
    ``torch_utils`` imports dynamo only to decorate."""
    with _dynamo_stood_in():
        return getattr(importlib.import_module(module), name)


def tokenizer_class() -> type[CLIPTokenizer]:
    """CLIPTokenizer, from its own module (not through transformers' auto classes)."""
    return importlib.import_module(MODULES["CLIPTokenizer"]).CLIPTokenizer


class _DynamoStandIn(types.ModuleType):
    """``torch._dynamo`` while the model modules import (see the module's docstring)."""

    recorded: list[tuple[str, Any]] = []  # (decorator, what it registered), for real_dynamo
    REGISTRATIONS = ("allow_in_graph", "assume_constant_result")  # both return their argument

    def __init__(self) -> None:
        super().__init__("torch._dynamo")
        spec = importlib.util.find_spec("torch._dynamo")
        # a package: transformers imports one submodule (``_trace_wrapped_higher_order_op``)
        self.__path__ = list(spec.submodule_search_locations or []) if spec else []
        self.__package__ = "torch._dynamo"
        self.real: types.ModuleType | None = None

    @classmethod
    def install(cls) -> _DynamoStandIn | None:
        """Put a stand-in in place, unless torch._dynamo is imported already."""
        if "torch._dynamo" in sys.modules:
            return None
        stand_in = cls()
        sys.modules["torch._dynamo"] = stand_in
        return stand_in

    def uninstall(self) -> None:
        """Take the stand-in away: the next ``import torch._dynamo`` imports the real one."""
        if sys.modules.get("torch._dynamo") is self:
            del sys.modules["torch._dynamo"]
        torch = sys.modules.get("torch")
        if torch is not None and vars(torch).get("_dynamo") is self:
            delattr(torch, "_dynamo")

    def allow_in_graph(self, fn: Any) -> Any:
        _DynamoStandIn.recorded.append(("allow_in_graph", fn))
        return fn

    def assume_constant_result(self, fn: Any) -> Any:
        _DynamoStandIn.recorded.append(("assume_constant_result", fn))
        return fn

    def disable(self, fn: Any = None, recursive: bool = True, *, reason: str | None = None) -> Any:
        """``torch._dynamo.disable``, resolved when FN is first called: without dynamo nothing
        can be compiling, so FN runs as is; once dynamo is imported, through its disable."""
        if fn is None:
            return lambda f: self.disable(f, recursive, reason=reason)
        resolved: list[Callable[..., Any]] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not resolved:
                dynamo = sys.modules.get("torch._dynamo")
                if dynamo is None or isinstance(dynamo, _DynamoStandIn):
                    return fn(*args, **kwargs)
                resolved.append(dynamo.disable(fn, recursive, reason=reason))
            return resolved[0](*args, **kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        # anything else: the real module, now (only the time saving is lost)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(real_dynamo(), name)


def real_dynamo() -> types.ModuleType:
    """The real ``torch._dynamo``, with the registrations the stand-in recorded replayed.
    (No import under a lock of ours: another thread may be importing meanwhile.)"""
    current = sys.modules.get("torch._dynamo")
    if isinstance(current, _DynamoStandIn):
        current.uninstall()
    dynamo = importlib.import_module("torch._dynamo")
    for sub, module in list(sys.modules.items()):  # imported under the stand-in
        if sub.startswith("torch._dynamo.") and sub.count(".") == 2:
            vars(dynamo).setdefault(sub.rsplit(".", 1)[1], module)
    with _replay_lock:
        while _DynamoStandIn.recorded:
            decorator, fn = _DynamoStandIn.recorded.pop(0)
            getattr(dynamo, decorator)(fn)
    return dynamo
