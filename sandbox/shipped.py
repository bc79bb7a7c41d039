"""The agents the sandbox commands use: the oracle teachers, the tiny agents shipped in ``sandbox/agents/``,
or any model folder or OpenAI-compatible endpoint.

A spec names one:
- ``oracle``: the sandbox's teacher (reads the pixels and the ground truth; an upper bound, not a model);
- ``shipped`` (Planner) / ``sft`` / ``grpo`` (Critic): the tiny agents in ``sandbox/agents/``;
- ``none`` (Critic only): no Critic, every first attempt is kept;
- a model folder, or an ``http(s)://`` URL with ``--*-model NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core import settings
from ..core.agents import Decoding, is_url
from ..core.agents.base import Agent
from ..core.endpoints import EndpointPolicy
from ..core.errors import BadInput
from .oracle import OracleCritic, OraclePlanner

AGENTS_DIR = Path(__file__).resolve().parent / "agents"
SHIPPED = {"shipped": "planner", "sft": "critic-sft", "grpo": "critic-grpo"}
LABELS = {"none": "no critic", "oracle": "oracle critic", "sft": "SFT critic", "grpo": "GRPO critic"}
# Sandbox answers are short: a verdict is under 150 tokens, a plan of the loop's default 12 steps about 660,
# a description of 12 pictures (each read whole first) up to about 1150.
MAX_NEW_TOKENS = 1280


class SpecError(BadInput):
    """A spec that names no agent the sandbox can load."""


def shipped(name: str) -> Path | None:
    """The shipped agent folder for ``shipped``/``sft``/``grpo``, or None when it is not in this install."""
    folder = AGENTS_DIR / SHIPPED[name]
    return folder if (folder / "config.json").is_file() else None


def default_planner() -> str:
    return "shipped" if shipped("shipped") else "oracle"


def default_critics() -> list[str]:
    return ["none", "oracle"] + [name for name in ("sft", "grpo") if shipped(name)]


def default_demo_critic() -> str:
    return next((name for name in ("grpo", "sft") if shipped(name)), "oracle")


@dataclass
class AgentOptions:
    model: str | None = None
    api_key_env: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    device: str = settings.DEFAULT_DEVICE
    timeout: float = settings.DEFAULT_HTTP_TIMEOUT
    policy: EndpointPolicy | None = None  # which endpoints and key variables may be used


def label(spec: str, role: str = "critic") -> str:
    """A short column or log name for an agent spec."""
    if role == "planner" and spec in ("oracle", "shipped"):
        return f"{spec} planner"
    if spec in LABELS:
        return LABELS[spec]
    if is_url(spec):
        return spec
    path = Path(spec)
    return path.parent.name if path.name == "final" and path.parent.name else path.name  # a run's final/


def load(spec: str, role: str, options: AgentOptions = AgentOptions()) -> Agent | None:
    """The agent a spec names for ``role`` ("planner" or "critic"); None for critic "none"."""
    if role not in ("planner", "critic"):
        raise ValueError(f"role must be planner or critic, got {role!r}")
    spec = str(spec).strip()
    if spec == "none":
        if role == "planner":
            raise SpecError("a Planner cannot be 'none'; use oracle, shipped, a model folder or a URL")
        return None
    if spec == "oracle":
        return OraclePlanner() if role == "planner" else OracleCritic()
    if spec in SHIPPED:
        wanted = "planner" if spec == "shipped" else "critic"
        if wanted != role:
            raise SpecError(f"'{spec}' is a shipped {wanted}, not a {role}")
        folder = shipped(spec)
        if folder is None:
            raise SpecError(
                f"no shipped '{spec}' agent in {AGENTS_DIR / SHIPPED[spec]}; "
                "train one (see the README) or use oracle"
            )
        spec = str(folder)
    from ..core.agents import AgentSpecError, load_agent

    try:
        return load_agent(
            spec,
            model=options.model,
            api_key_env=options.api_key_env,
            decoding=Decoding(max_new_tokens=options.max_new_tokens),
            device=options.device,
            timeout=options.timeout,
            policy=options.policy,
        )
    except AgentSpecError as error:
        raise SpecError(f"{error}; use oracle, none, sft, grpo, a model folder or a URL") from None


__all__ = [
    "AGENTS_DIR",
    "AgentOptions",
    "LABELS",
    "SHIPPED",
    "SpecError",
    "default_critics",
    "default_demo_critic",
    "default_planner",
    "label",
    "load",
    "shipped",
]
