"""``python -m mlc.fetch.inside``: :func:`mlc.fetch.install` run inside the container, for a
remote Docker engine, whose models folder is on its host and not the caller's. `mlc setup`
copies mlc into the container first (with the engine), then runs this as the container's user:
the recipe comes as JSON in ``--recipe``, progress goes to stderr as plain lines, and the
result is one JSON line on stdout. Needs requests and PyYAML, which the engine's packages
bring."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlc.errors import MlcError, describe
from mlc.fetch.installer import install
from mlc.recipes import Recipe


class LineProgress:
    """The progress interface as a few plain lines on stderr (no terminal to draw on)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0
        self.shown = -1

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self.total, self.done, self.shown = total, completed, -1
        print(description, file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def update(self, completed: int, total: int | None = None) -> None:
        self.done, self.total = completed, total or self.total
        if self.total:
            tenth = min(10, self.done * 10 // self.total)
            if tenth > self.shown:
                self.shown = tenth
                print(f"  {tenth * 10}%", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        self.total = None


def recipe_from(data: dict[str, Any]) -> Recipe:
    """A Recipe from its fields as JSON (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(Recipe)}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return Recipe(**fields)


def recipe_json(recipe: Recipe) -> str:
    """RECIPE's fields as JSON, for ``--recipe``."""
    return json.dumps(dataclasses.asdict(recipe))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc.fetch.inside")
    parser.add_argument("models_dir", help="the models folder, as the container sees it")
    parser.add_argument("--recipe", required=True, help="the recipe's fields as JSON")
    parser.add_argument("--url")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--keep-archive", action="store_true")
    args = parser.parse_args(argv)
    try:
        recipe = recipe_from(json.loads(args.recipe))

        def generate(dest: Path) -> None:
            cmd = [sys.executable if p in ("python", "python3") else p for p in recipe.generator]
            dest.chmod(0o755)
            code = subprocess.call([*cmd, str(dest)])
            if code != 0:
                raise MlcError(f"generating the {recipe.name} weights failed (exit {code})")

        result = install(
            recipe,
            args.models_dir,
            url=args.url,
            keep_archive=args.keep_archive,
            force=args.force,
            generator=generate if recipe.source == "generate" else None,
            progress=LineProgress(),
        )
    except (Exception, KeyboardInterrupt) as exc:  # one line for the host to show
        message, code = describe(exc)
        print(json.dumps({"error": message, "exit": code}), flush=True)
        return code
    fields = {
        f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "files"
    }
    fields["files"] = [str(p) for p in result.files]
    print(json.dumps(fields, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
