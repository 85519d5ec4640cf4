"""`mlc create | open | list | start | stop | remove | stats`: the container commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlc import containers, host, warmpath
from mlc.cli import output
from mlc.cli.options import (
    FOLDERS,
    ArchOpt,
    CatalogOpt,
    DataOpt,
    ForceOpt,
    JsonOpt,
    ModelsOpt,
    NameArg,
    NoPrewarmOpt,
)
from mlc.cli.output import confirm, say, show, show_json, show_table, table
from mlc.containers.labels import DEFAULT_ULIMITS

# Each command imports what it runs on (the Docker SDK, rich) itself: `mlc --help` and the
# commands that do not need them start without them.

LIMITS = "GPUs and limits"


def create(
    name: NameArg,
    framework: Annotated[str, typer.Argument(help="Framework from the catalog, e.g. Pytorch.")],
    version: Annotated[
        str, typer.Argument(help="Version from the catalog, e.g. 2.9.1 or 2.0.1-aime.")
    ],
    workspace: Annotated[
        Path,
        typer.Option(
            "--workspace",
            "-w",
            "--workspace_dir",
            help="Host folder at /workspace.",
            rich_help_panel=FOLDERS,
        ),
    ] = Path("~/workspace"),
    data: DataOpt = None,
    models: ModelsOpt = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            "-g",
            "--num_gpus",
            help="all, a count (2), device ids (device=0 or 0,1) or none; 0 is refused as "
            "ambiguous.",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    arch: ArchOpt = None,
    ulimit: Annotated[
        str,
        typer.Option(
            "--ulimit",
            envvar="MLC_ULIMITS",
            help="NAME=SOFT[:HARD],... or none.",
            rich_help_panel=LIMITS,
        ),
    ] = DEFAULT_ULIMITS,
    no_forward: Annotated[
        bool,
        typer.Option(
            "--no-forward-network",
            help="Do not pass the host's proxy settings and CA bundle into the container.",
            rich_help_panel="Network",
        ),
    ] = False,
    build: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Build the image from images/ when the pull fails.",
            rich_help_panel="Image",
        ),
    ] = False,
    catalog_path: CatalogOpt = None,
    no_prewarm: Annotated[
        bool,
        typer.Option(
            "--no-prewarm",
            help="Never load the installed model in the background when the container starts "
            "(`mlc start`, `open`, `setup`); `mlc txt2img` loads it on first use.",
            rich_help_panel="Engine",
        ),
    ] = False,
) -> None:
    """Create a container NAME from the catalog image FRAMEWORK VERSION.

    Example: [bold]mlc create sd Pytorch 2.9.1 -w ~/sd -m ~/models[/]
    """
    from mlc.progress import RichProgress

    spec = containers.new_spec(
        name, framework, version, workspace=workspace, data=data, models=models, gpus=gpus,
        arch=arch, ulimits=ulimit, forward_network=not no_forward, build=build,
        catalog_path=catalog_path, remote_host=containers.remote_host(),
        prewarm=not no_prewarm,
    )  # fmt: skip
    with RichProgress(console=output.err, transient=True) as progress:
        c = containers.create(containers.client(), spec, progress)
    e = spec.entry
    on = f" on host {spec.remote_host}" if spec.remote_host else ""
    show(
        f"[{name}] ready: {e.framework} {e.version} ({e.reference}), "
        f"GPUs {c.gpus}, workspace {c.workspace}{on}. Open it with: mlc open {name}"
    )


def open_(
    name: NameArg,
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run instead of a shell (after --).")
    ] = None,
    no_prewarm: NoPrewarmOpt = False,
) -> None:
    """Open a shell in NAME as you, in /workspace (or run COMMAND and exit with its code).

    The container is started if needed and stopped when the last shell it opened exits,
    unless it was started with `mlc start`.

    Example: [bold]mlc open sd[/] or [bold]mlc open sd -- python train.py[/]
    """
    from mlc import provision

    if not command:
        containers.pty_mode()  # an invalid MLC_PTY is refused before anything starts
    dc = containers.client()
    c = containers.find(dc, name, host.current_user())
    if containers.start(c):
        say(f"[{name}] starting container")
    prewarm(c, not no_prewarm)
    try:
        if command:
            env = provision.engine_env(provision.load_state(c))
            argv = command[1:] if command[0] == "--" else command
            code = containers.exec_stream(dc, c, argv, env=env)
        else:
            code = containers.shell(c)
    finally:
        if containers.stop_if_idle(dc, c):
            say(f"[{name}] last shell closed: container stopped")
    raise typer.Exit(code)


def list_(
    all_users: Annotated[
        bool, typer.Option("--all-users", "-a", help="Every user's containers.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List your containers.

    Example: [bold]mlc list[/] or [bold]mlc list --json[/]
    """
    from mlc import run
    from mlc.cli.listing import show_containers

    found = containers.mine(containers.client(), host.current_user(), all_users)
    workers = {c.docker_name: run.worker_status(c) for c in found}
    show_containers(found, workers, as_json, all_users)


def start(name: NameArg, no_prewarm: NoPrewarmOpt = False) -> None:
    """Start NAME in the background; it keeps running until `mlc stop`. Its engine worker
    starts loading the installed model at once (unless --no-prewarm or MLC_PREWARM=0).

    Example: [bold]mlc start sd[/]
    """
    c = containers.find(containers.client(), name, host.current_user())
    if not containers.start(c, keep_running=True):
        say(f"[{name}] was already running")
    prewarm(c, not no_prewarm)
    show(f"[{name}] running. Open a shell with: mlc open {name}")


def prewarm_cmd(
    name: NameArg,
    on: Annotated[
        bool, typer.Option("--on", help="From now on, pre-warm when NAME starts (the default).")
    ] = False,
    off: Annotated[
        bool, typer.Option("--off", help="From now on, leave the engine worker cold until used.")
    ] = False,
) -> None:
    """Load NAME's installed model in its engine worker now; with --on or --off, whether
    `mlc start`, `mlc open` and `mlc setup` do it (set at create, --no-prewarm: off).

    Example: [bold]mlc prewarm sd[/] or [bold]mlc prewarm sd --off[/]
    """
    from mlc import errors, run

    if on and off:
        raise errors.UsageError("--on and --off exclude each other")
    c = containers.find(containers.client(), name, host.current_user())
    if on or off:
        run.set_prewarm(c, on)
        when = "loads the model when it starts" if on else "stays cold until first used"
        show(f"[{name}] pre-warm {'on' if on else 'off'}: the engine worker {when}")
        return
    if c.status != "running":
        raise errors.MlcError(f"'{name}' is not running", hint=f"start it with: mlc start {name}")
    model = run.prewarm(c, now=True)
    if model:
        show(f"[{name}] engine worker: loading {model} in the background")
        return
    held = warmpath.describe(run.worker_status(c))
    if held != "-":
        show(f"[{name}] engine worker: {held} (nothing to load)")
        return
    raise errors.MlcError(f"no model is set up in '{name}'", hint=f"run: mlc setup {name}")


def prewarm(c: containers.Container, asked: bool) -> None:
    """Pre-warm C's engine worker (see :func:`mlc.run.prewarm`) and say so; best effort: a
    failure is one warning line, never the command's failure."""
    from mlc import errors, run

    try:
        model = run.prewarm(c, asked)
    except Exception as exc:  # noqa: BLE001 - `mlc txt2img` starts the worker anyway
        say(f"[{c.name}] warning: engine worker not pre-warmed: {errors.describe(exc)[0]}")
        return
    if model:
        say(f"[{c.name}] engine worker: loading {model} in the background")


def stop(name: NameArg, force: ForceOpt = False) -> None:
    """Stop NAME; every process in it ends. A stopped container stays as it is (exit 0).

    Example: [bold]mlc stop sd -f[/]
    """
    c = containers.find(containers.client(), name, host.current_user())
    if c.status != "running":
        say(f"[{name}] is not running")
        return
    confirm(f"Stop container '{name}'? All its processes will end.", force)
    containers.stop(c)
    show(f"[{name}] stopped")


def remove(name: NameArg, force: ForceOpt = False) -> None:
    """Remove NAME. Its workspace, data and models folders are kept.

    Example: [bold]mlc remove sd[/]
    """
    dc = containers.client()
    c = containers.find(dc, name, host.current_user())
    if c.status == "running":
        confirm(f"Container '{name}' is running. Stop and remove it?", force)
        containers.stop(c)
    else:
        confirm(f"Remove container '{name}'?", force)
    kept = ", ".join(p for p in (c.workspace, c.data, c.models) if p not in ("", "-"))
    containers.remove(dc, c)
    show(f"[{name}] removed; kept {kept}")


def stats(as_json: JsonOpt = False) -> None:
    """CPU, memory and GPU memory of your running containers.

    Example: [bold]mlc stats[/]
    """
    from rich.markup import escape

    from mlc import run
    from mlc.progress import human_size

    found = containers.mine(containers.client(), host.current_user())
    running = [c for c in found if c.status == "running"]
    rows = containers.stats(running)
    for r, c in zip(rows, running, strict=True):
        r.worker = run.worker_status(c)
    if as_json:
        show_json([r.__dict__ for r in rows])
        return
    if not rows:
        say("no running containers")
        return
    grid = table("NAME", "CPU %", "MEM USAGE / LIMIT", "GPU MEM", "PIDS", "WORKER")
    for r in rows:
        gpu = (
            f"{human_size(r.gpu_mem_used)} / {human_size(r.gpu_mem_total)}"
            if r.gpu_mem_total
            else "-"
        )
        grid.add_row(
            escape(f"[{r.name}]"),
            f"{r.cpu_percent:.1f}",
            f"{human_size(r.mem_used)} / {human_size(r.mem_limit)}",
            gpu,
            str(r.pids),
            warmpath.describe(r.worker),
        )
    show_table(grid)
