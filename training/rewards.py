"""The Critic's GRPO reward: format, verdict agreement, and the step reward from regenerating the image.

For one completion of a Critic RL row (before image, step instruction, prompt used, ground truth):

- ``format`` F is 1 when the completion is ``[<think>...</think>] <answer>{verdict}</answer>`` and nothing
  else, and the verdict parses (``core/protocol.parse_verdict``); a completion that fails it scores 0 overall:
  without a verdict there is nothing to agree and no prompt to try.
- ``accuracy`` A is 1 when the verdict agrees with the label.
- The step reward applies only where the label says the step failed. It estimates how well the refined
  prompt (else the prompt used) draws the step, not whether one draw got lucky: the prompt regenerates the
  step from the same before image with ``samples`` seeds (``seed``, ``seed + 1``, ...), the judge scores each
  new image, and the mean scores are compared with a baseline, mapped to [0, 1]:
  ``S = ((new - base) / 10 + 1) / 2`` (0.5 means no change). The baseline (``baseline``) is by default
  ``"resend"``: the failed prompt itself, redrawn under the same seeds, so re-sending the very prompt that
  failed earns exactly 0.5 and a refinement earns what it adds over a retry; ``"rejected"`` is the paper's,
  the rejected image's scores from the label (with ``samples=1`` the paper's reward). Where the label says
  the step passed, S_sem = S_q = 0.5.

``total = w_format*F + w_accuracy*A + w_semantics*S_sem + w_quality*S_q``; the default weights are the
paper's, ``0.5*F + 0.5*(0.2*A + 0.6*S_sem + 0.2*S_q)``.

Cost per failed row: ``samples`` generations and up to ``2 * samples`` judge calls for each distinct prompt
its completions test, plus the same for the failed prompt with ``baseline: resend`` (shared by the group, and
no extra cost when a completion re-sends it). Calls run in a thread pool of ``concurrency`` workers with a
timeout each, deduplicated within a batch and cached (in memory, and on disk with ``cache_dir``; a quality
score is cached by picture, so identical draws are judged once). A call that fails or times out makes that
completion abstain (all the completions of its row, for the baseline): its reward is None, which TRL leaves
out of the group baseline. It never crashes the batch and never stands in a made-up score, nor a mean over
fewer draws.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.generators.base import Generator
from ..core.protocol import ProtocolError, Verdict, parse_verdict
from .data import ImageRef, is_white, load_image
from .judge import Judge

log = logging.getLogger(__name__)

NEUTRAL = 0.5
BASELINES = ("resend", "rejected")
DEFAULT_SAMPLES, DEFAULT_BASELINE = 4, "resend"


def check_draws(samples: int, baseline: str) -> None:
    """The regenerate-and-judge term's draw settings, checked once for the config and the reward alike."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a whole number of draws, at least 1, got {samples!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


_SHAPE_RE = re.compile(r"\A\s*(?:<think>.*?</think>\s*)?<answer>.*?</answer>\s*\Z", re.DOTALL | re.IGNORECASE)
_SHAPE_THINK_RE = re.compile(
    r"\A\s*<think>.*?</think>\s*<answer>.*?</answer>\s*\Z", re.DOTALL | re.IGNORECASE
)


@dataclass(frozen=True)
class RewardWeights:
    format: float = 0.5
    accuracy: float = 0.1
    semantics: float = 0.3
    quality: float = 0.1

    @classmethod
    def from_dict(cls, data: dict[str, float] | None) -> RewardWeights:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown reward weight(s) {sorted(unknown)}; use {', '.join(sorted(known))}")
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"reward weight {key} must be a number >= 0, got {value!r}")
        return cls(**{k: float(v) for k, v in data.items()})


@dataclass(frozen=True)
class StepCase:
    """What the reward knows of one RL row."""

    original_instruction: str
    prompt_used: str
    before: ImageRef
    label_success: bool
    label_semantics: float
    label_quality: float


@dataclass
class RewardResult:
    total: float | None
    format: float = 0.0
    accuracy: float = 0.0
    semantics: float | None = None
    quality: float | None = None
    tested_prompt: str = ""
    judge_semantics: float | None = None  # the means over the draws of the tested prompt
    judge_quality: float | None = None
    baseline_semantics: float | None = None  # what the step part compares them with
    baseline_quality: float | None = None
    abstained: str = ""
    reason: str = ""


class StepFailed(RuntimeError):
    """The generator or the judge gave no result; the completion abstains."""


def check_format(
    text: str, *, require_think: bool = False, max_prompt_chars: int = 1000
) -> tuple[Verdict | None, str]:
    """The verdict of a well-formed completion, else None and what is wrong with it."""
    if not isinstance(text, str):
        return None, "not text"
    if not (_SHAPE_THINK_RE if require_think else _SHAPE_RE).match(text):
        think = "<think>...</think>" if require_think else "[<think>...</think>]"
        return None, f"not of the form {think}<answer>...</answer>"
    try:
        verdict = parse_verdict(text)
    except ProtocolError as error:
        return None, error.reason
    if len(verdict.refine_prompt) > max_prompt_chars:
        return None, f"refine_prompt is longer than {max_prompt_chars} characters"
    return verdict, ""


def improvement(new: float, label: float) -> float:
    """A judge score's change against the rejected image's, mapped from [-10, 10] to [0, 1]."""
    return min(1.0, max(0.0, ((new - label) / 10.0 + 1.0) / 2.0))


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as message lists; plain ones as text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        pieces = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            pieces.append(content or "")
        return "".join(pieces)
    return str(completion)


def image_digest(image: Image.Image) -> str:
    image = image.convert("RGB")
    return hashlib.sha256(repr(image.size).encode() + image.tobytes()).hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


class _Cache:
    """Images and scores by key: in memory (the most recent images only), and as files under ``root`` (written
    atomically) when given."""

    def __init__(self, root: str | Path | None, images_in_memory: int = 256):
        self.root = Path(root) if root else None
        self.memory: dict[str, Any] = {}
        self.images_in_memory = images_in_memory
        self._images: deque[str] = deque()

    def get(self, kind: str, key: str) -> Any:
        if key in self.memory:
            return self.memory[key]
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            if kind == "image":
                with Image.open(path) as image:
                    value = image.convert("RGB")
            else:
                value = float(json.loads(path.read_text(encoding="utf-8"))["score"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged cache entry is a miss, never a score
        self._remember(kind, key, value)
        return value

    def _remember(self, kind: str, key: str, value: Any) -> None:
        self.memory[key] = value
        if kind == "image":  # pictures are large: keep the latest few, the disk cache keeps the rest
            self._images.append(key)
            while len(self._images) > self.images_in_memory:
                self.memory.pop(self._images.popleft(), None)

    def put(self, kind: str, key: str, value: Any) -> None:
        self._remember(kind, key, value)
        if self.root is None:
            return
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        if kind == "image":
            value.save(tmp, format="PNG")
        else:
            tmp.write_text(json.dumps({"score": value}), encoding="utf-8")
        os.replace(tmp, path)

    def _path(self, kind: str, key: str) -> Path:
        if kind == "image":
            return self.root / "images" / f"{key}.png"
        return self.root / "scores" / f"{key}.json"


class CriticReward:
    """The reward function handed to ``GRPOTrainer`` (async: TRL awaits it alongside other async rewards)."""

    __name__ = "critic_reward"

    def __init__(
        self,
        generator: Generator,
        judge: Judge,
        *,
        weights: RewardWeights = RewardWeights(),
        seed: int = 0,
        samples: int = DEFAULT_SAMPLES,
        baseline: str = DEFAULT_BASELINE,
        concurrency: int = 4,
        timeout: float = 300.0,
        cache_dir: str | Path | None = None,
        require_think: bool = False,
        max_prompt_chars: int = 1000,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        check_draws(samples, baseline)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.generator = generator
        self.judge = judge
        self.weights = weights
        self.seed = seed
        self.samples = samples
        self.baseline = baseline
        self.timeout = timeout
        self.require_think = require_think
        self.max_prompt_chars = max_prompt_chars
        self.cache = _Cache(cache_dir)
        self.stats: Counter = Counter()
        # The pool bounds concurrency even when a timed-out call is still running in its thread.
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="critic-reward")
        self._concurrency = concurrency
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a semaphore per event loop
        self._inflight: dict[str, asyncio.Future] = {}
        self._befores: dict[str, tuple[Image.Image, str]] = {}

    # -- TRL entry point ----------------------------------------------------------------------------------
    async def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        *,
        origin_prompt: Sequence[str],
        rewritten_prompt: Sequence[str],
        before_image: Sequence[ImageRef],
        label_success: Sequence[bool],
        label_semantics: Sequence[float],
        label_quality: Sequence[float],
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        cases = [
            StepCase(*row)
            for row in zip(
                origin_prompt, rewritten_prompt, before_image, label_success, label_semantics, label_quality
            )
        ]
        results = await self.score([completion_text(c) for c in completions or []], cases)
        if log_metric is not None:
            for name, value in self.summary(results).items():
                if not math.isnan(value):  # a part no completion had this batch
                    log_metric(f"critic/{name}", value)
        if log_extra is not None:
            log_extra("tested_prompt", [r.tested_prompt for r in results])
            log_extra("abstained", [r.abstained for r in results])
        return [r.total for r in results]

    def score_sync(self, texts: Sequence[str], cases: Sequence[StepCase]) -> list[RewardResult]:
        return asyncio.run(self.score(texts, cases))

    # -- scoring ------------------------------------------------------------------------------------------
    async def score(self, texts: Sequence[str], cases: Sequence[StepCase]) -> list[RewardResult]:
        if len(texts) != len(cases):
            raise ValueError(f"{len(texts)} completions but {len(cases)} rows")
        results: list[RewardResult] = []
        pending: dict[int, tuple[asyncio.Future, asyncio.Future | None]] = {}
        estimates: dict[tuple, asyncio.Future] = {}

        def estimate(case: StepCase, prompt: str) -> asyncio.Future:
            # A group often repeats a prompt or re-sends the failed one: one estimate serves them all.
            before_id = id(case.before) if isinstance(case.before, Image.Image) else str(case.before)
            key = (before_id, case.original_instruction, prompt)
            if key not in estimates:
                estimates[key] = asyncio.ensure_future(self._estimate(case, prompt))
            return estimates[key]

        for index, (text, case) in enumerate(zip(texts, cases)):
            verdict, reason = check_format(
                text, require_think=self.require_think, max_prompt_chars=self.max_prompt_chars
            )
            if verdict is None:
                results.append(RewardResult(total=0.0, reason=reason))
                continue
            result = RewardResult(
                total=None, format=1.0, accuracy=float(verdict.accepted == bool(case.label_success))
            )
            results.append(result)
            if case.label_success:
                result.semantics = result.quality = NEUTRAL
                continue
            failed = case.prompt_used or case.original_instruction
            result.tested_prompt = verdict.refine_prompt or failed
            base = estimate(case, failed) if self.baseline == "resend" else None
            pending[index] = (estimate(case, result.tested_prompt), base)
        done = dict(
            zip(estimates.values(), await asyncio.gather(*estimates.values(), return_exceptions=True))
        )
        for index, result in enumerate(results):
            if index in pending:
                tested, base = pending[index]
                case = cases[index]
                outcome = done[tested]
                base_outcome = done[base] if base is not None else (case.label_semantics, case.label_quality)
                failure = next((o for o in (outcome, base_outcome) if isinstance(o, BaseException)), None)
                if failure is not None:
                    result.abstained = str(failure) or type(failure).__name__
                    continue
                result.judge_semantics, result.judge_quality = outcome
                result.baseline_semantics, result.baseline_quality = base_outcome
                result.semantics = improvement(outcome[0], base_outcome[0])
                result.quality = improvement(outcome[1], base_outcome[1])
            if result.format:
                w = self.weights
                result.total = (
                    w.format * result.format
                    + w.accuracy * result.accuracy
                    + w.semantics * result.semantics
                    + w.quality * result.quality
                )
        self.stats["completions"] += len(results)
        self.stats["abstained"] += sum(1 for r in results if r.abstained)
        return results

    @staticmethod
    def summary(results: Sequence[RewardResult]) -> dict[str, float]:
        """Batch means of the parts (the step parts over the completions that have them)."""

        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else float("nan")

        scored = [r for r in results if r.total is not None]
        return {
            "format": mean([r.format for r in results]),
            "accuracy": mean([r.accuracy for r in scored if r.format]),
            "semantics": mean([r.semantics for r in scored if r.tested_prompt]),
            "quality": mean([r.quality for r in scored if r.tested_prompt]),
            "abstained": sum(1 for r in results if r.abstained) / len(results) if results else 0.0,
        }

    async def _estimate(self, case: StepCase, prompt: str) -> tuple[float, float]:
        """The mean judge scores of ``prompt`` drawn with each of the ``samples`` seeds; any failed draw
        fails the estimate."""
        seeds = range(self.seed, self.seed + self.samples)
        draws = await asyncio.gather(
            *(self._step(case, prompt, seed) for seed in seeds), return_exceptions=True
        )
        failure = next((d for d in draws if isinstance(d, BaseException)), None)
        if failure is not None:
            raise failure
        return sum(d[0] for d in draws) / len(draws), sum(d[1] for d in draws) / len(draws)

    async def _step(self, case: StepCase, prompt: str, seed: int) -> tuple[float, float]:
        before, before_id = self._before(case.before)
        if is_white(before):
            width, height = before.size
            gen_key = _key(self.generator.name, "text", prompt, seed, width, height)

            def make():
                return self.generator.text_to_image(prompt, width=width, height=height, seed=seed)
        else:
            gen_key = _key(self.generator.name, "edit", before_id, prompt, seed)

            def make():
                return self.generator.edit(before, prompt, seed=seed)

        image = await self._cached("image", gen_key, make, "generator")
        if not isinstance(image, Image.Image):
            raise StepFailed(f"generator returned {type(image).__name__}, not an image")
        after_id = image_digest(image)
        instruction = case.original_instruction
        semantics, quality = await asyncio.gather(
            self._cached(
                "score",
                _key(self.judge.name, "semantics", before_id, after_id, instruction),
                lambda: self.judge.semantics(before, image, instruction),
                "judge",
            ),
            self._cached(
                "score",
                _key(self.judge.name, "quality", after_id),
                lambda: self.judge.quality(image),
                "judge",
            ),
        )
        for name, value in (("semantic", semantics), ("quality", quality)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
                raise StepFailed(f"the judge's {name} score {value!r} is not a number from 0 to 10")
        return float(semantics), float(quality)

    def _before(self, ref: ImageRef) -> tuple[Image.Image, str]:
        if isinstance(ref, Image.Image):
            image = ref.convert("RGB")
            return image, image_digest(image)
        key = str(ref)
        if key not in self._befores:
            try:
                image = load_image(key, max_pixels=None)
            except OSError as error:
                raise StepFailed(f"cannot open the before image {key}: {error}") from None
            if len(self._befores) > 256:
                self._befores.clear()
            self._befores[key] = (image, image_digest(image))
        return self._befores[key]

    async def _cached(self, kind: str, key: str, call: Callable[[], Any], who: str) -> Any:
        cached = self.cache.get(kind, key)
        if cached is not None:
            self.stats[f"{who}_cache_hits"] += 1
            return cached
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        future = asyncio.ensure_future(self._run(call, who))
        self._inflight[key] = future
        try:
            value = await asyncio.shield(future)
        finally:
            self._inflight.pop(key, None)
        self.cache.put(kind, key, value)
        return value

    async def _run(self, call: Callable[[], Any], who: str) -> Any:
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self._concurrency)
        async with slots:  # the timeout runs from the call's start, not from its wait behind the other draws
            return await self._call(loop, call, who)

    async def _call(self, loop: asyncio.AbstractEventLoop, call: Callable[[], Any], who: str) -> Any:
        self.stats[f"{who}_calls"] += 1
        try:
            value = await asyncio.wait_for(loop.run_in_executor(self._pool, call), self.timeout)
        except asyncio.TimeoutError:
            self.stats[f"{who}_timeouts"] += 1
            raise StepFailed(f"{who} gave no answer within {self.timeout:g} s") from None
        except (
            Exception
        ) as error:  # any backend failure (HTTP, CUDA, parse) abstains, never crashes the batch
            self.stats[f"{who}_failures"] += 1
            if self.stats[f"{who}_failures"] <= 5:
                log.warning(
                    "%s call failed, the completion abstains: %s: %s", who, type(error).__name__, error
                )
            raise StepFailed(f"{who} failed: {error}") from error
        if value is None:
            self.stats[f"{who}_failures"] += 1
            raise StepFailed(f"{who} returned nothing")
        return value

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "BASELINES",
    "DEFAULT_BASELINE",
    "DEFAULT_SAMPLES",
    "CriticReward",
    "NEUTRAL",
    "RewardResult",
    "RewardWeights",
    "StepCase",
    "StepFailed",
    "check_draws",
    "check_format",
    "completion_text",
    "improvement",
]
