"""Diffusers scheduler instances for the samplers of ``mlc.engine.samplers``' table.

The scheduler classes are imported lazily and leanly (``modelimports.lean_attribute``:
``diffusers.utils`` without ``torch._dynamo``), so neither the sampler table (which the
run's options check against) nor a run that has not started sampling pays for diffusers.
"""

from __future__ import annotations

import inspect
from typing import Any

from mlc.engine.modelimports import lean_attribute, quiet_diffusers
from mlc.engine.samplers import BASE_SCHEDULE, get_sampler


def scheduler_config(name: str, schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full keyword set for sampler ``name`` on a model trained with ``schedule``."""
    sampler = get_sampler(name)
    base = dict(BASE_SCHEDULE)
    if schedule:
        base.update(
            {k: v for k, v in schedule.items() if k in BASE_SCHEDULE and k != "steps_offset"}
        )
    cls = scheduler_class(sampler.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    merged = {**base, **sampler.kwargs}
    return {k: v for k, v in merged.items() if k in accepted}


def scheduler_class(class_name: str) -> type:
    """A diffusers scheduler class by name, imported on first use."""
    cls = lean_attribute("diffusers.schedulers", class_name)
    quiet_diffusers()
    return cls


def make_scheduler(name: str, schedule: dict[str, Any] | None = None) -> Any:
    """A fresh scheduler instance for sampler ``name`` (schedulers are stateful: one per run)."""
    cls = scheduler_class(get_sampler(name).scheduler)
    return cls(**scheduler_config(name, schedule))
