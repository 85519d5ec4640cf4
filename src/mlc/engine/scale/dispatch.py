"""The driver of a sharded run: the shared queue, the files, the progress and the summary.

A back end (``scale.pool``: a process per device here; ``scale.rayrun``: an actor per GPU
on a Ray cluster) starts its devices; each loads the model and says it is ready. The first
ready device's metadata fixes the plan (``scale.plan``: every image's file, and with
``--resume`` what an earlier try already made). Then each ready device is handed one image
at a time from the queue; each image that comes back is written by the driver at its planned
name, with the metadata a one-device run would write, and reported on one progress line
(images done/total, every device's rate, ETA). A device that fails (its process killed, out
of memory) is retired and the image it held goes back to the queue for the others; an image
that failed on ``TRIES`` devices is given up. The run ends with one summary line per run
(made, kept, failed, per device); failed images make the command fail (exit 1), and
``--resume`` makes them later.

The grid, when the run makes one, is built at the end from the saved files, in image order,
as a one-device run builds it: the same pixels (its metadata's timings differ, as they do
between any two runs).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlc.engine import say
from mlc.engine.scale import plan as planning
from mlc.engine.scale.plan import Job, Plan
from mlc.engine.spec import RunSpec
from mlc.errors import EngineError, UsageError

if TYPE_CHECKING:
    from mlc.engine.scale.shard import Made

POLL_S = 0.2  # how often the driver looks at its devices while it waits
TRIES = 2  # devices an image may fail on before it is given up


@dataclass
class Event:
    """What a device reports: ``ready`` (INFO: its run metadata), ``done`` (MADE), ``failed``
    (ERROR: one line and an exit code)."""

    kind: str
    wid: int
    info: dict[str, Any] | None = None
    made: Made | None = None
    error: tuple[str, int] | None = None
    pid: int | None = None


class Backend(Protocol):
    """Where the devices run: ``pool.Pool`` or ``rayrun.RayPool``."""

    labels: list[str]

    def start(self) -> None: ...
    def submit(self, wid: int, job: Job) -> None: ...
    def events(self, timeout: float) -> list[Event]: ...
    def retire(self, wid: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class Device:
    """One device as the driver follows it."""

    label: str
    state: str = "loading"  # loading, ready, failed
    made: int = 0
    since: float = 0.0  # when it became ready
    last: float = 0.0  # when its latest image came back (or it failed)
    error: str | None = None
    requeued: int = 0

    def rate(self, now: float | None = None) -> float:
        """Images per second from when it became ready to NOW (default: its latest image)."""
        end = self.last if now is None else now
        return self.made / (end - self.since) if self.made and end > self.since else 0.0


@dataclass
class Driver:
    """The state of one sharded run."""

    spec: RunSpec
    backend: Backend
    devices: list[Device]
    t0: float = field(default_factory=time.perf_counter)
    plan: Plan | None = None
    pending: deque[Job] = field(default_factory=deque)
    inflight: dict[int, Job] = field(default_factory=dict)
    tries: Counter[int] = field(default_factory=Counter)
    failed: dict[int, str] = field(default_factory=dict)  # index -> why
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    images: dict[int, Any] = field(default_factory=dict)  # --skip_save with a grid
    first_error: tuple[str, int] | None = None
    t_plan: float = 0.0

    # -- the loop ---------------------------------------------------------------------------

    def loop(self) -> None:
        """Until every image is made or failed, or no device is left."""
        while True:
            for event in self.backend.events(POLL_S):
                self.handle(event)
            if self.plan is not None:
                self.hand_out()
                if not self.pending and not self.inflight:
                    return
            if all(d.state == "failed" for d in self.devices):
                if self.plan is None:  # none loaded: as a one-device run would fail
                    message, code = self.first_error or ("no device could load the model", 1)
                    raise (UsageError if code == 2 else EngineError)(message)
                for job in self.pending:
                    self.failed[job.index] = "no device left"
                self.pending.clear()
                return

    def handle(self, event: Event) -> None:
        device = self.devices[event.wid]
        if event.kind == "ready":
            self.ready(device, event)
        elif event.kind == "done" and event.made is not None:
            self.done(device, event.wid, event.made)
        elif event.kind == "failed" and device.state != "failed":
            self.fail(device, event.wid, event.error or ("failed", 1))

    def ready(self, device: Device, event: Event) -> None:
        info = planning.as_json(event.info or {})
        if self.plan is None:
            self.plan = planning.make_plan(self.spec, info, resume=self.spec.resume)
            self.pending = deque(self.plan.todo)
            self.t_plan = time.perf_counter()
            self.announce()
        elif info != self.plan.info:
            differs = sorted(k for k in info if info.get(k) != self.plan.info.get(k))
            self.fail(device, event.wid, (f"its run metadata differs ({', '.join(differs)})", 1))
            return
        device.state, device.since = "ready", time.perf_counter()
        pid = f" (process {event.pid})" if event.pid else ""
        say(f"device {device.label} ready{pid}")

    def announce(self) -> None:
        plan = self.plan
        assert plan is not None
        for note in [*self.spec.notes, *plan.notes]:
            say(f"note: {note}")
        n = len(plan.jobs)
        first, last = plan.path(0).name, plan.path(n - 1).name
        kept = f"; {len(plan.kept)} already made (--resume)" if plan.kept else ""
        say(
            f"{n} image(s) over {len(self.devices)} device(s) ({', '.join(self.labels)}), "
            f"{self.spec.sampler}, {self.spec.steps} steps: {first} to {last} in "
            f"{plan.samples}{kept}"
        )
        for index, path in plan.kept.items():
            job = plan.jobs[index]
            self.entries[index] = self.entry(job, str(path), None)

    @property
    def labels(self) -> list[str]:
        return [d.label for d in self.devices]

    def hand_out(self) -> None:
        for wid, device in enumerate(self.devices):
            if device.state == "ready" and wid not in self.inflight and self.pending:
                job = self.pending.popleft()
                self.inflight[wid] = job
                self.backend.submit(wid, job)

    def done(self, device: Device, wid: int, made: Made) -> None:
        plan = self.plan
        job = self.inflight.pop(wid, None)
        if plan is None or job is None or job.index != made.index:
            return
        device.made += 1
        device.last = time.perf_counter()
        path = None
        if not self.spec.skip_save:
            path, note = planning.save(plan, job, made.image)
            if note:
                say(f"note: {note}")
        if self.wants_images:
            self.images[job.index] = made.image
        self.entries[job.index] = self.entry(job, str(path) if path else None, made, device.label)
        self.progress(device, job, made, path)
        if made.vae_fallback:
            say(f"note: image {job.index}: fp16 VAE decode gave NaN/black; decoded in fp32")

    def fail(self, device: Device, wid: int, error: tuple[str, int]) -> None:
        device.state, device.error = "failed", error[0]
        self.first_error = self.first_error or error
        self.backend.retire(wid)
        job = self.inflight.pop(wid, None)
        what = ""
        if job is not None:
            self.tries[job.index] += 1
            if self.tries[job.index] >= TRIES:
                self.failed[job.index] = error[0]
                what = f"; image {job.index} failed on {TRIES} devices, given up"
            else:
                self.pending.appendleft(job)
                device.requeued += 1
                what = f"; its image {job.index} is back in the queue"
        left = sum(d.state != "failed" for d in self.devices)
        say(f"note: device {device.label} failed: {error[0]}{what} ({left} device(s) left)")

    # -- what is shown ----------------------------------------------------------------------

    @property
    def wants_images(self) -> bool:
        return self.spec.skip_save and not self.spec.skip_grid

    def entry(
        self, job: Job, file: str | None, made: Made | None, device: str | None = None
    ) -> dict[str, Any]:
        """JOB's summary entry (DEVICE: the one that made it; None: kept from an earlier try)."""
        entry: dict[str, Any] = {
            "index": job.index,
            "file": file,
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": job.seed,
            "seconds": round(made.seconds, 4) if made else None,
            "vae_fallback": bool(made and made.vae_fallback),
        }
        if device is None:
            entry["resumed"] = True
        else:
            entry["device"] = device
        return entry

    def progress(self, device: Device, job: Job, made: Made, path: Path | None) -> None:
        """One line per image: done/total, this image, the run's and each device's rate, ETA."""
        now = time.perf_counter()
        total = len(self.plan.jobs) if self.plan else 0
        count = len(self.entries)
        rates = [(d.label, d.rate(now)) for d in self.devices if d.state == "ready"]
        rate = sum(r for _, r in rates)
        left = total - count - len(self.failed)
        eta = f", ETA {left / rate:.0f} s" if rate > 0 and left > 0 else ""
        each = ", ".join(f"{label} {r:.2f}" for label, r in rates)
        where = f" -> {path}" if path else ""
        say(
            f"[{count}/{total}] seed {job.seed} {made.seconds:.2f} s on {device.label}{where} "
            f"| {rate:.2f} images/s ({each}){eta}"
        )

    def summary_line(self) -> str:
        now = time.perf_counter()
        plan = self.plan
        total = len(plan.jobs) if plan else 0
        made = sum(d.made for d in self.devices)
        kept = len(plan.kept) if plan else 0
        parts = []
        for d in self.devices:
            text = f"{d.label} {d.made} ({d.rate():.2f}/s"
            if d.state == "failed":
                text += f", failed: {d.error}"
                if d.requeued:
                    text += f"; {d.requeued} image(s) requeued"
            parts.append(text + ")")
        line = f"made {made} of {total} image(s) in {now - self.t0:.1f} s"
        if kept:
            line += f", {kept} kept from an earlier try"
        if self.failed:
            line += f", {len(self.failed)} failed"
        return f"{line}: {', '.join(parts)}"


def run(spec: RunSpec, backend: Backend) -> dict[str, Any]:
    """SPEC's images over BACKEND's devices; the ``--json`` summary (as ``run.execute``'s,
    with ``devices`` and ``failed``). Failed images are an EngineError after the summary line."""
    t0 = time.perf_counter()
    try:
        backend.start()  # the devices start loading; their labels are known from here
    except BaseException:
        backend.close()
        raise
    driver = Driver(spec, backend, [Device(label) for label in backend.labels], t0=t0)
    try:
        driver.loop()
        t_saved = time.perf_counter()  # the last image saved (the devices' exit not counted)
    except KeyboardInterrupt:
        n = sum(d.made for d in driver.devices)
        say(f"note: interrupted: {n} image(s) made by this run kept; --resume makes the rest")
        raise
    finally:
        backend.close()
    grid = make_grid(driver) if not driver.failed else None
    t_end = time.perf_counter()
    say(driver.summary_line())
    if driver.failed:
        first = min(driver.failed)
        raise EngineError(
            f"{len(driver.failed)} of {len(driver.plan.jobs) if driver.plan else 0} image(s) "
            f"failed (image {first}: {driver.failed[first]})",
            hint="run the same command with --resume to make them",
        )
    if driver.plan is not None:
        planning.release(driver.plan)
    return summary(driver, grid, t_saved, t_end)


def make_grid(driver: Driver) -> Path | None:
    """The run's grid from its saved files (or kept images), as a one-device run makes it."""
    from mlc.engine import outputs
    from mlc.engine.run import grid_fits

    spec, plan = driver.spec, driver.plan
    if plan is None or not grid_fits(spec):
        return None
    entries = [driver.entries[i] for i in sorted(driver.entries)]
    sources = (
        [driver.images[e["index"]] for e in entries]
        if spec.skip_save
        else [e["file"] for e in entries]
    )
    if not sources:
        return None
    first = entries[0]
    text = planning.parameters(
        spec, plan.info, first["prompt"], first["negative_prompt"], first["seed"], grid=True
    )
    data = {"run": plan.info, "n_rows": spec.n_rows, "images": entries}
    image = outputs.make_grid(sources, spec.n_rows)
    return outputs.save_png(image, outputs.grid_numbering(spec.outdir), text, data)


def summary(driver: Driver, grid: Path | None, t_saved: float, t_end: float) -> dict[str, Any]:
    """The ``--json`` document of a sharded run."""
    plan = driver.plan
    assert plan is not None
    entries = [driver.entries[i] for i in sorted(driver.entries)]
    made = sum(d.made for d in driver.devices)
    generate_s = t_saved - driver.t_plan
    return {
        "outdir": str(driver.spec.outdir),
        "files": [e["file"] for e in entries if e["file"]],
        "grid": str(grid) if grid else None,
        "seeds": [e["seed"] for e in entries],
        "images": entries,
        **({"resumed": len(plan.kept)} if plan.kept else {}),
        **plan.info,
        "devices": [
            {
                "device": d.label,
                "made": d.made,
                "images_per_s": round(d.rate(), 4),
                "failed": d.error,
                "requeued": d.requeued,
            }
            for d in driver.devices
        ],
        "failed": [{"index": i, "error": e} for i, e in sorted(driver.failed.items())],
        "timings": {
            "load_s": round(driver.t_plan - driver.t0, 4),
            "generate_s": round(generate_s, 4),
            "grid_s": round(t_end - t_saved, 4),
            "total_s": round(t_end - driver.t0, 4),
            "per_image_s": round(generate_s / max(1, made), 4),
            "images_per_s": round(made / generate_s, 4) if generate_s > 0 else None,
        },
    }
