"""`mlc serve`: a container's warm engine behind AUTOMATIC1111's web API."""

from __future__ import annotations

from typing import Annotated

import typer

from mlc.cli.options import NameArg
from mlc.serve import DEFAULT_PORT, server
from mlc.serve.a1111 import Limits
from mlc.serve.options import ServeOptions, credentials

_LIMITS = Limits()
_API = "Access"


def serve(
    name: NameArg,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Anything but this machine needs --api-auth or --api-token.",
            rich_help_panel=_API,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port (0: any free one).", rich_help_panel=_API)
    ] = DEFAULT_PORT,
    api_auth: Annotated[
        str | None,
        typer.Option(
            "--api-auth",
            help="USER:PASS[,USER:PASS]: HTTP Basic, as AUTOMATIC1111's flag "
            "(or $MLC_SERVE_AUTH, which other users cannot read in `ps`).",
            rich_help_panel=_API,
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token",
            help="A bearer token (or $MLC_SERVE_TOKEN).",
            rich_help_panel=_API,
        ),
    ] = None,
    no_save: Annotated[
        bool,
        typer.Option(
            "--no-save", help="Keep no image in the workspace unless a request asks (save_images)."
        ),
    ] = False,
    outdir: Annotated[
        str | None,
        typer.Option("--outdir", help="Where saved images go (default: as `mlc txt2img`)."),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Most pixels per image (0: no limit).")
    ] = _LIMITS.pixels or 0,
    max_steps: Annotated[
        int, typer.Option("--max-steps", help="Most steps per request (0: no limit).")
    ] = _LIMITS.steps or 0,
    max_images: Annotated[
        int, typer.Option("--max-images", help="Most images per request (0: no limit).")
    ] = _LIMITS.images or 0,
) -> None:
    """Serve NAME's warm engine with AUTOMATIC1111's web API (/sdapi/v1/txt2img, ...).

    For Open WebUI, webuiapi scripts and other A1111 clients; images are also saved in the
    workspace as `mlc txt2img` saves them. Ctrl-C stops it. See docs/api.md.

    Example: [bold]mlc serve sd[/], then use http://127.0.0.1:7860 as the A1111 base URL
    """
    users, token = credentials(api_auth, api_token)
    options = ServeOptions(
        host=host,
        port=port,
        users=users,
        token=token,
        save=not no_save,
        outdir=outdir,
        limits=Limits(max_pixels or None, max_steps or None, max_images or None),
    )
    raise typer.Exit(server.serve_container(name, options))
