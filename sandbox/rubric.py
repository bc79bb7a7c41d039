"""Scoring saved storyboards step by step, UEval-style: per-step rubric checks, an image rate and a text rate.

Every image step gets two image checks, the two the Critic makes: *intent* (the picture carries out the
step) and *faults* (nothing else changed, nothing drawn wrong or extra). Every step with text for the
reader gets a text check. A story's image rate is the share of its image checks met, its text rate the
share of its text checks met; "not sure" counts as not met, as in UEval.

Two judges: the sandbox oracle (exact, for sandbox pictures; it reads the pixels) and any engine agent (a
local VLM folder or an OpenAI-compatible endpoint) asked one rubric at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..core.agents.base import Agent, AgentError
from ..core.messages import fit_pixels, white_canvas
from ..core.protocol import ProtocolError, parse_answer
from ..core.storyboard import FILENAME, Storyboard
from .grading import judge_step, judge_text
from .world import WorldError, read

INTENT = "The second picture carries out this step: {step}"
FAULTS = (
    "Apart from what the step asks, nothing changed from the first picture to the second, and nothing in "
    "the second picture is drawn wrongly or added without being asked."
)
TEXT = "The step's text is right for the request and for the pictures: {text}"

JUDGE_PROMPT = """You grade one step of an illustrated sequence against one rubric.
{pictures}
The request: "{request}"
Step {number}: "{step}"
Rubric: {rubric}
Check only this rubric. Answer inside <answer></answer> with {{"criteria_met": true}} when it is met, \
{{"criteria_met": false}} when it is not, or {{"criteria_met": "not sure"}} when you cannot tell."""
_TWO_PICTURES = (
    "The first picture is before the step (a plain white canvas means the step starts a new picture); "
    "the second is after it."
)
_INPUT_PICTURES = "The pictures are the ones the request came with."


@dataclass
class Check:
    step: int
    kind: str  # intent | faults | text
    rubric: str
    met: bool
    answer: str = ""


@dataclass
class StoryScore:
    folder: str
    instruction: str
    checks: list[Check] = field(default_factory=list)

    def rate(self, kinds: Sequence[str]) -> float | None:
        chosen = [c.met for c in self.checks if c.kind in kinds]
        return sum(chosen) / len(chosen) if chosen else None

    @property
    def image_rate(self) -> float | None:
        return self.rate(("intent", "faults"))

    @property
    def text_rate(self) -> float | None:
        return self.rate(("text",))


class RubricJudge(Protocol):
    name: str

    def check(
        self, kind: str, rubric: str, images: Sequence[Image.Image], request: str, number: int, step: str
    ) -> tuple[bool, str]: ...


class OracleRubricJudge:
    """The sandbox oracle answering rubric checks exactly, from the pixels (sandbox pictures only)."""

    name = "sandbox-oracle"

    def check(self, kind, rubric, images, request, number, step):
        if len(images) != 2:
            return False, "the oracle needs a before and an after picture"
        try:
            before, after = read(images[0]), read(images[1])
        except WorldError as error:
            return False, str(error)
        if kind == "text":
            met = judge_text(step, before, after)
            return met, "the text says exactly what changed" if met else "the text does not say what changed"
        score = judge_step(step, before, after)
        met = score.intent == 10 if kind == "intent" else (score.preservation == 10 and score.quality == 10)
        return met, "; ".join(score.problems) or "as asked"


class AgentRubricJudge:
    """Any engine agent as a rubric judge; answers that do not parse count as not met."""

    def __init__(self, agent: Agent, *, max_pixels: int = 512 * 512, seed: int = 0):
        self.agent = agent
        self.name = f"judge:{getattr(agent, 'name', type(agent).__name__)}"
        self.max_pixels = max_pixels
        self.seed = seed

    def check(self, kind, rubric, images, request, number, step):
        pictures = _TWO_PICTURES if kind != "text" else _INPUT_PICTURES
        text = JUDGE_PROMPT.format(
            pictures=pictures, request=request, number=number, step=step, rubric=rubric
        )
        content = [{"type": "image", "image": fit_pixels(image, self.max_pixels)} for image in images]
        content.append({"type": "text", "text": text})
        try:
            answer = self.agent.complete(
                [{"role": "user", "content": content}], seed=self.seed, temperature=0.0
            )
        except AgentError as error:
            return False, f"the judge failed: {error}"
        try:
            data = parse_answer(answer, "rubric answer").data
        except ProtocolError as error:
            return False, str(error)
        met = data.get("criteria_met") if isinstance(data, dict) else None
        return met is True or (isinstance(met, str) and met.strip().lower() == "true"), answer


def score_storyboard(folder: str | Path, judge: RubricJudge) -> StoryScore:
    story = Storyboard.load(folder)
    score = StoryScore(str(folder), story.instruction)
    for index, step in enumerate(story.steps):
        sentence = step.plan_step.instruction or step.plan_step.prompt or step.text
        if step.image is not None:
            before = story.before_image(index)
            for kind, rubric in (("intent", INTENT.format(step=sentence)), ("faults", FAULTS)):
                met, answer = judge.check(
                    kind, rubric, [before, step.image], story.instruction, step.number, sentence
                )
                score.checks.append(Check(step.number, kind, rubric, met, answer))
        if step.text and step.image is None:
            images = _text_pictures(story, step.number)
            met, answer = judge.check(
                "text", TEXT.format(text=step.text), images, story.instruction, step.number, step.text
            )
            score.checks.append(Check(step.number, "text", TEXT.format(text=step.text), met, answer))
    return score


def _text_pictures(story: Storyboard, number: int) -> list[Image.Image]:
    """For a text step that explains given picture ``number``: that picture and the one before it."""
    inputs = story.input_images
    if 1 <= number <= len(inputs):
        before = inputs[number - 2] if number >= 2 else white_canvas(*inputs[0].size)
        return [before, inputs[number - 1]]
    return list(inputs)


def find_storyboards(path: str | Path) -> list[Path]:
    path = Path(path)
    if (path / FILENAME).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(FILENAME))


def score_storyboards(
    path: str | Path, judge: RubricJudge, progress: Callable[[Iterable], Iterable] | None = None
) -> list[StoryScore]:
    folders = find_storyboards(path)
    return [score_storyboard(folder, judge) for folder in (progress(folders) if progress else folders)]


def format_scores(scores: Sequence[StoryScore], judge_name: str) -> str:
    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}%"

    lines = ["| storyboard | image rate | text rate | checks |", "|---|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {Path(s.folder).name} | {pct(s.image_rate)} | {pct(s.text_rate)} | {len(s.checks)} |"
        )
    image = [s.image_rate for s in scores if s.image_rate is not None]
    text = [s.text_rate for s in scores if s.text_rate is not None]
    lines.append(
        f"| **mean** ({len(scores)} storyboards, judge {judge_name}) | "
        f"{pct(sum(image) / len(image) if image else None)} | "
        f"{pct(sum(text) / len(text) if text else None)} | {sum(len(s.checks) for s in scores)} |"
    )
    return "\n".join(lines)


def write_scores(scores: Sequence[StoryScore], path: str | Path) -> Path:
    from ..core.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [
        {
            "folder": s.folder,
            "instruction": s.instruction,
            "image_rate": s.image_rate,
            "text_rate": s.text_rate,
            "checks": [asdict(c) for c in s.checks],
        }
        for s in scores
    ]
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False))
    return path


__all__ = [
    "AgentRubricJudge",
    "Check",
    "OracleRubricJudge",
    "StoryScore",
    "format_scores",
    "score_storyboard",
    "score_storyboards",
    "write_scores",
]
