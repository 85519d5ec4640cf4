"""The plan of a sharded run, fixed before any image is made: image k's prompt, seed and file.

A plain run numbers its files as it saves them (``outputs.Numbering``: the next free number).
A sharded run saves them in whatever order its devices finish, so its names are fixed up
front instead: image k is ``<outdir>/samples/{base + k:05}.png``, ``base`` being the number a
one-device run would have started at. The range is reserved for the run by a hidden
``.reserved-FIRST-LAST`` file in the samples folder, which ``outputs.Numbering`` counts, so a
concurrent run sharing the outdir numbers its files past it; a finished run removes it.

``--resume`` looks for the latest run in the outdir whose images carry the same metadata
(settings, model, prompt, seed and index: what ``run.save_image`` writes) and keeps its base:
each of its files that is a valid PNG with the expected metadata is kept, the others are
made. Nothing is overwritten: a planned name taken by another file gets the next free number
instead (a note says so); only an empty name (a claim left by a killed process) is reused.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlc.engine import outputs
from mlc.engine.spec import RunSpec


@dataclass(frozen=True)
class Job:
    """One image to make: its place in the run, prompts and seed (what a device needs)."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int


@dataclass
class Plan:
    """Every image of a run with its file, and which of them an earlier try already made."""

    spec: RunSpec
    info: dict[str, Any]  # the run's metadata (run.run_info), as the first device reported it
    base: int
    jobs: list[Job]
    kept: dict[int, Path] = field(default_factory=dict)  # index -> verified file (--resume)
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> Path:
        return Path(self.spec.outdir) / "samples"

    def path(self, index: int) -> Path:
        """Image INDEX's planned file."""
        return self.samples / f"{self.base + index:05}.png"

    @property
    def todo(self) -> list[Job]:
        """The jobs still to make, in index order."""
        return [j for j in self.jobs if j.index not in self.kept]

    def data(self, job: Job) -> dict[str, Any]:
        """The ``mlc`` JSON chunk of JOB's image (as ``run.save_image`` writes it)."""
        return {
            **self.info,
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": job.seed,
            "index": job.index,
        }

    def parameters(self, job: Job) -> str:
        """The A1111 ``parameters`` text of JOB's image."""
        return parameters(self.spec, self.info, job.prompt, job.negative_prompt, job.seed)

    def reservation(self) -> Path:
        return self.samples / f".reserved-{self.base}-{self.base + len(self.jobs) - 1}"


def parameters(
    spec: RunSpec, info: dict[str, Any], prompt: str, negative: str, seed: int, grid: bool = False
) -> str:
    """``run.parameters`` from the run's INFO (model name and hash) instead of the loaded model:
    the driver of a sharded run holds no model."""
    from mlc.engine.run import parameters as run_parameters

    model = SimpleNamespace(name=info["model"], model_hash=info["model_hash"])
    return run_parameters(spec, model, prompt, negative, seed, grid=grid)  # type: ignore[arg-type]


def jobs_of(spec: RunSpec) -> list[Job]:
    """The run's images in the classic loop order, image k with seed S+k (``generate.plan``'s
    rule, without importing torch)."""
    jobs: list[Job] = []
    for _ in range(spec.n_iter):
        for batch in spec.batches:
            for prompt in batch:
                k = len(jobs)
                seed = spec.seed if spec.fixed_code else spec.seed + k
                jobs.append(Job(k, prompt, spec.negative_prompt, seed))
    return jobs


def highest(samples: Path) -> int:
    """The highest sample number in use or reserved in SAMPLES, -1 if none."""
    return outputs.sample_numbering(samples.parent).highest()


def make_plan(spec: RunSpec, info: dict[str, Any], *, resume: bool = False) -> Plan:
    """The plan of SPEC's run (INFO: its metadata); with RESUME, the latest earlier try's base
    and its verified files. The range is reserved before this returns."""
    plan = Plan(spec, info, 0, jobs_of(spec))
    plan.samples.mkdir(parents=True, exist_ok=True)
    found = find_base(plan) if resume else None
    if found is None:
        plan.base = highest(plan.samples) + 1
        if resume:
            plan.notes.append(f"resume: no image of this run in {plan.samples}; making all")
    else:
        plan.base = found
        plan.kept = {j.index: plan.path(j.index) for j in plan.jobs if verified(plan, j)}
    with contextlib.suppress(FileExistsError):
        os.close(os.open(plan.reservation(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return plan


def read_json(path: Path) -> dict[str, Any] | None:
    """The ``mlc`` JSON chunk of PATH (None when unreadable)."""
    try:
        _, data = outputs.read_metadata(path)
    except Exception:  # noqa: BLE001 - not a PNG, truncated, unreadable: not ours
        return None
    return data if isinstance(data, dict) else None


def find_base(plan: Plan) -> int | None:
    """The base of the latest earlier try of PLAN's run in its samples folder (None: none).

    A file belongs to it when its metadata is what the plan would write for the image of its
    index; its base is its number less that index."""
    best: int | None = None
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(plan.samples):
            match = outputs.SAMPLE_PATTERN.match(name)
            if not match:
                continue
            data = read_json(plan.samples / name)
            index = data.get("index") if data else None
            if not isinstance(index, int) or not 0 <= index < len(plan.jobs):
                continue
            if data == as_json(plan.data(plan.jobs[index])):
                base = int(match.group(1)) - index
                best = base if best is None else max(best, base)
    return best


def verified(plan: Plan, job: Job) -> bool:
    """Whether JOB's planned file is a valid PNG (every chunk's CRC) with JOB's metadata."""
    path = plan.path(job.index)
    try:
        if path.stat().st_size == 0:
            return False
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        text, data = outputs.read_metadata(path)
    except Exception:  # noqa: BLE001 - missing, truncated, not a PNG
        return False
    return data == as_json(plan.data(job)) and text == plan.parameters(job)


@dataclass
class PlannedName(outputs.Numbering):
    """One fixed name for ``outputs.write_claimed``: claimed unless another file holds it (an
    empty file there is a claim a killed process left: reused)."""

    path: Path = Path()

    def claim(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if self.path.stat().st_size:
                raise
        return self.path


def save(plan: Plan, job: Job, image: Any) -> tuple[Path, str | None]:
    """JOB's IMAGE at its planned name with its metadata, or (a note says why) at the next free
    number when another file holds that name; (path, note)."""
    text, data = plan.parameters(job), plan.data(job)
    name = PlannedName(plan.samples, "{:05}.png", outputs.SAMPLE_PATTERN, path=plan.path(job.index))
    try:
        return outputs.save_png(image, name, text, data), None
    except FileExistsError:
        path = outputs.save_png(image, outputs.sample_numbering(plan.spec.outdir), text, data)
        return (
            path,
            f"{plan.path(job.index).name} is another file: image {job.index} -> {path.name}",
        )


def release(plan: Plan) -> None:
    """Drop the run's reservation (every image is made)."""
    with contextlib.suppress(FileNotFoundError):
        plan.reservation().unlink()


def as_json(value: Any) -> Any:
    """VALUE through JSON (how metadata read back compares with metadata to write)."""
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True))
