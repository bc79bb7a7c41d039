"""The Agent protocol: chat messages in, text out. The loop cannot tell the backends apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .. import settings
from ..errors import BackendError, BadInput
from ..messages import Message


class AgentError(BackendError):
    """An agent backend could not answer: an unreachable endpoint, an HTTP error, a model that fails to
    load."""


class PromptTooLong(AgentError, BadInput):
    """The prompt does not fit the model's context: the user must shorten it."""


class AgentSpecError(AgentError, BadInput):
    """The user named an agent that cannot be one: no such folder, no config.json, a URL without a model."""


@dataclass(frozen=True)
class Decoding:
    """How an agent decodes. Temperature 0 is greedy; above 0 it samples, seeded per call."""

    max_new_tokens: int = settings.DEFAULT_MAX_NEW_TOKENS
    temperature: float = settings.DEFAULT_TEMPERATURE
    top_p: float = 1.0
    resample_temperature: float = settings.RESAMPLE_TEMPERATURE

    def __post_init__(self) -> None:
        settings.check_range("max_new_tokens", self.max_new_tokens, 1, settings.MAX_NEW_TOKENS_LIMIT)
        if self.temperature < 0 or self.resample_temperature <= 0:
            raise BadInput("temperature must be >= 0 and resample_temperature > 0")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top_p must be in (0, 1], got {self.top_p}")


@runtime_checkable
class Agent(Protocol):
    """A VLM that answers one user turn. ``name`` identifies it in storyboards and caches."""

    name: str

    def complete(
        self,
        messages: Sequence[Message],
        *,
        seed: int,
        temperature: float | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> str:
        """Answer ``messages``; ``temperature`` None means the agent's own decoding default.

        ``cancel`` is looked at while the answer is being made; once it returns True the call stops promptly
        and raises :class:`~interleave_thinker.core.errors.Cancelled`.
        """
        ...
