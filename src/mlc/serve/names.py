"""AUTOMATIC1111's sampler and scheduler names <-> the engine's samplers, both ways.

A1111 (1.9 and later) names a sampler and, apart, a schedule type (``scheduler``):
``"DPM++ 2M"`` + ``"Karras"``. Older clients send one name (``"DPM++ 2M Karras"``); A1111
splits it, and so does :func:`resolve`. ``Automatic`` is the sampler's own default in A1111
(Karras for DPM++ 2M, DPM2 and DPM2 a; Exponential for DPM++ 2M SDE; else Uniform): here it
is that default when the engine has it, else Uniform, and the answer says which was used.
DDIM, PLMS and UniPC take no schedule (A1111 ignores it for them, so does this).

Uniform is the k-diffusion default (sigmas at evenly spaced timesteps), which diffusers'
``linspace`` spacing matches; Karras is ``use_karras_sigmas``. The engine's own names
(``euler_a``, ``dpmpp_2m_karras``, ...) are accepted as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlc.serve import RequestError

AUTOMATIC, UNIFORM, KARRAS = "automatic", "uniform", "karras"


@dataclass(frozen=True)
class Scheduler:
    """A schedule type as A1111's ``/sdapi/v1/schedulers`` lists it."""

    name: str
    label: str
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None

    def as_api(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


SCHEDULERS = [
    Scheduler(AUTOMATIC, "Automatic"),
    Scheduler(UNIFORM, "Uniform", need_inner_model=True),
    Scheduler(KARRAS, "Karras", default_rho=7.0),
]

OTHER_SCHEDULERS = (
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "SGMUniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)
"""A1111's schedule types the engine does not have (a clear "not supported", not "unknown")."""


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler the engine has: its name, aliases, the engine sampler for each
    schedule, A1111's default schedule for it, and whether it takes a schedule at all."""

    name: str
    aliases: tuple[str, ...]
    engine: dict[str, str] = field(default_factory=dict)  # schedule name -> engine sampler
    automatic: str = UNIFORM  # A1111's schedule for "Automatic"
    timesteps: bool = False  # DDIM / PLMS / UniPC: no schedule

    def as_api(self) -> dict[str, object]:
        options = {} if self.automatic == UNIFORM else {"scheduler": self.automatic}
        return {"name": self.name, "aliases": list(self.aliases), "options": options}


SAMPLERS = [
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {UNIFORM: "dpmpp_2m", KARRAS: "dpmpp_2m_karras"}, KARRAS),
    Sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        {UNIFORM: "dpmpp_2m_sde", KARRAS: "dpmpp_2m_sde_karras"},
        "exponential",
    ),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {UNIFORM: "euler_a"}),
    Sampler("Euler", ("k_euler",), {UNIFORM: "euler"}),
    Sampler("LMS", ("k_lms",), {UNIFORM: "lms", KARRAS: "lms_karras"}),
    Sampler("Heun", ("k_heun",), {UNIFORM: "heun"}),
    Sampler("DPM2", ("k_dpm_2",), {UNIFORM: "dpm2"}, KARRAS),
    Sampler("DPM2 a", ("k_dpm_2_a",), {UNIFORM: "dpm2_a"}, KARRAS),
    Sampler("DDIM", ("ddim",), {UNIFORM: "ddim"}, timesteps=True),
    Sampler("PLMS", ("plms",), {UNIFORM: "plms"}, timesteps=True),
    Sampler("UniPC", ("unipc",), {UNIFORM: "unipc"}, timesteps=True),
    Sampler("DEIS", ("deis",), {UNIFORM: "deis"}),
]

DEFAULT_SAMPLER = "Euler"  # A1111's API default (``sampler_index``)

OTHER_SAMPLERS = (
    "DPM++ SDE",
    "DPM++ 2S a",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "DPM fast",
    "DPM adaptive",
    "Restart",
    "DDIM CFG++",
    "LCM",
)
"""A1111's samplers the engine does not have."""

ENGINE_ONLY = {"dpm_solver": ("DPM++ 2M", UNIFORM)}
"""Engine samplers with no A1111 row of their own: the name A1111 users know them by."""


@dataclass(frozen=True)
class Choice:
    """What a request's sampler and scheduler come to."""

    sampler: str  # A1111's name
    scheduler: Scheduler | None  # the schedule used; None for DDIM/PLMS/UniPC
    engine: str  # the engine's sampler (--sampler)

    @property
    def schedule_label(self) -> str | None:
        return self.scheduler.label if self.scheduler else None


def _fold(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def find_scheduler(name: str | None) -> Scheduler:
    """The schedule named NAME (name, label or alias, any case); None or "" is Automatic."""
    if not name:
        return SCHEDULERS[0]
    for s in SCHEDULERS:
        if _fold(name) in {_fold(n) for n in (s.name, s.label, *(s.aliases or ()))}:
            return s
    labels = ", ".join(s.label for s in SCHEDULERS)
    if _fold(name) in {_fold(n) for n in OTHER_SCHEDULERS}:
        raise RequestError(f"the {name} schedule is not supported by mlc; choose one of: {labels}")
    raise RequestError(f"unknown scheduler {name!r}; choose one of: {labels}")


def _split_suffix(name: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")`` (A1111's old combined names)."""
    for label in [*(s.label for s in SCHEDULERS[1:]), *OTHER_SCHEDULERS]:
        if _fold(name).endswith(" " + _fold(label)):
            return name[: len(name) - len(label) - 1].rstrip(), label
    return name, None


def find_sampler(name: str) -> Sampler | None:
    """The A1111 sampler called NAME (name or alias, any case), or None."""
    for s in SAMPLERS:
        if _fold(name) in {_fold(n) for n in (s.name, *s.aliases)}:
            return s
    return None


def engine_names() -> set[str]:
    """Every engine sampler this table reaches."""
    return {e for s in SAMPLERS for e in s.engine.values()} | set(ENGINE_ONLY)


def to_a1111(engine: str) -> tuple[str, Scheduler | None]:
    """The A1111 sampler name and schedule of an engine sampler."""
    if engine in ENGINE_ONLY:
        name, schedule = ENGINE_ONLY[engine]
        return name, find_scheduler(schedule)
    for s in SAMPLERS:
        for schedule, e in s.engine.items():
            if e == engine:
                return s.name, None if s.timesteps else find_scheduler(schedule)
    raise RequestError(f"the engine sampler {engine!r} has no A1111 name")


def resolve(sampler_name: str | None, scheduler_name: str | None = None) -> Choice:
    """The engine sampler for A1111's SAMPLER_NAME and SCHEDULER_NAME; RequestError (its
    message lists the valid names) when it has none."""
    name = (sampler_name or DEFAULT_SAMPLER).strip()
    if name in engine_names():  # the engine's own name
        a1111, schedule = to_a1111(name)
        return Choice(a1111, schedule, name)
    scheduler = find_scheduler(scheduler_name)
    sampler = find_sampler(name)
    if sampler is None:
        base, suffix = _split_suffix(name)
        sampler = find_sampler(base)
        if sampler is not None and suffix is not None:
            scheduler = find_scheduler(suffix)
    if sampler is None:
        names = ", ".join(s.name for s in SAMPLERS)
        if _fold(_split_suffix(name)[0]) in {_fold(n) for n in OTHER_SAMPLERS}:
            raise RequestError(f"the {name} sampler is not supported by mlc; choose: {names}")
        raise RequestError(f"unknown sampler {name!r}; choose one of: {names}")
    if sampler.timesteps:
        return Choice(sampler.name, None, sampler.engine[UNIFORM])
    schedule = scheduler.name
    if schedule == AUTOMATIC:
        schedule = sampler.automatic if sampler.automatic in sampler.engine else UNIFORM
    if schedule not in sampler.engine:
        have = " or ".join(find_scheduler(k).label for k in sampler.engine)
        raise RequestError(
            f"{sampler.name} with the {scheduler.label} schedule is not supported by mlc; "
            f"use {have} (or Automatic)"
        )
    return Choice(sampler.name, find_scheduler(schedule), sampler.engine[schedule])
