"""What `mlc list` prints for a set of containers: one table or JSON, the same on the full
CLI and on the quick path (:mod:`.quick`). Light: rich is imported when a table is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlc import warmpath
from mlc.cli.output import say, show_json, show_table, table
from mlc.containers.container import Container


def show_containers(
    found: Sequence[Container],
    workers: Mapping[str, Mapping[str, Any] | None],
    as_json: bool,
    all_users: bool,
) -> None:
    """FOUND (with each one's worker status, by Docker name) as `mlc list` shows them."""
    if as_json:
        show_json([{**c.describe(), "worker": workers.get(c.docker_name)} for c in found])
        return
    if not found:
        say("no containers; create one with: mlc create NAME FRAMEWORK VERSION")
        return
    from rich.markup import escape

    grid = table("NAME", "FRAMEWORK", "STATUS", "GPUS", "WORKSPACE", "WORKER")
    if all_users:
        grid.add_column("USER")
    for c in found:
        cells = [
            escape(f"[{c.name}]"),
            f"{c.framework}-{c.version}".rstrip("-"),
            c.status,
            c.gpus,
            c.workspace,
            warmpath.describe(workers.get(c.docker_name)),
        ]
        grid.add_row(*cells, *([c.user] if all_users else []))
    show_table(grid)
