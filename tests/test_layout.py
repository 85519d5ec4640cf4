"""The layout of src/mlc, read from the source (AST, nothing imported): no import circle, the
engine never imports the host's libraries and the host never imports the engine's.

Every ``import`` counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``), absolute or relative; ``from mlc.x import y`` is an import of ``mlc.x``
and, when ``y`` is a submodule, of ``mlc.x.y`` too. The runtime side (what importing the
engine actually loads) is tests/engine/test_txt2img_cli.py's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ENGINE_NEVER = ("docker", "typer", "rich")
HOST_NEVER = ("torch", "diffusers", "transformers")

Graph = dict[str, set[str]]


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of PACKAGE under SRC."""
    files = {}
    for path in sorted((src / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_names(path: Path, module: str, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every dotted name an import statement in PATH names (relative ones made absolute); for
    ``from X import a, b`` that is X, X.a and X.b (a and b may be submodules), but not X itself
    when every name is one of MODULES (``from pkg import sub`` needs only pkg's submodule, as a
    package's own ``__init__`` that re-exports its submodules shows)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
            if not subs or not subs <= modules or len(subs) < len(node.names):
                names.add(base)
            names.update(subs)
    return names


def import_graph(src: Path, package: str = "mlc") -> Graph:
    """Module -> the modules of PACKAGE it imports (a name that is no module counts as the
    nearest enclosing module: ``mlc.engine.say`` is ``mlc.engine``)."""
    files = module_files(src, package)
    graph: Graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module, frozenset(files)):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import circle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def third_party(src: Path, modules: list[str], banned: tuple[str, ...]) -> list[str]:
    """``module -> library`` for every import of a BANNED top-level library in MODULES."""
    files = module_files(src, "mlc")
    bad = set()
    for module in modules:
        for name in imported_names(files[module], module):
            if name.split(".")[0] in banned:
                bad.add(f"{module} -> {name.split('.')[0]}")
    return sorted(bad)


def test_no_import_circle_in_src():
    graph = import_graph(SRC)
    assert "mlc.engine.txt2img" in graph and "mlc.cli" in graph  # the whole tree was read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_nothing_in_the_engine_imports_its_entry_point():
    """txt2img.py is the CLI only: no engine module climbs back up to it."""
    graph = import_graph(SRC)
    users = sorted(m for m, targets in graph.items() if "mlc.engine.txt2img" in targets)
    assert users == []
    assert graph["mlc.engine.txt2img"] <= {"mlc.engine", "mlc.engine.command", "mlc.engine.options"}


def test_engine_never_imports_host_libraries():
    engine = [m for m in module_files(SRC, "mlc") if m.startswith("mlc.engine")]
    assert len(engine) > 20
    assert third_party(SRC, engine, ENGINE_NEVER) == []


def test_host_never_imports_engine_libraries():
    host = [m for m in module_files(SRC, "mlc") if not m.startswith("mlc.engine")]
    assert {"mlc", "mlc.cli", "mlc.errors", "mlc.containers"} <= set(host)
    assert third_party(SRC, host, HOST_NEVER) == []


# -- the checks can fail -------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_circle_through_function_level_and_relative_imports_is_found(tmp_path: Path):
    src = _tree(
        tmp_path,
        {
            "mlc/__init__.py": "",
            "mlc/engine/__init__.py": "",
            "mlc/engine/a.py": "from mlc.engine import b\n",
            "mlc/engine/b.py": "def f():\n    from . import c\n",
            "mlc/engine/c.py": "def g():\n    from .a import thing\n",
            "mlc/engine/d.py": "import mlc.engine.a\n",
        },
    )
    graph = import_graph(src)
    assert graph["mlc.engine.b"] == {"mlc.engine.c"}  # `from . import c`: the submodule only
    assert graph["mlc.engine.c"] == {"mlc.engine.a"}  # `thing` is no module: a itself
    assert graph["mlc.engine.d"] == {"mlc.engine.a"}
    assert find_cycle(graph) == ["mlc.engine.a", "mlc.engine.b", "mlc.engine.c", "mlc.engine.a"]
    (src / "mlc/engine/c.py").write_text("def g():\n    pass\n")
    assert find_cycle(import_graph(src)) is None


def test_a_package_that_imports_its_own_submodule_back_is_a_circle(tmp_path: Path):
    src = _tree(
        tmp_path,
        {
            "mlc/__init__.py": "from .engine import x\n",
            "mlc/engine/__init__.py": "",
            "mlc/engine/x.py": "import typing\nif typing.TYPE_CHECKING:\n    import mlc\n",
        },
    )
    assert find_cycle(import_graph(src)) == ["mlc", "mlc.engine.x", "mlc"]


def test_a_package_whose_submodule_imports_a_sibling_through_it_is_no_circle(tmp_path: Path):
    files = {
        "mlc/__init__.py": "",
        "mlc/cli/__init__.py": "from mlc.cli.app import app\n",
        "mlc/cli/app.py": "from mlc.cli import cmds\n",
        "mlc/cli/cmds.py": "",
    }
    src = _tree(tmp_path, files)
    assert find_cycle(import_graph(src)) is None
    # ... but taking a name from the package's own namespace is one
    (src / "mlc/cli/app.py").write_text("from mlc.cli import cmds, VERSION\n")
    assert find_cycle(import_graph(src)) == ["mlc.cli", "mlc.cli.app", "mlc.cli"]


@pytest.mark.parametrize(
    ("module", "text", "lib"),
    [
        ("mlc/engine/run.py", "def f():\n    from rich.console import Console\n", "rich"),
        ("mlc/engine/run.py", "import docker.errors\n", "docker"),
        ("mlc/cli.py", "def f():\n    import torch\n", "torch"),
        ("mlc/fetch.py", "from transformers import CLIPTokenizer\n", "transformers"),
    ],
)
def test_a_banned_library_is_found(tmp_path: Path, module: str, text: str, lib: str):
    src = _tree(tmp_path, {"mlc/__init__.py": "", "mlc/engine/__init__.py": "", module: text})
    name = module[:-3].replace("/", ".")
    banned = ENGINE_NEVER if name.startswith("mlc.engine") else HOST_NEVER
    assert third_party(src, [name], banned) == [f"{name} -> {lib}"]
    assert third_party(src, [name], ("numpy",)) == []
