"""The `mlc` Typer app: the root options and every command, assembled from their modules."""

from __future__ import annotations

from typing import Annotated

import typer

from mlc import __version__
from mlc.cli import archive_cmd, containers_cmd, images_cmd, models_cmd, serve_cmd
from mlc.cli.options import CONTAINERS, IMAGES, MODELS
from mlc.cli.output import show
from mlc.cli.signals import interruptible

HELP = "Per-user GPU containers from pinned images, one-shot model setup, and Stable Diffusion."

app = typer.Typer(
    name="mlc",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        show(f"mlc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-v", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            metavar="NAME",
            help="Docker context to use (as `docker --context`; wins over DOCKER_HOST and "
            "DOCKER_CONTEXT). See `docker context ls`.",
        ),
    ] = None,
) -> None:
    """Per-user GPU containers from pinned images, one-shot model setup, and Stable Diffusion.

    Example: [bold]mlc create sd Pytorch 2.9.1 -w ~/sd[/] then [bold]mlc open sd[/].
    """
    from mlc.containers import remote  # the Docker SDK: only for a command, never for --help

    remote.use_context(context)


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

# (name, function, panel, context settings), in the order `mlc -h` lists them.
COMMANDS = [
    ("create", containers_cmd.create, CONTAINERS, None),
    ("open", containers_cmd.open_, CONTAINERS, {"allow_interspersed_args": False}),
    ("list", containers_cmd.list_, CONTAINERS, None),
    ("start", containers_cmd.start, CONTAINERS, None),
    ("stop", containers_cmd.stop, CONTAINERS, None),
    ("prewarm", containers_cmd.prewarm_cmd, CONTAINERS, None),
    ("remove", containers_cmd.remove, CONTAINERS, None),
    ("stats", containers_cmd.stats, CONTAINERS, None),
    ("export", archive_cmd.export, CONTAINERS, None),
    ("import", archive_cmd.import_, CONTAINERS, None),
    ("setup", models_cmd.setup, MODELS, None),
    ("models", models_cmd.models_, MODELS, None),
    ("txt2img", models_cmd.txt2img, MODELS, PASS_THROUGH),
    ("serve", serve_cmd.serve, MODELS, None),
    ("update-sys", images_cmd.update_sys, IMAGES, None),
    ("images", images_cmd.images, IMAGES, None),
]
for _name, _func, _panel, _settings in COMMANDS:
    app.command(_name, rich_help_panel=_panel, context_settings=_settings)(interruptible(_func))
