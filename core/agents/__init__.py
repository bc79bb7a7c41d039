"""Agent backends: a local transformers folder, or an OpenAI-compatible HTTP endpoint.

:func:`load_agent` is the one loader: the CLI, the nodes, the sandbox and training's judge all call it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import settings
from ..endpoints import EndpointPolicy
from .base import Agent, AgentError, AgentSpecError, Decoding


def is_url(spec: str) -> bool:
    return str(spec).strip().lower().startswith(("http://", "https://"))


def check_agent_spec(spec: str, model: str | None = None) -> None:
    """Checks that need no model: a URL names its served model; a folder exists and holds config.json."""
    if is_url(spec):
        if not (model or "").strip():
            raise AgentSpecError(f"{spec} is a URL: name the model the server serves")
        return
    from .transformers_agent import check_model_folder

    check_model_folder(spec)


def load_agent(
    spec: str | Path,
    *,
    model: str | None = None,
    api_key_env: str | None = None,
    decoding: Decoding = Decoding(),
    dtype: str = "auto",
    device: str = settings.DEFAULT_DEVICE,
    memory: str = "keep",
    timeout: float = settings.DEFAULT_HTTP_TIMEOUT,
    retries: int = settings.DEFAULT_HTTP_RETRIES,
    make_room: Callable[[int, str], None] | None = None,
    policy: EndpointPolicy | None = None,
) -> Agent:
    """An agent from a model folder or an endpoint URL (``model`` names the served model).

    ``policy`` says which endpoints and key variables may be used (default: what the machine allows, see
    ``core/endpoints.py``). ``make_room(bytes, device)`` lets a host free accelerator memory before a local
    agent moves there.
    """
    spec = str(spec).strip()
    check_agent_spec(spec, model)
    if is_url(spec):
        from .openai_agent import OpenAIAgent

        return OpenAIAgent(
            spec,
            (model or "").strip(),
            api_key_env=api_key_env,
            decoding=decoding,
            policy=policy,
            timeout=timeout,
            retries=retries,
        )
    from .transformers_agent import TransformersAgent

    return TransformersAgent(
        spec, dtype=dtype, device=device, decoding=decoding, memory=memory, make_room=make_room
    )


__all__ = ["Agent", "AgentError", "AgentSpecError", "Decoding", "check_agent_spec", "is_url", "load_agent"]
