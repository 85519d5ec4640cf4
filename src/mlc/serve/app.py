"""The web app: AUTOMATIC1111's API routes on FastAPI, in front of a job queue and a backend.

Routes (``/sdapi/v1/``): ``POST txt2img``, ``GET samplers``, ``schedulers``, ``sd-models``,
``options`` (and ``POST options``: ``sd_model_checkpoint`` only), ``progress``, ``scripts``
(none), ``POST interrupt``, ``POST refresh-checkpoints``; A1111's other endpoints answer 501
(not supported), anything else 404. The OpenAPI schema is at ``/openapi.json`` and ``/docs``.

Errors are JSON, ``{"error": kind, "detail": one line}``, with their status (401, 404, 413,
422, 400, 501; 500 when the engine failed, 503 when it cannot be reached). Every route, the
documentation too, needs the credentials when the server has some (:class:`Guard`, a plain
ASGI middleware, so that a client's disconnect still reaches the txt2img route, which then
cancels its job).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from mlc import __version__
from mlc.errors import EngineError, MlcError, describe
from mlc.serve import EngineRequest, RequestError, a1111, not_supported
from mlc.serve.backends import Backend
from mlc.serve.jobs import Job, Jobs
from mlc.serve.names import SAMPLERS, SCHEDULERS
from mlc.serve.options import ServeOptions

API = "/sdapi/v1"
A1111_ONLY = {
    "img2img": "img2img",
    "extra-single-image": "upscaling",
    "extra-batch-images": "upscaling",
    "png-info": "png-info",
    "interrogate": "interrogation",
    "skip": "skip (use interrupt)",
    "upscalers": "upscalers",
    "latent-upscale-modes": "upscalers",
    "face-restorers": "face restoration",
    "realesrgan-models": "upscalers",
    "prompt-styles": "styles",
    "embeddings": "embeddings",
    "hypernetworks": "hypernetworks",
    "loras": "LoRAs",
    "create/embedding": "training",
    "create/hypernetwork": "training",
    "train/embedding": "training",
    "train/hypernetwork": "training",
    "unload-checkpoint": "unloading checkpoints (the worker frees its model when idle)",
    "reload-checkpoint": "reloading checkpoints",
    "sd-vae": "VAE selection",
    "memory": "memory statistics",
}
SD_MODEL_KEYS = ("title", "model_name", "hash", "sha256", "filename", "config")
CHALLENGE = 'Basic realm="mlc serve"'
STOPPED = (130, 129, 143)  # the engine's exit codes for a cancelled request
ENGINE_LINE = re.compile(r"^mlc-txt2img: (?:error: )?(.*)$")


def problem(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    """A JSON error response."""
    return JSONResponse({"error": kind, "detail": detail}, status, headers=headers)


class Guard:
    """Plain ASGI middleware: credentials (Basic or Bearer) on every route when the server has
    some, and a cap on the request body's declared size."""

    def __init__(self, app: ASGIApp, options: ServeOptions) -> None:
        self.app, self.options = app, options

    def allowed(self, header: bytes | None) -> bool:
        scheme, _, value = (header or b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and self.options.token:
            return secrets.compare_digest(value.strip().encode(), self.options.token.encode())
        if scheme.lower() == "basic" and self.options.users:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            ok = False
            for u, p in self.options.users:  # every pair compared: no early exit on a match
                same = secrets.compare_digest(user.encode(), u.encode())
                ok |= same & secrets.compare_digest(password.encode(), p.encode())
            return ok
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.options.protected and not self.allowed(headers.get(b"authorization")):
            challenge = (
                {"WWW-Authenticate": 'Basic realm="mlc serve"'} if self.options.users else {}
            )
            response = problem(401, "Unauthorized", "credentials required", challenge)
            await response(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.options.max_body:
            response = problem(413, "TooLarge", f"the body is over {self.options.max_body} bytes")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class State:
    """The models the backend offers and the one requests use by default."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.models: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.refresh()

    def refresh(self) -> list[dict[str, Any]]:
        self.models = self.backend.models()
        names = {m["filename"] for m in self.models}
        if self.current is None or self.current["filename"] not in names:
            default = [m for m in self.models if m.get("default")] or self.models[:1]
            self.current = default[0] if default else None
        return self.models

    def find(self, name: str) -> dict[str, Any]:
        """The model NAME designates (title, name, file or hash, as A1111 matches them)."""
        for key in ("title", "model_name", "filename", "hash"):
            for m in self.models:
                if m.get(key) and m[key] == name:
                    return m
        for m in self.models:
            if m["filename"].rsplit("/", 1)[-1] == name:
                return m
        titles = ", ".join(m["title"] for m in self.models) or "none (mlc setup NAME RECIPE)"
        raise RequestError(f"no model {name!r} here; available: {titles}", 404, "NotFound")


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body (at most LIMIT bytes, chunked or not)."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RequestError(f"the body is over {limit} bytes", 413, "TooLarge")
    try:
        return json.loads(data or b"{}")
    except ValueError as err:
        raise RequestError(f"the body is not JSON: {err}", 422, "ValidationError") from None


def engine_line(job: Job) -> str:
    """The engine's one error line (without its ``mlc-txt2img: error:`` prefix)."""
    lines = [ln for text in job.errors for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        m = ENGINE_LINE.match(line)
        if m and "note:" not in line[:20]:
            return m.group(1)
    return lines[-1] if lines else f"exit {job.code}"


def respond(job: Job) -> Any:
    """The A1111 response of a finished JOB, or its error."""
    if job.failure is not None:
        return problem(503, "EngineUnavailable", str(job.failure))
    if not (job.code == 0 or job.interrupted and job.code in STOPPED):
        if job.code == 2:
            return problem(400, "BadRequest", engine_line(job))
        if job.stop_reason:
            made = len(job.samples)
            return problem(503, "Cancelled", f"{job.stop_reason}; {made} image(s) were made")
        return problem(500, "EngineError", engine_line(job))
    req = job.req
    summary = job.summary or {}
    model = {
        "name": summary.get("model") or job.model.get("model_name"),
        "hash": summary.get("model_hash") or job.model.get("hash"),
    }
    extra = {
        "files": [e.get("file") for e, _ in job.samples] if req.save else [],
        "grid": job.grid_file if req.save else None,
        "interrupted": job.interrupted,
    }
    info = a1111.info(req, job.samples, model, grid=job.grid, extra=extra)
    images = [job.grid] if job.grid else []
    images += [png for _, png in job.samples]
    return {
        "images": [base64.b64encode(p).decode("ascii") for p in images] if req.send else [],
        "parameters": req.body,
        "info": json.dumps(info, ensure_ascii=False),
    }


def create_app(backend: Backend, options: ServeOptions, jobs: Jobs) -> ASGIApp:
    """The app for BACKEND with OPTIONS (behind its Guard); its jobs run through JOBS."""
    app = FastAPI(
        title="mlc serve",
        version=__version__,
        description="AUTOMATIC1111's txt2img API on mlc's warm Stable Diffusion v1 engine "
        f"({backend.label}). See docs/api.md.",
    )
    state = State(backend)
    app.state.models = state

    @app.exception_handler(RequestError)
    async def _request_error(_r: Request, err: RequestError) -> Any:
        return problem(err.status, err.kind, err.message)

    @app.exception_handler(MlcError)
    async def _mlc_error(_r: Request, err: MlcError) -> Any:
        return problem(503, "EngineUnavailable", str(err))

    @app.exception_handler(Exception)
    async def _bug(_r: Request, err: Exception) -> Any:
        return problem(500, "InternalError", describe(err)[0])

    @app.exception_handler(HTTPException)
    async def _http_error(_r: Request, err: HTTPException) -> Any:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(err.status_code, "HTTPError")
        return problem(err.status_code, kind, str(err.detail))

    @app.post(
        f"{API}/txt2img",
        summary="Text to image (AUTOMATIC1111's request and response)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": a1111.schema()}},
            }
        },
    )
    async def txt2img(request: Request) -> Any:
        req = a1111.parse(await read_json(request, options.max_body), options.limits, options.save)
        model = state.find(req.checkpoint) if req.checkpoint else state.current
        if model is None:
            raise EngineError(f"no model is set up in {backend.label}; run: mlc setup NAME demo")
        argv = req.argv(model.get("filename"), options.limits)
        if options.outdir:
            argv.append(f"--outdir={options.outdir}")
        job = Job(req, EngineRequest(argv, req.save, uuid.uuid4().hex), model)
        jobs.submit(job)
        while not job.done.is_set():
            if await request.is_disconnected():
                jobs.cancel(job, "the client disconnected")
                return problem(499, "ClientClosedRequest", "the client disconnected")
            await asyncio.sleep(0.05)
        return respond(job)

    @app.get(f"{API}/samplers", summary="The samplers (A1111 names)")
    def samplers() -> Any:
        return [s.as_api() for s in SAMPLERS]

    @app.get(f"{API}/schedulers", summary="The schedule types")
    def schedulers() -> Any:
        return [s.as_api() for s in SCHEDULERS]

    @app.get(f"{API}/sd-models", summary="The checkpoints `mlc setup` installed")
    def sd_models() -> Any:
        return [{k: m.get(k) for k in SD_MODEL_KEYS} for m in state.refresh()]

    @app.post(f"{API}/refresh-checkpoints", summary="Look for checkpoints again")
    def refresh() -> Any:
        state.refresh()
        return {}

    @app.get(f"{API}/options", summary="The settings that apply (sd_model_checkpoint, ...)")
    def get_options() -> Any:
        current = state.current or {}
        return {
            "sd_model_checkpoint": current.get("title"),
            "sd_checkpoint_hash": current.get("sha256"),
            "samples_save": options.save,
            "samples_format": "png",
            "outdir_txt2img_samples": options.outdir or "outputs/txt2img-samples",
            "return_grid": True,
            "grid_only_if_multiple": True,
            "CLIP_stop_at_last_layers": 1,
            "eta_ddim": 0.0,
        }

    @app.post(f"{API}/options", summary="Choose the model (sd_model_checkpoint only)")
    async def set_options(request: Request) -> Any:
        body = await read_json(request, options.max_body)
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object", 422, "ValidationError")
        other = sorted(set(body) - {"sd_model_checkpoint"})
        if other:
            raise not_supported(f"options {', '.join(other)}: only sd_model_checkpoint is settable")
        if "sd_model_checkpoint" in body:
            state.current = state.find(str(body["sd_model_checkpoint"]))
        return None

    @app.get(f"{API}/progress", summary="Progress of the running job")
    def progress(skip_current_image: bool = False) -> Any:
        return jobs.progress(skip_current_image)

    @app.post(f"{API}/interrupt", summary="Stop the running job after its current step")
    def interrupt() -> Any:
        jobs.interrupt()
        return {}

    @app.get(f"{API}/scripts", summary="Scripts (none)")
    def scripts() -> Any:
        return {"txt2img": [], "img2img": []}

    @app.api_route(f"{API}/{{rest:path}}", methods=["GET", "POST"], include_in_schema=False)
    def elsewhere(rest: str) -> Any:
        if rest.strip("/") in A1111_ONLY:
            what = A1111_ONLY[rest.strip("/")]
            raise not_supported(f"{what} is not supported by mlc serve (txt2img only)")
        raise RequestError(f"no such endpoint: {API}/{rest}", 404, "NotFound")

    return Guard(app, options)
