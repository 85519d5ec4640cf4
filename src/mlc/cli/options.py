"""Option types shared by several `mlc` commands, defined once, and the help panels."""

from __future__ import annotations

from typing import Annotated

import typer

CONTAINERS = "Containers"
MODELS = "Models and generation"
IMAGES = "Images"

NameArg = Annotated[str, typer.Argument(help="Container name, as given to `mlc create`.")]
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
