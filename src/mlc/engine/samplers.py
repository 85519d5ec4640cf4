"""Sampler name -> diffusers scheduler and its configuration: one table (the scheduler
instances are made by ``mlc.engine.schedulers``).

The values follow docs/engine.md (and the CompVis/A1111 mapping they come from):
the CompVis samplers (ddim, plms, dpm_solver) use their exact-parity settings,
the A1111 names use diffusers' defaults for that sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """One row of the table."""

    name: str
    scheduler: str  # diffusers class name
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # A1111's name, written into the PNG `parameters` chunk
    uses_eta: bool = False  # accepts --ddim_eta


_LEADING = {"steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading"}
_KARRAS = {"use_karras_sigmas": True}

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        Sampler("ddim", "DDIMScheduler", {**_LEADING, "clip_sample": False}, "DDIM", True),
        Sampler("plms", "PNDMScheduler", {**_LEADING, "skip_prk_steps": True}, "PLMS"),
        Sampler(
            "dpm_solver",
            "DPMSolverMultistepScheduler",
            {
                "algorithm_type": "dpmsolver++",
                "solver_order": 2,
                "solver_type": "midpoint",
                "lower_order_final": True,
                "timestep_spacing": "linspace",
                "final_sigmas_type": "sigma_min",
            },
            "DPM++ 2M",
        ),
        Sampler(
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
            "DPM++ 2M",
        ),
        Sampler(
            "dpmpp_2m_karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, **_KARRAS},
            "DPM++ 2M Karras",
        ),
        Sampler(
            "dpmpp_2m_sde",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            "DPM++ 2M SDE",
        ),
        Sampler(
            "dpmpp_2m_sde_karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_KARRAS},
            "DPM++ 2M SDE Karras",
        ),
        Sampler("lms", "LMSDiscreteScheduler", {}, "LMS"),
        Sampler("lms_karras", "LMSDiscreteScheduler", dict(_KARRAS), "LMS Karras"),
        Sampler("euler", "EulerDiscreteScheduler", {}, "Euler"),
        Sampler("euler_a", "EulerAncestralDiscreteScheduler", {}, "Euler a"),
        Sampler("heun", "HeunDiscreteScheduler", {}, "Heun"),
        Sampler("dpm2", "KDPM2DiscreteScheduler", {}, "DPM2"),
        Sampler("dpm2_a", "KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
        Sampler("unipc", "UniPCMultistepScheduler", {}, "UniPC"),
        Sampler("deis", "DEISMultistepScheduler", {}, "DEIS"),
    ]
}

DEFAULT_SAMPLER = "ddim"  # the classic script's default

BASE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "trained_betas": None,
    "steps_offset": 1,  # as SD v1's scheduler_config.json; only "leading" spacing uses it
}
"""The SD v1 training schedule; a model's own scheduler config overrides it."""


def get_sampler(name: str) -> Sampler:
    """The table row for ``name``; ValueError listing the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}"
        ) from None
