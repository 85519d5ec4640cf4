"""The `mlc` command line: one thin function per command over the library."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlc import __version__, catalog, containers, host
from mlc.errors import MlcError

app = typer.Typer(
    name="mlc",
    help="Per-user GPU containers from pinned images, one-shot model setup, and Stable Diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

CONTAINERS = "Containers"
MODELS = "Models and generation"
IMAGES = "Images"

NameArg = Annotated[str, typer.Argument(help="Container name, as given to `mlc create`.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", "-Y", "--yes", help="Do not ask.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _say(message: str) -> None:
    err.print(message, highlight=False, markup=False, soft_wrap=True)


def _show(message: str) -> None:
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def _docker():
    return containers.client()


def _confirm(question: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise MlcError(f"{question} Not confirmed", hint="stdin is not a terminal: add -f")
    if not typer.confirm(question, default=False):
        raise MlcError("cancelled", exit_code=1)


def _version(value: bool) -> None:
    if value:
        _show(f"mlc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-v", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Per-user GPU containers from pinned images, one-shot model setup, and Stable Diffusion.

    Example: [bold]mlc create sd Pytorch 2.9.1 -w ~/sd[/] then [bold]mlc open sd[/].
    """


@app.command(rich_help_panel=CONTAINERS)
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
            rich_help_panel="Folders",
        ),
    ] = Path("~/workspace"),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", "--data_dir", help="Host folder at /data.", rich_help_panel="Folders"
        ),
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            "--models",
            "-m",
            "--models_dir",
            help="Host folder at /models.",
            rich_help_panel="Folders",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            "-g",
            "--num_gpus",
            help="all, a count, ids (0,1) or none.",
            rich_help_panel="GPUs and limits",
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            "--architecture",
            help="Catalog architecture, e.g. CUDA_ADA.",
            rich_help_panel="Image",
        ),
    ] = None,
    ulimit: Annotated[
        str,
        typer.Option(
            "--ulimit",
            envvar="MLC_ULIMITS",
            help="NAME=SOFT[:HARD],... or none.",
            rich_help_panel="GPUs and limits",
        ),
    ] = containers.DEFAULT_ULIMITS,
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
    catalog_path: Annotated[
        str | None,
        typer.Option(
            "--catalog", help="Extra catalog (YAML or AIME CSV).", rich_help_panel="Image"
        ),
    ] = None,
) -> None:
    """Create a container NAME from the catalog image FRAMEWORK VERSION.

    Example: [bold]mlc create sd Pytorch 2.9.1 -w ~/sd -m ~/models[/]
    """
    containers.validate_name(name)
    containers.gpu_requests(gpus or "all")  # bad -g or --ulimit: fail before any pull
    containers.parse_ulimits(ulimit)
    arch_name = host.detect_arch(arch)
    entry = catalog.load(catalog_path).resolve(framework, version, arch_name)
    user = host.current_user()
    spec = containers.CreateSpec(
        name=name,
        entry=entry,
        arch=arch_name,
        user=user,
        workspace=containers.resolve_dir(workspace, "workspace"),
        data=containers.resolve_dir(data, "data") if data else None,
        models=containers.resolve_dir(models, "models") if models else None,
        gpus=gpus or "all",
        gpus_explicit=gpus is not None,
        ulimits=ulimit,
        forward_network=not no_forward,
        build=build,
        ulimits_explicit=ulimit != containers.DEFAULT_ULIMITS,
    )
    c = containers.create(_docker(), spec, _say)
    _show(
        f"[{name}] ready: {entry.framework} {entry.version} ({entry.reference}), "
        f"GPUs {spec.gpus}, workspace {spec.workspace}. Open it with: mlc open {name}"
    )
    del c


@app.command(
    "open", rich_help_panel=CONTAINERS, context_settings={"allow_interspersed_args": False}
)
def open_(
    name: NameArg,
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run instead of a shell (after --).")
    ] = None,
) -> None:
    """Open a shell in NAME as you, in /workspace (or run COMMAND and exit with its code).

    The container is started if needed and stopped when the last shell it opened exits,
    unless it was started with `mlc start`.

    Example: [bold]mlc open sd[/] or [bold]mlc open sd -- python train.py[/]
    """
    dc = _docker()
    c = containers.find(dc, name, host.current_user())
    if containers.start(c):
        _say(f"[{name}] starting container")
    try:
        if command:
            from mlc import provision

            env = provision.engine_env(provision.load_state(c))
            code = containers.exec_stream(
                dc, c, command[1:] if command[0] == "--" else command, env=env
            )
        else:
            code = containers.shell(c)
    finally:
        if containers.stop_if_idle(dc, c):
            _say(f"[{name}] last shell closed: container stopped")
    raise typer.Exit(code)


@app.command("list", rich_help_panel=CONTAINERS)
def list_(
    all_users: Annotated[
        bool, typer.Option("--all-users", "-a", help="Every user's containers.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List your containers.

    Example: [bold]mlc list[/] or [bold]mlc list --json[/]
    """
    rows = [
        containers.describe(c) for c in containers.mine(_docker(), host.current_user(), all_users)
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        _say("no containers; create one with: mlc create NAME FRAMEWORK VERSION")
        return
    table = Table("NAME", "FRAMEWORK", "STATUS", "GPUS", "WORKSPACE", box=None)
    if all_users:
        table.add_column("USER")
    for r in rows:
        cells = [
            escape(f"[{r['name']}]"),
            f"{r['framework']}-{r['version']}".rstrip("-"),
            r["status"],
            r["gpus"],
            r["workspace"],
        ]
        table.add_row(*cells, *([r["user"]] if all_users else []))
    out.print(table)


@app.command(rich_help_panel=CONTAINERS)
def start(name: NameArg) -> None:
    """Start NAME in the background; it keeps running until `mlc stop`.

    Example: [bold]mlc start sd[/]
    """
    c = containers.find(_docker(), name, host.current_user())
    if not containers.start(c, keep_running=True):
        _say(f"[{name}] was already running")
    _show(f"[{name}] running. Open a shell with: mlc open {name}")


@app.command(rich_help_panel=CONTAINERS)
def stop(name: NameArg, force: ForceOpt = False) -> None:
    """Stop NAME; every process in it ends.

    Example: [bold]mlc stop sd -f[/]
    """
    c = containers.find(_docker(), name, host.current_user())
    if c.status != "running":
        raise MlcError(f"container '{name}' is not running")
    _confirm(f"Stop container '{name}'? All its processes will end.", force)
    containers.stop(c)
    _show(f"[{name}] stopped")


@app.command(rich_help_panel=CONTAINERS)
def remove(name: NameArg, force: ForceOpt = False) -> None:
    """Remove NAME. Its workspace, data and models folders are kept.

    Example: [bold]mlc remove sd[/]
    """
    dc = _docker()
    c = containers.find(dc, name, host.current_user())
    info = containers.describe(c)
    if c.status == "running":
        _confirm(f"Container '{name}' is running. Stop and remove it?", force)
        containers.stop(c)
    else:
        _confirm(f"Remove container '{name}'?", force)
    containers.remove(dc, c)
    kept = ", ".join(
        p for p in (info["workspace"], info["data"], info["models"]) if p not in ("", "-")
    )
    _show(f"[{name}] removed; kept {kept}")


@app.command(rich_help_panel=CONTAINERS)
def stats(as_json: JsonOpt = False) -> None:
    """CPU, memory and GPU memory of your running containers.

    Example: [bold]mlc stats[/]
    """
    running = [c for c in containers.mine(_docker(), host.current_user()) if c.status == "running"]
    rows = containers.stats(running)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    if not rows:
        _say("no running containers")
        return
    table = Table("NAME", "CPU %", "MEM USAGE / LIMIT", "GPU MEM", "PIDS", box=None)
    for r in rows:
        gpu = f"{_size(r.gpu_mem_used)} / {_size(r.gpu_mem_total)}" if r.gpu_mem_total else "-"
        table.add_row(
            escape(f"[{r.name}]"),
            f"{r.cpu_percent:.1f}",
            f"{_size(r.mem_used)} / {_size(r.mem_limit)}",
            gpu,
            str(r.pids),
        )
    out.print(table)


def _size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return str(n)


@app.command(rich_help_panel=MODELS)
def setup(
    name: NameArg,
    recipe: Annotated[
        str, typer.Argument(help="Model recipe (see `mlc models`).")
    ] = "stable-diffusion-v1-5",
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="Host folder for the "
            "weights (default: the container's models "
            "mount, else its workspace).",
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Download from this URL instead.")
    ] = None,
    from_archive: Annotated[
        Path | None,
        typer.Option("--from-archive", help="Install from a local archive (air-gapped hosts)."),
    ] = None,
    keep_archive: Annotated[
        bool, typer.Option("--keep-archive", help="Keep the downloaded archive.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch again even when installed.")
    ] = False,
) -> None:
    """Make NAME ready to generate: packages, the bundled engine, and the RECIPE's weights.

    Safe to re-run: what is done is skipped.

    Example: [bold]mlc setup sd[/] or [bold]mlc setup sd demo[/]
    """
    from mlc import fetch, models, recipes

    rec = recipes.get_recipe(recipe)
    dc = _docker()
    c = containers.find(dc, name, host.current_user())
    started = containers.start(c)
    _say(f"[{name}] {rec.name}: {rec.description}")
    if rec.licence:
        _say(f"licence: {rec.licence}")
    try:
        with fetch.RichProgress(console=err) as bar:
            result = models.setup(
                dc,
                c,
                rec,
                models_dir=models_dir,
                url=url,
                from_archive=from_archive,
                keep_archive=keep_archive,
                force=force,
                progress=bar,
                say=_say,
            )
    finally:
        if started:
            containers.stop_if_idle(dc, c)
    got = result.installed
    if got.skipped:
        _say(f"{rec.name} is already installed in {got.models_dir}")
    if got.sha256_recorded:
        _say(f"recorded sha256 {got.sha256} (the recipe publishes none)")
    use = "--tiny_vae" if rec.role == "tiny_vae" else '--prompt "..."'
    _show(
        f"[{name}] ready: {rec.name} at {result.ckpt_inside}. "
        f"Generate with: mlc txt2img {name} {use}"
    )


@app.command("models", rich_help_panel=MODELS)
def models_(
    models_dir: Annotated[
        list[Path] | None, typer.Option("--models-dir", help="Also look here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The model recipes, and where each is installed.

    Example: [bold]mlc models[/]
    """
    from mlc import models

    dirs = list(models_dir or [])
    try:
        for c in containers.mine(_docker(), host.current_user()):
            dirs += [outside for outside, _ in models.mounts_of(c)]
    except MlcError:
        pass  # without Docker, list the recipes and the folders given
    rows = models.catalogue(dirs)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "description": r.description,
                        "source": r.source,
                        "size": r.size,
                        "ckpt": r.ckpt,
                        "licence": r.licence,
                        "installed": [str(d) for d in where],
                    }
                    for r, where in rows
                ],
                indent=2,
            )
        )
        return
    table = Table("RECIPE", "DESCRIPTION", "SIZE", "INSTALLED IN", box=None)
    for r, where in rows:
        table.add_row(
            r.name,
            r.description,
            _size(r.size) if r.size else "-",
            "\n".join(map(str, where)) or "-",
        )
    out.print(table)


@app.command(
    rich_help_panel=MODELS,
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def txt2img(ctx: typer.Context, name: NameArg) -> None:
    """Generate images in NAME with the bundled engine; the classic txt2img flags pass through.

    --ckpt defaults to the model `mlc setup` installed; images land in the workspace. The
    model stays loaded in a worker inside the container between calls (it exits after
    --idle SECONDS, default 600 or $MLC_WORKER_IDLE); --no-worker runs one-shot;
    --stop-worker stops the worker.

    Example: [bold]mlc txt2img sd --prompt "a photo of a pink cube" --plms --n_samples 1[/]
    """
    import uuid

    from mlc import provision

    if name in ("-h", "--help"):
        _show(ctx.get_help())
        raise typer.Exit()
    flags = list(ctx.args)
    one_shot = "--no-worker" in flags
    flags = [f for f in flags if f != "--no-worker"]
    dc = _docker()
    c = containers.find(dc, name, host.current_user())
    started = containers.start(c)
    try:
        state = provision.load_state(c)
        if "engine" not in state:
            raise MlcError(f"the engine is not set up in '{name}'", hint=f"run: mlc setup {name}")
        from mlc.models import translate_paths

        flags = translate_paths(c, flags)
        if state.get("ckpt") and not any(f == "--ckpt" or f.startswith("--ckpt=") for f in flags):
            flags = ["--ckpt", state["ckpt"], *flags]
        python = state.get("python", "python3")
        if not state["engine"].get("worker"):  # an engine copied before the warm worker
            one_shot = True
        module = "mlc.engine.txt2img" if one_shot else "mlc.engine.client"
        tag = uuid.uuid4().hex
        env = {"PYTHONUNBUFFERED": "1", "MLC_REQUEST_TAG": tag, **provision.engine_env(state)}
        if os.environ.get("MLC_WORKER_IDLE"):
            env["MLC_WORKER_IDLE"] = os.environ["MLC_WORKER_IDLE"]
        try:
            code = containers.exec_stream(dc, c, [python, "-m", module, *flags], env=env)
        except KeyboardInterrupt:
            if not one_shot:
                _cancel_request(c, python, tag)
            raise
    finally:
        if started:
            containers.stop_if_idle(dc, c)
    raise typer.Exit(code)


def _cancel_request(c: containers.Container, python: str, tag: str) -> None:
    """Ctrl-C: docker exec does not pass signals on, so ask the worker to cancel the request."""
    import contextlib

    with contextlib.suppress(Exception):  # best effort while interrupted
        c.exec_run([python, "-m", "mlc.engine.client", "--cancel", tag], user=containers.user_of(c))


@app.command("update-sys", rich_help_panel=IMAGES)
def update_sys(
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="Catalog source (default: MLC_CATALOG_URL or the built-in source)."
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Update the image catalog from its source.

    Example: [bold]mlc update-sys[/]
    """
    del force
    path, count = catalog.update(url)
    _show(f"catalog updated: {count} images, stored in {path}")


@app.command(rich_help_panel=IMAGES)
def images(
    framework: Annotated[str | None, typer.Argument(help="Only this framework.")] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", "--architecture", help="Catalog architecture.")
    ] = None,
    catalog_path: Annotated[str | None, typer.Option("--catalog", help="Extra catalog.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What can be created on this host's architecture.

    Example: [bold]mlc images Pytorch[/]
    """
    arch_name = host.detect_arch(arch)
    entries = [
        e
        for e in catalog.load(catalog_path).for_arch(arch_name)
        if not framework or e.framework.lower() == framework.lower()
    ]
    if as_json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    table = Table(
        "FRAMEWORK",
        "VERSION",
        "CUDA",
        "PYTHON",
        "TORCH",
        "DRIVER",
        "IMAGE",
        box=None,
        title=f"images for {arch_name}",
    )
    for e in entries:
        driver = f">= {e.min_driver}" if e.min_driver else "-"
        table.add_row(
            e.framework,
            e.version,
            e.cuda or "-",
            e.python or "-",
            e.torch or "-",
            driver,
            e.reference,
        )
    out.print(table)


# -- entry points ------------------------------------------------------------------------------

_SHORT_WITH_VALUE = re.compile(r"^(-[wdmg])=(.*)$")


def normalise(argv: list[str]) -> list[str]:
    """Accept AIME's spellings: `-w=DIR` as `-w DIR`."""
    fixed: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return fixed + argv[i:]
        if arg == "-arch" or arg.startswith("-arch="):  # AIME v2's single-dash long option
            arg = "--arch" + arg[5:]
        m = _SHORT_WITH_VALUE.match(arg)
        fixed += [m.group(1), m.group(2)] if m else [arg]
    return fixed


def _is_usage_error(exc: Exception) -> bool:
    """Click's ClickException family (bad options, missing arguments), by duck typing."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def main(argv: list[str] | None = None, prefix: list[str] | None = None) -> None:
    """Run mlc; every MlcError becomes one line on stderr and a non-zero exit."""
    args = normalise((prefix or []) + list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=args, prog_name="mlc", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except MlcError as exc:
        err.print(f"mlc: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("mlc: interrupted")
        sys.exit(130)
    except Exception as exc:  # docker/requests errors we did not foresee: still one line
        import docker.errors

        if _is_usage_error(exc):  # typer vendors click: its exceptions are not importable
            if not exc.format_message():  # `mlc` alone: the help was shown
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} -h`)" if ctx else ""
            err.print(
                f"mlc: error: {exc.format_message()}{where}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            sys.exit(exc.exit_code)

        if isinstance(exc, docker.errors.DockerException):
            err.print(f"mlc: error: Docker: {exc}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(1)
        if os.environ.get("MLC_DEBUG"):
            raise
        err.print(
            f"mlc: internal error: {type(exc).__name__}: {exc} (set MLC_DEBUG=1 for details)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        sys.exit(70)


def _verb(verb: str):
    def run() -> None:
        main(prefix=[verb])

    run.__doc__ = f"`mlc-{verb}`: the same as `mlc {verb}`."
    return run


main_create = _verb("create")
main_open = _verb("open")
main_list = _verb("list")
main_start = _verb("start")
main_stop = _verb("stop")
main_remove = _verb("remove")
main_stats = _verb("stats")
main_update_sys = _verb("update-sys")
