"""The values that travel between the nodes: AGENT (an engine agent), PLAN (below), STORYBOARD (the
engine's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from ..core.loop import PlanResult
from ..core.protocol import Plan

CATEGORY = "InterleaveThinker"
AGENT = "AGENT"
PLAN = "PLAN"
STORYBOARD = "STORYBOARD"

# Sampler and scheduler names of ComfyUI 0.3.64, shown only when the declarations are read outside ComfyUI;
# inside it the lists come from comfy.samplers.
FALLBACK_SAMPLERS = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
FALLBACK_SCHEDULERS = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)


@dataclass
class StoryPlan:
    """A Planner's result with what the refine loop needs to carry it out: the instruction and its images."""

    planning: PlanResult
    instruction: str
    images: list[Image.Image] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return self.planning.plan

    @property
    def steps(self):
        return self.planning.plan.steps

    @property
    def mode(self) -> str:
        return self.planning.mode


def sampler_choices() -> tuple[list[str], list[str]]:
    from .host import optional_module

    samplers = optional_module("comfy.samplers")
    if samplers is None:
        return list(FALLBACK_SAMPLERS), list(FALLBACK_SCHEDULERS)
    return list(samplers.KSampler.SAMPLERS), list(samplers.KSampler.SCHEDULERS)
