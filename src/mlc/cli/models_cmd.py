"""`mlc setup | models | txt2img`: model setup and generation in a container."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlc import containers, host
from mlc.cli import containers_cmd, output
from mlc.cli.options import JsonOpt, NameArg, NoPrewarmOpt
from mlc.cli.output import say, show, show_json, show_table, table
from mlc.errors import MlcError

# Each command imports what it runs on (the Docker SDK, rich) itself: `mlc --help` starts
# without them.


def setup(
    name: NameArg,
    recipe: Annotated[
        str, typer.Argument(help="Model recipe (see `mlc models`).")
    ] = "stable-diffusion-v1-5",
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="Host folder for the weights (default: the container's models mount, else its "
            "workspace).",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Download from this URL instead (skipped when the model is already installed "
            "and verified from this same URL; --force fetches it again).",
        ),
    ] = None,
    from_archive: Annotated[
        Path | None,
        typer.Option("--from-archive", help="Install from a local archive (air-gapped hosts)."),
    ] = None,
    keep_archive: Annotated[
        bool, typer.Option("--keep-archive", help="Keep the downloaded archive.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Fetch again even when installed (from the same --url too)."),
    ] = False,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Also install FastAPI and uvicorn for `mlc-txt2img --serve` in the container "
            "(`mlc serve NAME` on the host needs neither there).",
        ),
    ] = False,
    no_prewarm: NoPrewarmOpt = False,
) -> None:
    """Make NAME ready to generate: packages, the bundled engine, and the RECIPE's weights.

    Safe to re-run: what is done is skipped. At the end the engine worker starts loading the
    model in the background (unless --no-prewarm or MLC_PREWARM=0).

    Example: [bold]mlc setup sd[/] or [bold]mlc setup sd demo[/]
    """
    from mlc import models, recipes, run
    from mlc.progress import RichProgress

    rec = recipes.get_recipe(recipe)
    dc = containers.client()
    c = containers.find(dc, name, host.current_user())
    started = containers.start(c)
    say(f"[{name}] {rec.name}: {rec.description}")
    if rec.licence:
        say(f"licence: {rec.licence}")
    try:
        with RichProgress(console=output.err) as progress:
            result = models.setup(
                dc,
                c,
                rec,
                models_dir=models_dir,
                url=url,
                from_archive=from_archive,
                keep_archive=keep_archive,
                force=force,
                progress=progress,
                serve=serve,
            )
        run.forget(c)  # the fast path plans from what this setup recorded
        containers_cmd.prewarm(c, not no_prewarm)
    finally:
        if started:
            containers.stop_if_idle(dc, c)
    got = result.installed
    if got.skipped:
        origin = f" from {url}; nothing downloaded (--force fetches it again)" if url else ""
        say(f"{rec.name} is already installed in {got.models_dir}{origin}")
    if got.sha256_recorded:
        say(f"recorded sha256 {got.sha256} (the recipe publishes none)")
    use = "--tiny_vae" if rec.role == "tiny_vae" else '--prompt "..."'
    show(
        f"[{name}] ready: {rec.name} at {result.ckpt_inside}. "
        f"Generate with: mlc txt2img {name} {use}"
    )


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
    from mlc.progress import human_size

    dirs = list(models_dir or [])
    try:
        for c in containers.mine(containers.client(), host.current_user()):
            dirs += [outside for outside, _ in c.mounts]
    except MlcError:
        pass  # without Docker, list the recipes and the folders given
    rows = models.catalogue(dirs)
    if as_json:
        show_json(
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
            ]
        )
        return
    grid = table("RECIPE", "DESCRIPTION", "SIZE", "INSTALLED IN")
    for r, where in rows:
        size = human_size(r.size) if r.size else "-"
        grid.add_row(r.name, r.description, size, "\n".join(map(str, where)) or "-")
    show_table(grid)


def txt2img(ctx: typer.Context, name: NameArg) -> None:
    """Generate images in NAME with the bundled engine; the classic txt2img flags pass through.

    --ckpt defaults to the model `mlc setup` installed; images land in the workspace. The
    model stays loaded in a worker inside the container between calls (it exits after
    --idle SECONDS, default 600 or $MLC_WORKER_IDLE); --no-worker runs one-shot;
    --stop-worker stops the worker. --fetch-outputs DIR copies the run's new files to DIR on
    this machine (for a remote engine, whose workspace is on its host). --gpus all|N|ID,ID
    shares the run over the container's GPUs, one engine per GPU (docs/scale-out.md).

    Example: [bold]mlc txt2img sd --prompt "a photo of a pink cube" --plms --n_samples 1[/]
    """
    from mlc import run

    if name in ("-h", "--help") or run.wants_help(ctx.args):  # no container for help
        show(ctx.get_help())
        flags = run.engine_help()
        print(f"\nThe engine's flags (passed on):\n\n{flags}" if flags else "", end="")
        raise typer.Exit()
    raise typer.Exit(run.txt2img(name, ctx.args, note=say))
