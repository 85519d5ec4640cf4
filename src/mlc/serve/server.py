"""Listening: the safety rule, the socket, uvicorn; ``mlc serve NAME`` on the host and the
in-container entry (``mlc-txt2img --serve``, ``python -m mlc.serve``).

The socket is bound here (a port in use is one line, ``--port 0`` takes a free one and the
banner names it); uvicorn serves the app on it. Ctrl-C, SIGTERM and SIGHUP cancel every job
(the running one after its current step), then the server stops and the command ends as an
interrupted mlc command does (exit 130, 143, 129).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mlc.errors import Interrupted, MlcError, UsageError, report
from mlc.serve import DEFAULT_PORT, WEB_REQUIREMENTS, require_web
from mlc.serve.a1111 import Limits
from mlc.serve.backends import Backend, ContainerBackend, WorkerBackend
from mlc.serve.options import ServeOptions, check, credentials

Say = Callable[[str], None]
IN_CONTAINER_PROG = "mlc-txt2img --serve"
IN_CONTAINER_INSTALL = (
    "`mlc setup NAME MODEL --serve` on the host, or here: pip install "
    + " ".join(f"'{r}'" for r in WEB_REQUIREMENTS)
)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on HOST:PORT (PORT 0: a free one); one line when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise MlcError(
                f"port {port} on {host} is in use", hint="pick another with --port (0: any free)"
            ) from None
        raise MlcError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def serve(backend: Backend, options: ServeOptions, say: Say = _stderr) -> int:
    """Serve BACKEND with OPTIONS until stopped (Ctrl-C, SIGTERM, SIGHUP); closes BACKEND."""
    try:
        check(options)
        require_web()
        import uvicorn

        from mlc.serve.app import create_app
        from mlc.serve.jobs import Jobs

        sock = bind(options.host, options.port)
        with sock:
            options.port = sock.getsockname()[1]
            jobs = Jobs(backend)
            try:
                app = create_app(backend, options, jobs)
                config = uvicorn.Config(
                    app,
                    log_level="warning",
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=10,
                )
                server = _server_class(uvicorn)(config, jobs)
                _banner(backend, options, say)
                server.run(sockets=[sock])
            finally:
                jobs.close()
    finally:
        backend.close()
    return 0


def _banner(backend: Backend, options: ServeOptions, say: Say) -> None:
    where = "" if options.save else "; images are not kept (a request may ask: save_images)"
    say(
        f"mlc serve: {backend.label} at {options.url} (AUTOMATIC1111 API: {options.url}"
        f"/sdapi/v1, docs: {options.url}/docs){where}; Ctrl-C stops it"
    )
    if not options.protected:
        say("note: no --api-auth or --api-token: every user and program on this machine can use it")


def _server_class(uvicorn: Any) -> Any:
    class Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        """uvicorn's server; a stop signal cancels the jobs first, so requests end at once."""

        def __init__(self, config: Any, jobs: Any) -> None:
            super().__init__(config)
            self.jobs = jobs

        def handle_exit(self, sig: int, frame: Any) -> None:
            threading.Thread(target=self.jobs.close, daemon=True).start()
            super().handle_exit(sig, frame)

    return Server


def serve_container(name: str, options: ServeOptions, say: Say = _stderr) -> int:
    """``mlc serve NAME``: the caller's container NAME's worker, served from the host."""
    check(options)
    backend = ContainerBackend(name)
    if options.outdir:
        from mlc import paths

        options.outdir = paths.output_path(backend.mounts, options.outdir, name)
    return serve(backend, options, say)


# -- in the container --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage)
        raise UsageError(message)


def build_parser(prog: str = IN_CONTAINER_PROG) -> argparse.ArgumentParser:
    """The in-container server's flags (``mlc serve NAME`` has the same ones)."""
    p = _Parser(
        prog=prog,
        description="Serve this user's warm engine worker with AUTOMATIC1111's web API "
        "(/sdapi/v1/txt2img, ...). See docs/api.md.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument("--api-auth", help="USER:PASS[,USER:PASS]: HTTP Basic ($MLC_SERVE_AUTH)")
    p.add_argument("--api-token", help="a bearer token ($MLC_SERVE_TOKEN)")
    p.add_argument(
        "--no-save", action="store_true", help="keep no image unless a request asks (save_images)"
    )
    p.add_argument("--outdir", help="where saved images go (the engine's default)")
    limits = Limits()
    p.add_argument("--max-pixels", type=int, default=limits.pixels, help="per image (0: none)")
    p.add_argument("--max-steps", type=int, default=limits.steps, help="per request (0: none)")
    p.add_argument("--max-images", type=int, default=limits.images, help="per request (0: none)")
    return p


def options_from(args: argparse.Namespace) -> ServeOptions:
    """ServeOptions from the in-container flags."""
    users, token = credentials(args.api_auth, args.api_token)
    return ServeOptions(
        host=args.host,
        port=args.port,
        users=users,
        token=token,
        save=not args.no_save,
        outdir=args.outdir,
        limits=Limits(args.max_pixels or None, args.max_steps or None, args.max_images or None),
    )


@contextlib.contextmanager
def _terminating() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the server as Ctrl-C does."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None, prog: str = IN_CONTAINER_PROG) -> int:
    """The in-container server; its exit code (errors: one line through mlc.errors)."""
    parser = build_parser(prog)
    try:
        with _terminating():
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
            options = options_from(args)
            check(options)
            require_web(IN_CONTAINER_INSTALL)
            return serve(WorkerBackend(), options)
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except (Exception, KeyboardInterrupt) as exc:
        return report(exc, "mlc serve")
