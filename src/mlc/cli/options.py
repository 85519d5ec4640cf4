"""Option types shared by several `mlc` commands, defined once, and the help panels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlc.containers.labels import validate_name

CONTAINERS = "Containers"
MODELS = "Models and generation"
IMAGES = "Images"


def _checked_name(value: str) -> str:
    """A NAME argument, checked before anything asks Docker (`mlc txt2img -h` passes)."""
    if value not in ("-h", "--help"):
        validate_name(value)
    return value


NameArg = Annotated[
    str,
    typer.Argument(help="Container name, as given to `mlc create`.", callback=_checked_name),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", "-Y", "--yes", help="Do not ask.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        "--architecture",
        help="Catalog architecture, e.g. CUDA_ADA.",
        rich_help_panel="Image",
    ),
]
CatalogOpt = Annotated[
    str | None,
    typer.Option("--catalog", help="Extra catalog (YAML or AIME CSV).", rich_help_panel="Image"),
]
NoPrewarmOpt = Annotated[
    bool,
    typer.Option(
        "--no-prewarm",
        help="Do not load the installed model in the engine worker now (also MLC_PREWARM=0).",
    ),
]

FOLDERS = "Folders"  # the help panel of the folder options
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", "-d", "--data_dir", help="Host folder at /data.", rich_help_panel=FOLDERS
    ),
]
ModelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--models", "-m", "--models_dir", help="Host folder at /models.", rich_help_panel=FOLDERS
    ),
]
