"""Agent backends: a local transformers folder, or an OpenAI-compatible HTTP endpoint.

:func:`load_agent` is the one loader: the CLI, the nodes, the sandbox and training's judge all call it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
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
    quantize: str = settings.DEFAULT_QUANTIZATION,
    host=None,
    fast_decoding: bool = settings.DEFAULT_FAST_DECODING,
) -> Agent:
    """An agent from a model folder or an endpoint URL (``model`` names the served model).

    ``policy`` says which endpoints and key variables may be used (default: what the machine allows, see
    ``core/endpoints.py``). ``make_room(bytes, device)`` lets a host free accelerator memory before a local
    agent moves there; ``host`` (an ``AgentHost``) takes over where a local agent's weights live. ``quantize``
    (none, int8, nf4) is how a local agent stores its linear layers; ``fast_decoding`` gives a local agent a
    static KV cache (compiled on an accelerator), an endpoint ignores it.
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
        spec,
        dtype=dtype,
        device=device,
        decoding=decoding,
        memory=memory,
        make_room=make_room,
        quantize=quantize,
        host=host,
        fast_decoding=fast_decoding,
    )


class SerialAgent:
    """``agent`` behind one lock: any number of threads may call it, one answer is made at a time (a local
    model holds one device and one cache). The rest (``name``, ``decoding``, ``info``) reads through."""

    concurrent_safe = True

    def __init__(self, agent: Agent, lock: threading.Lock | None = None):
        self.agent = agent
        self.lock = lock or threading.Lock()

    def __getattr__(self, name: str):
        if name == "agent":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.agent, name)

    def complete(
        self, messages: Sequence, *, seed: int, temperature: float | None = None, cancel=None
    ) -> str:
        with self.lock:
            return self.agent.complete(messages, seed=seed, temperature=temperature, cancel=cancel)

    def __repr__(self) -> str:
        return f"SerialAgent({self.agent!r})"


__all__ = [
    "Agent",
    "AgentError",
    "AgentSpecError",
    "Decoding",
    "SerialAgent",
    "check_agent_spec",
    "is_url",
    "load_agent",
]
