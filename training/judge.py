"""The judge the GRPO step reward asks: semantic consistency and perceptual quality, each 0-10.

A judge answers two questions:

- ``semantics(before, after, instruction)``: does the after image carry out the instruction, keeping the rest?
- ``quality(image)``: is the image free of artefacts?

:class:`AgentJudge` asks any engine agent (a local VLM folder or an OpenAI-compatible endpoint) with the
prompts in ``training/prompts/``, and parses the answer strictly: one JSON object
``{"score": [a, b], "reasoning": ...}`` with two numbers from 0 to 10; the score is the lower of the two.
Anything else raises :class:`JudgeError`, so the reward abstains instead of guessing.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..core.agents.base import Agent, AgentError, Decoding
from ..core.errors import BackendError
from ..core.messages import MAX_PIXELS, fit_pixels

PROMPTS = Path(__file__).resolve().parent / "prompts"
SEMANTICS_PROMPT = PROMPTS / "judge_semantics.txt"
QUALITY_PROMPT = PROMPTS / "judge_quality.txt"
_FENCE_RE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL | re.IGNORECASE)


class JudgeError(BackendError):
    """The judge gave no usable score: the call failed or its answer did not parse."""


@runtime_checkable
class Judge(Protocol):
    name: str

    def semantics(self, before: Image.Image, after: Image.Image, instruction: str) -> float:
        """0-10: how well ``after`` carries out ``instruction`` on ``before``."""
        ...

    def quality(self, image: Image.Image) -> float:
        """0-10: how free of artefacts ``image`` is."""
        ...


def parse_scores(text: str, count: int = 2) -> list[float]:
    """The ``score`` list of a judge answer, or JudgeError. Accepts one JSON object, optionally in a code
    fence."""
    if not isinstance(text, str):
        raise JudgeError(f"the judge answered {type(text).__name__}, not text")
    body = text.strip()
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        raise JudgeError(f"the judge's answer is not one JSON object: {body[:120]!r}") from None
    if not isinstance(data, dict) or "score" not in data:
        raise JudgeError("the judge's answer has no 'score' key")
    scores = data["score"]
    if not isinstance(scores, list) or len(scores) != count:
        raise JudgeError(f"'score' must be a list of {count} numbers, got {scores!r}")
    for value in scores:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JudgeError(f"'score' holds {value!r}, not a number")
        if not 0 <= value <= 10:
            raise JudgeError(f"score {value} is outside 0-10")
    return [float(value) for value in scores]


def load_prompt(path: str | Path, placeholders: Sequence[str]) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise JudgeError(f"cannot read judge prompt {path}: {error}") from None
    missing = [name for name in placeholders if "{" + name + "}" not in text]
    if missing:
        raise JudgeError(
            f"judge prompt {path} lacks the placeholder(s) {', '.join('{' + m + '}' for m in missing)}"
        )
    return text


class AgentJudge:
    """A judge backed by an engine agent. Local models answer one call at a time; endpoints in parallel."""

    def __init__(
        self,
        agent: Agent,
        *,
        semantics_prompt: str | Path = SEMANTICS_PROMPT,
        quality_prompt: str | Path = QUALITY_PROMPT,
        max_pixels: int = MAX_PIXELS,
        seed: int = 0,
    ):
        self.agent = agent
        self.name = f"judge:{getattr(agent, 'name', type(agent).__name__)}"
        self.semantics_text = load_prompt(semantics_prompt, ["instruction"])
        self.quality_text = load_prompt(quality_prompt, [])
        self.max_pixels = max_pixels
        self.seed = seed
        # Two threads generating on one local model fight over its memory and gain nothing.
        remote = type(agent).__name__ == "OpenAIAgent"
        self._lock = None if remote else threading.Lock()

    def semantics(self, before: Image.Image, after: Image.Image, instruction: str) -> float:
        text = self.semantics_text.replace("{instruction}", instruction)
        return min(self._ask([before, after], text))

    def quality(self, image: Image.Image) -> float:
        return min(self._ask([image], self.quality_text))

    def _ask(self, images: list[Image.Image], text: str) -> list[float]:
        content: list[dict[str, Any]] = [
            {"type": "image", "image": fit_pixels(i, self.max_pixels)} for i in images
        ]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        try:
            if self._lock is None:
                answer = self.agent.complete(messages, seed=self.seed, temperature=0.0)
            else:
                with self._lock:
                    answer = self.agent.complete(messages, seed=self.seed, temperature=0.0)
        except AgentError as error:
            raise JudgeError(f"{self.name} failed: {error}") from error
        return parse_scores(answer)


def load_judge(
    spec: str,
    *,
    model: str | None = None,
    api_key_env: str | None = None,
    max_new_tokens: int = 512,
    timeout: float = 120.0,
    semantics_prompt: str | Path = SEMANTICS_PROMPT,
    quality_prompt: str | Path = QUALITY_PROMPT,
) -> AgentJudge:
    """A VLM judge from a local model folder or an OpenAI-compatible URL (keys only from ``api_key_env``).

    The training config is the researcher's own file, so its URL and key variable are trusted like CLI flags.
    """
    from ..core.agents import is_url, load_agent
    from ..core.endpoints import EndpointPolicy

    policy = EndpointPolicy.machine().allow(endpoints=[spec] if is_url(spec) else [], key_envs=[api_key_env])

    agent = load_agent(
        spec,
        model=model,
        api_key_env=api_key_env,
        decoding=Decoding(max_new_tokens=max_new_tokens),
        timeout=timeout,
        policy=policy,
    )
    return AgentJudge(agent, semantics_prompt=semantics_prompt, quality_prompt=quality_prompt)


__all__ = ["AgentJudge", "Judge", "JudgeError", "load_judge", "parse_scores"]
