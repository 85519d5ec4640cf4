"""`mlc update-sys | images`: the image catalog."""

from __future__ import annotations

from typing import Annotated

import typer

from mlc import host
from mlc.cli.options import ArchOpt, CatalogOpt, JsonOpt
from mlc.cli.output import show, show_json, show_table, table


def update_sys(
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="Catalog source (default: MLC_CATALOG_URL or the built-in source)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "-f",
            "-Y",
            "--yes",
            help="Download the catalog again and rewrite it, even when the source says it is "
            "unchanged.",
        ),
    ] = False,
) -> None:
    """Update the image catalog from its source (an unchanged source is not downloaded again).

    Example: [bold]mlc update-sys[/]
    """
    from mlc import catalog

    done = catalog.update(url, force=force)
    if done.changed:
        show(f"catalog updated: {done.count} images, stored in {done.path}")
    else:
        show(f"catalog is up to date: {done.count} images in {done.path}")


def images(
    framework: Annotated[str | None, typer.Argument(help="Only this framework.")] = None,
    arch: ArchOpt = None,
    catalog_path: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What can be created on this host's architecture; PINNED: the digest an entry is pinned to.

    Example: [bold]mlc images Pytorch[/]
    """
    from mlc import catalog

    arch_name = host.detect_arch(arch)
    entries = [
        e
        for e in catalog.load(catalog_path).for_arch(arch_name)
        if not framework or e.framework.lower() == framework.lower()
    ]
    if as_json:
        show_json([e.as_dict() for e in entries])
        return
    grid = table(
        "FRAMEWORK", "VERSION", "CUDA", "PYTHON", "TORCH", "DRIVER", "PINNED", "IMAGE",
        title=f"images for {arch_name}",
    )  # fmt: skip
    for e in entries:
        driver = f">= {e.min_driver}" if e.min_driver else "-"
        grid.add_row(
            e.framework, e.version, e.cuda or "-", e.python or "-", e.torch or "-", driver,
            short_digest(e.pin), e.image.split("@")[0],
        )  # fmt: skip
    show_table(grid)


def short_digest(digest: str | None) -> str:
    """A pin as the PINNED column shows it: ``sha256:`` and 12 hex digits, or ``-``."""
    return digest[:19] if digest else "-"
