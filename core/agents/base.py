"""The Agent protocol: chat messages in, text out. The loop cannot tell the backends apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..messages import Message


class AgentError(RuntimeError):
    """An agent backend could not answer: a missing model folder, an unreachable endpoint, an HTTP error."""


@dataclass(frozen=True)
class Decoding:
    """How an agent decodes. Temperature 0 is greedy; above 0 it samples, seeded per call."""

    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    # Re-sampling after an unparseable answer must differ from the first try, so it never runs greedy.
    resample_temperature: float = 0.7

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 32768:
            raise ValueError(f"max_new_tokens must be between 1 and 32768, got {self.max_new_tokens}")
        if self.temperature < 0 or self.resample_temperature <= 0:
            raise ValueError("temperature must be >= 0 and resample_temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@runtime_checkable
class Agent(Protocol):
    """A VLM that answers one user turn. ``name`` identifies it in storyboards and caches."""

    name: str

    def complete(self, messages: Sequence[Message], *, seed: int, temperature: float | None = None) -> str:
        """Answer ``messages``; ``temperature`` None means the agent's own decoding default."""
        ...
