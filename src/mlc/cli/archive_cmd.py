"""`mlc export | import`: a container as one file, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlc import containers, host
from mlc.cli import output
from mlc.cli.options import FOLDERS, DataOpt, ModelsOpt, NameArg
from mlc.cli.output import say, show
from mlc.containers.labels import DEFAULT_ULIMITS, validate_name

# Each command imports what it runs on (the Docker SDK, rich) itself: `mlc --help` starts
# without them.

CARRY = "What the file carries"


def export(
    name: NameArg,
    file: Annotated[Path, typer.Argument(help="The file to write (a new one; .gz: compressed).")],
    with_workspace: Annotated[
        bool,
        typer.Option("--with-workspace", help="Also its workspace's files.", rich_help_panel=CARRY),
    ] = False,
    with_data: Annotated[
        bool,
        typer.Option("--with-data", help="Also its data folder's files.", rich_help_panel=CARRY),
    ] = False,
    with_models: Annotated[
        bool,
        typer.Option(
            "--with-models", help="Also its models folder's files.", rich_help_panel=CARRY
        ),
    ] = False,
    with_base: Annotated[
        bool,
        typer.Option(
            "--with-base",
            help="Also the layers of the image it was made from (for a host that cannot pull "
            "that image).",
            rich_help_panel=CARRY,
        ),
    ] = False,
) -> None:
    """Write NAME to FILE: what was installed in it (as an image layer), its labels, mounts
    and model state. Its workspace, data and models files only with --with-....

    Example: [bold]mlc export sd sd.mlc.tar.gz[/], then [bold]mlc import sd.mlc.tar.gz[/]
    """
    dc = containers.client()
    c = containers.find(dc, name, host.current_user())
    carried = ("workspace",) * with_workspace + ("data",) * with_data + ("models",) * with_models
    from mlc import archive
    from mlc.progress import RichProgress, human_size

    with RichProgress(console=output.err, transient=True) as progress:
        done = archive.export_container(
            dc, c, file, with_folders=carried, with_base=with_base, progress=progress
        )
    what = ["every layer of its image" if with_base else f"its changes above {done.base}"]
    show(
        f"[{name}] exported to {done.path} ({human_size(done.size)}, sha256 {done.sha256}): "
        + ", ".join(what + [f"its {f} files" for f in carried])
    )


def _new_name(value: str | None) -> str | None:
    if value is not None and value not in ("-h", "--help"):
        validate_name(value)
    return value


def import_(
    file: Annotated[Path, typer.Argument(help="A file written by `mlc export`.")],
    new_name: Annotated[
        str | None,
        typer.Argument(
            help="The new container's name (default: the exported one).",
            callback=_new_name,
            show_default=False,
        ),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            "--workspace_dir",
            help="Host folder at /workspace (default: the exported one's, under your "
            "home when it was under the exporter's).",
            rich_help_panel=FOLDERS,
        ),
    ] = None,
    data: DataOpt = None,
    models: ModelsOpt = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            "-g",
            "--num_gpus",
            help="As for create (default: all, or none for an export without GPUs).",
        ),
    ] = None,
    ulimit: Annotated[
        str, typer.Option("--ulimit", envvar="MLC_ULIMITS", help="As for create.")
    ] = DEFAULT_ULIMITS,
    no_forward: Annotated[
        bool,
        typer.Option(
            "--no-forward-network", help="Do not pass the host's proxy settings and CA bundle in."
        ),
    ] = False,
) -> None:
    """Make a container from FILE (written by `mlc export`) for you, as NEW_NAME or under its
    exported name; an existing container or file is never replaced.

    Example: [bold]mlc import sd.mlc.tar.gz sd2 -w ~/sd2[/]
    """  # fmt: skip
    from mlc import archive
    from mlc.progress import RichProgress

    with RichProgress(console=output.err, transient=True) as progress:
        done = archive.import_container(
            containers.client(), file, new_name, workspace=workspace, data=data, models=models,
            gpus=gpus, ulimits=ulimit, forward_network=not no_forward, progress=progress,
        )  # fmt: skip
    c = done.container
    for note in done.notes:
        say(note)
    unpacked = f"; unpacked its {', '.join(done.unpacked)}" if done.unpacked else ""
    show(
        f"[{c.name}] imported from {file}: {c.framework} {c.version}, GPUs {c.gpus}, "
        f"workspace {c.workspace}{unpacked}. Open it with: mlc open {c.name}"
    )
