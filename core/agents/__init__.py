"""Agent backends: a local transformers folder, or an OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

from .base import Agent, AgentError, Decoding


def is_url(spec: str) -> bool:
    return str(spec).strip().lower().startswith(("http://", "https://"))


def load_agent(
    spec: str,
    *,
    model: str | None = None,
    api_key_env: str | None = None,
    decoding: Decoding = Decoding(),
    dtype: str = "auto",
    device: str = "auto",
    memory: str = "keep",
    timeout: float = 120.0,
) -> Agent:
    """An agent from a folder path or an endpoint URL (``model`` names the served model)."""
    if is_url(spec):
        from .openai_agent import OpenAIAgent

        return OpenAIAgent(spec, model or "", api_key_env=api_key_env, decoding=decoding, timeout=timeout)
    from .transformers_agent import TransformersAgent

    return TransformersAgent(spec, dtype=dtype, device=device, decoding=decoding, memory=memory)


__all__ = ["Agent", "AgentError", "Decoding", "is_url", "load_agent"]
