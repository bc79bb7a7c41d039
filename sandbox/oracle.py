"""The oracle Planner and Critic: engine Agents that know the sandbox and answer in the official format.

They read the same chat messages a model would get (the rendered templates from core/, with the pictures)
and write ``<think>...</think><answer>{...}</answer>``. They are the sandbox's teachers: their answers are
the SFT targets, and the upper bound the shipped agents are measured against (``--planner oracle``,
``--critic oracle``). Their names say "oracle".

- The Planner splits a request into steps and writes each step's prompt in the request's own words (it
  plans before any picture exists, so relations stay unresolved); for a "describe" request it reads the
  pictures, each listed whole in its reasoning before the sentences that describe the changes.
- The Critic applies the step's prompt exactly to the before picture, compares with the after picture, and
  on a mismatch writes the canonical precise prompt, which the sandbox generator always draws right.
- The teacher Critic judges as the Critic does but writes its refined prompts as a good, imperfect model
  would (``TEACHER_STYLES``): its data holds retries that went wrong as well as right.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from PIL import Image

from ..core.errors import BadInput
from ..core.messages import IMAGE_MARKER, Message
from ..core.prompts import load_template
from ..core.protocol import Plan, PlanStep, Verdict
from .grading import as_scene, change_summary, judge_step, scene_summary, verdict_reasoning
from .language import KEEP, NOTHING_ELSE, parse, precise_prompt
from .tasks import Request, read_request
from .world import EMPTY, Scene, read, scene_key

PLANNER_NAME = "sandbox-oracle-planner"
CRITIC_NAME = "sandbox-oracle-critic"
TEACHER_CRITIC_NAME = "sandbox-teacher-critic"


class OracleError(BadInput):
    """Messages that are not a sandbox Planner or Critic call."""


# ---------------------------------------------------------------------------------------------------------
# Reading the messages back


def message_sequence(messages: Sequence[Message]) -> tuple[str, list[Image.Image]]:
    """All text of the messages with an <image> marker where each picture stands, and the pictures."""
    text, images = [], []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "image":
                text.append(IMAGE_MARKER)
                images.append(part["image"])
            else:
                text.append(part.get("text", ""))
    return "".join(text), images


def planner_input(messages: Sequence[Message]) -> tuple[str, str, list[Image.Image]]:
    """(mode, the user's request with <image> markers, the pictures) from Planner messages."""
    text, images = message_sequence(messages)
    for mode in ("narrative", "guidance"):
        head, tail = load_template(mode).split("text_input")
        if text.startswith(head) and text.endswith(tail):
            return mode, text[len(head) : len(text) - len(tail)], images
    raise OracleError("these messages are not a Planner call made from the built-in templates")


@lru_cache(maxsize=1)
def _critic_pattern() -> re.Pattern:
    template = load_template("critic")
    marks = ("\x00ORIGINAL\x00", "\x00USED\x00")
    text = template.render(original_instruction=marks[0], rewritten_prompt=marks[1])
    if text.lower().startswith(IMAGE_MARKER):  # as critic_messages does for templates that start with markers
        text = re.sub(re.escape(IMAGE_MARKER), "", text, count=2, flags=re.I)
    pattern = re.escape(text.lstrip("\n"))
    for mark, group in zip(marks, ("original", "used")):
        escaped = re.escape(mark)
        pattern = pattern.replace(escaped, f"(?P<{group}>.*?)", 1).replace(escaped, f"(?P={group})")
    return re.compile(pattern, re.S)


def critic_input(messages: Sequence[Message]) -> tuple[Image.Image, Image.Image, str, str]:
    """(before, after, original step prompt, prompt used) from Critic messages."""
    text, images = message_sequence(messages)
    if len(images) != 2:
        raise OracleError(f"a Critic call has two pictures, these messages have {len(images)}")
    match = _critic_pattern().fullmatch(text.replace(IMAGE_MARKER, "", 2))
    if not match:
        raise OracleError("these messages are not a Critic call made from the built-in template")
    return images[0], images[1], match.group("original"), match.group("used")


# ---------------------------------------------------------------------------------------------------------
# Answers


def answer(reasoning: str, data: dict) -> str:
    """The official output: reasoning in <think>, the object as a Python literal in <answer>."""
    return f"<think>{reasoning}</think>\n<answer>{data!r}</answer>"


def step_name(sentence: str) -> str:
    sentence_ = parse(sentence)
    if not sentence_.commands:
        return "Step"
    command = sentence_.commands[0]
    verb = {"recolour": "Recolour", "resize": "Resize"}.get(command.verb, command.verb.capitalize())
    if command.new:
        names = " and ".join(" ".join(w for w in (n.colour, n.shape) if w) for n in command.new)
    else:
        names = " ".join(w for w in (command.target.colour, command.target.shape) if w)
    return f"{verb} {names}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def plan_for(request: Request, images: Sequence[Image.Image] = ()) -> tuple[Plan, str]:
    """The teacher's plan for a request, and its reasoning."""
    if request.kind == "describe":
        scenes = [read(image) for image in images]
        steps = []
        for number, (before, after) in enumerate(zip([EMPTY] + scenes, scenes), 1):
            steps.append(
                PlanStep(number, f"Step {number}", None, None, _sentence(change_summary(before, after)))
            )
        # Each picture read whole first, as the Critic does: each answer then compares two lists written just
        # before it, and its words are copied from them.
        seen = " ".join(
            f"Picture {number}: {scene_summary(scene)}." for number, scene in enumerate(scenes, 1)
        )
        reasoning = f"{seen} {len(scenes)} pictures, {len(scenes)} steps; one sentence for each change."
        return Plan(tuple(steps)), reasoning
    first = request.pictures + 1 if request.kind == "continue" else 1
    steps = tuple(
        PlanStep(first + i, step_name(sentence), _sentence(sentence), sentence, None)
        for i, sentence in enumerate(request.sentences)
    )
    reasoning = f"{len(steps)} steps, one for each change the request names."
    return Plan(steps), reasoning


def verdict_for(before: Image.Image | Scene, after: Image.Image | Scene, original: str, used: str) -> Verdict:
    """The teacher's verdict: the step's prompt applied exactly to the before picture, checked on after."""
    intent = original.strip() or used.strip()
    score = judge_step(intent, before, after)
    if score.error and used.strip() and used.strip() != intent:
        score = judge_step(used, before, after)  # the original cannot be read here: judge the prompt used
    if score.success:
        return Verdict(True, used or original, verdict_reasoning(score))
    if score.expected is None:
        return Verdict(False, used or original, verdict_reasoning(score))
    return Verdict(False, precise_prompt(score.before, score.expected), verdict_reasoning(score))


# How the teacher Critic writes a refined prompt, with its share: the canonical precise prompt half the time;
# otherwise one vague in a way the sandbox generator punishes: the precise clauses without the closing "keep
# everything else unchanged" / "nothing else" (a collateral change or an extra object), or the step again in
# the request's own words (a place by relation, a colour by reference, no closing clause), the useless
# refinement that re-sends what failed.
TEACHER_STYLES = {"precise": 0.5, "unclosed": 0.25, "own words": 0.25}


def teacher_verdict(
    before: Image.Image | Scene, after: Image.Image | Scene, original: str, used: str
) -> Verdict:
    """The teacher Critic's verdict: the oracle's judgement, with a refined prompt in one of
    ``TEACHER_STYLES``, drawn from a stream fixed by the call, so a storyboard relabelled later gets the
    verdict its rollout got."""
    before, after = as_scene(before), as_scene(after)
    verdict = verdict_for(before, after, original, used)
    step = original.strip() or used.strip()
    if verdict.accepted or verdict.refine_prompt in (used, original):  # nothing to rewrite
        return verdict
    key = "\x00".join((step, used, scene_key(before), scene_key(after)))
    rng = random.Random(f"sandbox-teacher-critic:{key}")
    style = rng.choices(list(TEACHER_STYLES), weights=list(TEACHER_STYLES.values()))[0]
    if style == "unclosed":
        clauses = [c for c in verdict.refine_prompt.split("; ") if c not in (KEEP, NOTHING_ELSE)]
        return replace(verdict, refine_prompt="; ".join(clauses) or verdict.refine_prompt)
    if style == "own words":
        return replace(verdict, refine_prompt=step)
    return verdict


class OraclePlanner:
    """The sandbox's teacher Planner as an engine Agent (it reads the request, never a model)."""

    name = PLANNER_NAME

    def complete(
        self, messages: Sequence[Message], *, seed: int, temperature: float | None = None, cancel=None
    ) -> str:
        _, request_text, images = planner_input(messages)
        request = read_request(request_text)
        if request is None:
            return answer(
                "This is not a sandbox request; I can only plan sandbox scenes.", {"execution_plan": []}
            )
        plan, reasoning = plan_for(request, images)
        return answer(reasoning, plan.to_dict())


class OracleCritic:
    """The sandbox's oracle Critic as an engine Agent: it reads both pictures' pixels (``verdict_for``)."""

    name = CRITIC_NAME
    judge = staticmethod(verdict_for)

    def complete(
        self, messages: Sequence[Message], *, seed: int, temperature: float | None = None, cancel=None
    ) -> str:
        before, after, original, used = critic_input(messages)
        verdict = self.judge(before, after, original, used)
        return answer(verdict.reasoning, verdict.to_dict())


class TeacherCritic(OracleCritic):
    """The teacher Critic as an engine Agent (the rollouts of the teacher data): :func:`teacher_verdict`."""

    name = TEACHER_CRITIC_NAME
    judge = staticmethod(teacher_verdict)


__all__ = [
    "CRITIC_NAME",
    "OracleCritic",
    "TEACHER_CRITIC_NAME",
    "TEACHER_STYLES",
    "TeacherCritic",
    "OracleError",
    "OraclePlanner",
    "PLANNER_NAME",
    "answer",
    "critic_input",
    "message_sequence",
    "plan_for",
    "planner_input",
    "step_name",
    "teacher_verdict",
    "verdict_for",
]
