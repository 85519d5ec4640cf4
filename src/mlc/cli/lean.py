"""Typer's help formatter without the rich modules mlc never uses: a shorter start for every
command that goes through the app (`mlc --help` most).

``typer.rich_utils`` imports ``rich.markdown`` (markdown-it) and ``rich.traceback`` (pygments)
at the top, about 50-60 ms of a 0.2 s start, but calls them only for ``rich_markup_mode=
"markdown"`` and for pretty tracebacks, and mlc's app uses neither (``rich`` markup, pretty
exceptions off). :func:`defer` puts stand-ins for the two modules in ``sys.modules`` while the
app is imported: each class a stand-in hands out imports the real module the first time it is
called or asked for an attribute, and the real module then replaces the stand-in, so code that
does use them still works, only later. Nothing of rich's or typer's code is copied or changed.
``MLC_LEAN_IMPORTS=0`` turns it off.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

DEFERRED = {"rich.markdown": ("Markdown",), "rich.traceback": ("Traceback", "install")}
"""Module -> the names importers take from it at import time."""


def enabled() -> bool:
    return os.environ.get("MLC_LEAN_IMPORTS", "1").lower() not in ("0", "off", "no", "false")


def defer() -> None:
    """Stand-ins for the DEFERRED modules not imported yet (a no-op when turned off)."""
    if not enabled():
        return
    for module, names in DEFERRED.items():
        if module not in sys.modules:
            sys.modules[module] = _StandIn(module, names)


def real(module: str) -> types.ModuleType:
    """MODULE itself, imported now if a stand-in held its place."""
    if isinstance(sys.modules.get(module), _StandIn):
        del sys.modules[module]
    return importlib.import_module(module)


class _StandIn(types.ModuleType):
    """A module that imports the real one on any use beyond taking its deferred names."""

    def __init__(self, module: str, names: tuple[str, ...]) -> None:
        super().__init__(module)
        for name in names:
            setattr(self, name, _deferred_class(module, name))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's questions (__path__, ...): not a use
            raise AttributeError(name)
        return getattr(real(self.__name__), name)


def _deferred_class(module: str, name: str) -> type:
    """A class that stands for MODULE.NAME: calling it, or any attribute, loads the real one
    (``Markdown(...)``, ``Traceback.from_exception(...)``, ``Markdown | Text`` all work)."""

    def load() -> Any:
        return getattr(real(module), name)

    class Meta(type):
        def __getattr__(cls, attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return getattr(load(), attr)

        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            return load()(*args, **kwargs)

        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, load())

    return Meta(name, (), {"__module__": module, "__qualname__": name})
