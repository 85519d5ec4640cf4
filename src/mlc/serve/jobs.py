"""The server's job queue: one job at a time, in arrival order, on one backend; its progress
(A1111's ``/sdapi/v1/progress``), interrupt, and cancel (a client that left, a stopping server).

A job is cancelled through the backend's worker cancel (by the job's tag): the worker stops it
after the current denoising step, and every image finished before is kept. A cancel that
arrives before the worker has the request (the exec is still starting) is sent again with the
job's next event. No web library here: the app awaits :attr:`Job.done`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mlc.errors import MlcError, describe
from mlc.serve import EngineRequest
from mlc.serve.a1111 import Txt2Img
from mlc.serve.backends import Backend

log = logging.getLogger("mlc.serve")
INTERRUPTED = "interrupted (POST /sdapi/v1/interrupt)"
RECANCEL_S = 1.0  # seconds between two cancels of one job


@dataclass
class Job:
    """One txt2img request on its way through the queue and the engine."""

    req: Txt2Img
    link: EngineRequest
    model: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued, running, done
    stop_reason: str | None = None  # why it was cancelled
    samples: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    grid: bytes | None = None
    grid_file: str | None = None
    summary: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)  # the engine's stderr lines
    code: int | None = None
    failure: MlcError | None = None
    step: tuple[int, int] | None = None  # (i, n) of the image being made
    ahead: int = 0  # requests ahead of it in the worker (other clients' `mlc txt2img`)
    started: float | None = None
    cancelled_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == INTERRUPTED


class Jobs:
    """The queue and its runner thread."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cond = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.current: Job | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="mlc-serve-jobs", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> int:
        """Queue JOB; how many jobs are ahead of it."""
        with self.cond:
            if self.closed:
                job.stop_reason = "the server is stopping"
                job.state = "done"
                job.done.set()
                return 0
            ahead = len(self.waiting) + (self.current is not None)
            self.waiting.append(job)
            self.cond.notify_all()
            return ahead

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.closed:
                    self.cond.wait()
                if not self.waiting:
                    return
                job = self.waiting.popleft()
                self.current = job
                job.state, job.started = "running", time.monotonic()
            try:
                self._run(job)
            finally:
                with self.cond:
                    self.current = None
                    job.state = "done"
                job.done.set()

    def _run(self, job: Job) -> None:
        if job.stop_reason:
            return
        try:
            job.code = self.backend.run(job.link, lambda event: self._event(job, event))
        except MlcError as err:
            job.failure = err
        except Exception as err:  # noqa: BLE001 - the server goes on; the job says what broke
            log.exception("job %s failed", job.id)
            job.failure = MlcError(describe(err)[0])

    def _event(self, job: Job, event: dict[str, Any]) -> None:
        if "step" in event:
            i, n = event["step"]
            job.step = (int(i), int(n))
        elif "image" in event:
            job.samples.append((event["image"], event.get("png") or b""))
            job.step = None
        elif "grid" in event:
            job.grid, job.grid_file = event.get("png"), event["grid"]
        elif "summary" in event:
            job.summary = event["summary"]
        elif "err" in event:
            job.errors.append(str(event["err"]))
        elif "queued" in event:
            job.ahead = int(event["queued"])
        if job.stop_reason and time.monotonic() - job.cancelled_at > RECANCEL_S:
            self._send_cancel(job)  # it may have reached the worker after the first cancel

    def _send_cancel(self, job: Job) -> None:
        job.cancelled_at = time.monotonic()
        if job.link.tag:
            with contextlib.suppress(MlcError, OSError):
                self.backend.cancel(job.link.tag)

    def cancel(self, job: Job, reason: str) -> None:
        """Cancel JOB: dropped from the queue, or stopped after its current step."""
        with self.cond:
            if job.stop_reason or job.state == "done":
                return
            job.stop_reason = reason
            if job in self.waiting:
                self.waiting.remove(job)
                job.state = "done"
                job.done.set()
                return
        log.info("cancelling job %s: %s", job.id, reason)
        self._send_cancel(job)

    def interrupt(self) -> bool:
        """Cancel the running job (A1111's interrupt); whether there was one."""
        job = self.current
        if job is None:
            return False
        self.cancel(job, INTERRUPTED)
        return True

    def close(self, reason: str = "the server is stopping") -> None:
        """Cancel every job and let the runner end."""
        with self.cond:
            self.closed = True
            jobs = [*self.waiting, *([self.current] if self.current else [])]
            self.cond.notify_all()
        for job in jobs:
            self.cancel(job, reason)

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        """A1111's ``ProgressResponse`` for the running job (all zeros when idle)."""
        with self.cond:
            job, waiting = self.current, len(self.waiting)
        state = {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": "",
            "job_count": 0,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
        if job is None or job.started is None:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": state,
                "current_image": None,
                "textinfo": None,
                "current_task": None,
            }
        req, done = job.req, len(job.samples)
        i, n = job.step or (0, req.steps)
        fraction = min(1.0, (done + (i / n if n else 0.0)) / max(1, req.n_images))
        elapsed = time.monotonic() - job.started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        state.update(
            interrupted=job.interrupted,
            job=f"txt2img {job.id}",
            job_count=int(req.body["n_iter"]),
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(req.created)),
            job_no=min(done // int(req.body["batch_size"]), int(req.body["n_iter"]) - 1),
            sampling_step=i,
            sampling_steps=n,
        )
        text = f"{done} of {req.n_images} image(s) made"
        if job.ahead and not done and not job.step:
            text += f"; waiting for the engine ({job.ahead} request(s) ahead)"
        if waiting:
            text += f"; {waiting} request(s) queued"
        image = None
        if job.samples and not skip_current_image:
            image = base64.b64encode(job.samples[-1][1]).decode("ascii")
        return {
            "progress": round(fraction, 4),
            "eta_relative": round(eta, 2),
            "state": state,
            "current_image": image,
            "textinfo": text,
            "current_task": job.id,
        }
