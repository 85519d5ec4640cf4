"""`mlc list` and `mlc stop` without Typer or the Docker SDK: they start like ``docker ps``.

On the local engine (:func:`mlc.fastpath.enabled`), these commands talk to its socket with
the standard library (:mod:`mlc.containers.engineapi`) and print through the same code as the
full CLI (:mod:`.listing`, :mod:`.output`, :func:`mlc.errors.report`). Each returns None,
before it printed anything, whenever it cannot be sure to act exactly as the full CLI does
(a flag it does not know, the engine unreachable or refusing); `mlc` then runs the full CLI,
which says why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from mlc import errors, fastpath, host, warmpath
from mlc.containers import engineapi
from mlc.containers.container import find_local, mine_local

STOP_TIMEOUT_S = 10  # as `mlc stop` through the SDK (containers.lifecycle.stop)
LIST_FLAGS = {"--json": "json", "-a": "all", "--all-users": "all"}
FORCE_FLAGS = ("-f", "--force")


def dispatch(args: list[str]) -> int | None:
    """ARGS (the verb first) run quickly: the exit code, or None for the full CLI."""
    command = COMMANDS.get(args[0]) if args else None
    if command is None or not fastpath.enabled():
        return None
    path = engineapi.socket_path()
    if path is None:
        return None
    try:
        with engineapi.Engine(path) as engine:
            return command(engine, args[1:])
    except (OSError, engineapi.EngineApiError, ValueError):
        return None  # nothing printed yet (see each command): the full CLI says it properly


def list_(engine: engineapi.Engine, flags: list[str]) -> int | None:
    """`mlc list [--json] [-a]`."""
    if any(f not in LIST_FLAGS for f in flags):
        return None
    chosen = {LIST_FLAGS[f] for f in flags}
    found = mine_local(engine, host.current_user(), "all" in chosen)
    workers = {
        c.docker_name: warmpath.container_status(c.labels.worker, c.status == "running")
        for c in found
    }
    from mlc.cli.listing import show_containers

    show_containers(found, workers, "json" in chosen, "all" in chosen)
    return 0


def stop(engine: engineapi.Engine, flags: list[str]) -> int | None:
    """`mlc stop NAME [-f]`: the same lines and exit codes as the full CLI's."""
    names = [f for f in flags if f not in FORCE_FLAGS]
    if len(names) != 1 or names[0].startswith("-"):
        return None
    name, force = names[0], len(names) < len(flags)
    from mlc.cli.output import confirm, say, show

    try:
        c = find_local(engine, name, host.current_user())
        if c.status != "running":
            say(f"[{name}] is not running")
            return 0
        if not force and sys.stdin.isatty():
            return None  # a question for a person: the full CLI asks it
        confirm(f"Stop container '{name}'? All its processes will end.", force)
    except errors.MlcError as exc:
        return errors.report(exc, "mlc")
    engine.stop(c.raw, STOP_TIMEOUT_S)  # fails: nothing printed, the full CLI tries and says
    show(f"[{name}] stopped")
    return 0


COMMANDS: dict[str, Callable[[engineapi.Engine, list[str]], int | None]] = {
    "list": list_,
    "stop": stop,
}
