"""The data contracts: Plan, PlanStep and Verdict, and tolerant parsing of agent output.

The wire format is the official InterleaveThinker schema (the released weights were trained on it):

    plan:    {"execution_plan": [{"step_number", "step_name", "instruction", "prompt",
                                 "auxiliary_text"}, ...]}
    verdict: {"previous_step_success": bool, "refine_prompt": str}

Agents write it inside ``<answer>...</answer>`` after an optional ``<think>`` block, often as a Python literal
(single quotes, None, True) rather than JSON, so parsing tries strict JSON, then a Python literal, then a
repaired JSON. Every failure raises :class:`ProtocolError`, which carries a short excerpt of the text.
"""

from __future__ import annotations

import ast
import json
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InterleaveThinkerError

# A plan longer than this is a runaway generation, not a story.
MAX_PLAN_STEPS = 64
# Only this much of an output is examined: 32768 new tokens (the agents' upper bound) fit, a runaway loop of
# megabytes does not. Every pass below is linear in it.
MAX_PARSE_CHARS = 200_000
# A plan nests 3 levels ({"execution_plan": [{...}]}), a verdict 1. The Python-literal and repair passes
# recurse per level (the repair library's time grows with the square of the depth and explodes near the
# recursion limit; ast raises MemoryError or RecursionError), so deeper text is refused before either sees it.
MAX_NESTING = 32
# The repair pass is pure Python: up to ~20 microseconds a character on garbage, where strict JSON and
# literal_eval take well under one on a real answer. This fits a full 64-step plan at ~500 characters a step.
MAX_REPAIR_CHARS = 32_000

PLAN_KEYS = ("step_number", "step_name", "instruction", "prompt", "auxiliary_text")
VERDICT_SUCCESS_KEYS = ("previous_step_success", "success")
VERDICT_PROMPT_KEYS = ("refine_prompt", "refined_prompt")

# Tags and fences are located by one left-to-right pass over fixed strings. Lazy patterns such as
# "<answer>(.*?)</answer>" rescan to the end of the text from every unclosed opening tag: quadratic on
# looping output.
_TAG_RE = re.compile(r"<(/?)(answer|think)>", re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"</think>", re.IGNORECASE)
_FENCE = "```"
_FENCE_LANGUAGE_RE = re.compile(r"(?:json|python)?\s*", re.IGNORECASE)
# For the nesting check: brackets, and quoted strings (one not closed on its line ends there, its closing
# group empty).
_NOT_BRACKET_RE = re.compile(r"[^\[\](){}]+")
_ONE_BRACKET_KIND = str.maketrans("[{]}", "(())")
_STRING_RE = re.compile(r""""[^"\\\n]*(?:\\.[^"\\\n]*)*("?)|'[^'\\\n]*(?:\\.[^'\\\n]*)*('?)""")
# A field that itself holds a serialised plan: the degenerate output the official guard looks for.
_SERIALISED_STEP_RE = re.compile(r"""['"]step_number['"]\s*:""")


class ProtocolError(InterleaveThinkerError, ValueError):
    """Agent output that is not a valid plan or verdict. ``excerpt`` is a short piece of the offending
    text."""

    def __init__(self, what: str, reason: str, text: str = ""):
        self.what = what
        self.reason = reason
        self.excerpt = excerpt(text)
        message = f"invalid {what}: {reason}"
        if self.excerpt:
            message += f" (output began: {self.excerpt!r})"
        super().__init__(message)


def excerpt(text: str, limit: int = 160) -> str:
    # Only the head is needed: collapsing the whitespace of a whole runaway output costs more than parsing it.
    text = " ".join(str(text).lstrip()[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------------
# Data classes


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan. ``prompt`` goes to the generator; a step without one is text only."""

    step_number: int
    step_name: str = ""
    instruction: str | None = None
    prompt: str | None = None
    auxiliary_text: str | None = None

    @property
    def makes_image(self) -> bool:
        return bool(self.prompt)

    @property
    def display_text(self) -> str:
        """What the reader sees for this step: the auxiliary text, else the instruction."""
        return self.auxiliary_text or self.instruction or ""

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in PLAN_KEYS}


@dataclass(frozen=True)
class Plan:
    steps: tuple[PlanStep, ...]
    reasoning: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"execution_plan": [step.to_dict() for step in self.steps]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, reasoning: str = "", max_steps: int = MAX_PLAN_STEPS) -> Plan:
        return _validate_plan(data, reasoning=reasoning, max_steps=max_steps, text=_safe_dump(data))

    @classmethod
    def single_step(cls, instruction: str) -> Plan:
        """The fallback plan: the instruction itself as one text-to-image step."""
        instruction = instruction.strip()
        return cls((PlanStep(1, "Result", instruction, instruction, None),))


@dataclass(frozen=True)
class Verdict:
    """The Critic's judgement of one attempt. ``refine_prompt`` is the full replacement prompt for a retry."""

    accepted: bool
    refine_prompt: str = ""
    reasoning: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"previous_step_success": self.accepted, "refine_prompt": self.refine_prompt}


@dataclass(frozen=True)
class AgentAnswer:
    """An agent output split into its reasoning (``<think>``) and the parsed answer object."""

    reasoning: str
    data: Any


# ---------------------------------------------------------------------------------------------------------
# Parsing


def parse_plan(text: str, max_steps: int = MAX_PLAN_STEPS) -> Plan:
    """Parse Planner output into a validated :class:`Plan` or raise :class:`ProtocolError`."""
    answer = parse_answer(text, "plan")
    return _validate_plan(answer.data, reasoning=answer.reasoning, max_steps=max_steps, text=text)


def parse_verdict(text: str) -> Verdict:
    """Parse Critic output into a :class:`Verdict` or raise :class:`ProtocolError`."""
    answer = parse_answer(text, "verdict")
    data = answer.data
    if not isinstance(data, Mapping):
        raise ProtocolError("verdict", f"expected an object, got {type(data).__name__}", text)
    accepted = _first_present(data, VERDICT_SUCCESS_KEYS)
    if accepted is _MISSING:
        raise ProtocolError("verdict", "no 'previous_step_success' key", text)
    accepted = _as_bool(accepted)
    if accepted is None:
        raise ProtocolError("verdict", "'previous_step_success' is not true or false", text)
    prompt = _first_present(data, VERDICT_PROMPT_KEYS)
    if prompt is _MISSING or prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ProtocolError("verdict", "'refine_prompt' is not a string", text)
    prompt = prompt.strip()
    if _SERIALISED_STEP_RE.search(prompt):
        raise ProtocolError("verdict", "'refine_prompt' holds a serialised plan", text)
    return Verdict(accepted=accepted, refine_prompt=prompt, reasoning=answer.reasoning)


def parse_answer(text: str, what: str = "answer") -> AgentAnswer:
    """Find the answer object in agent output: the ``<answer>`` block, else the whole text."""
    if not isinstance(text, str):
        raise ProtocolError(what, f"expected text, got {type(text).__name__}")
    text = text[:MAX_PARSE_CHARS]
    tags = _scan_tags(text)
    reasoning = text[slice(*tags.first_think)].strip() if tags.first_think else ""
    if tags.last_answer:  # only the last block is parsed, however many a looping output holds
        body = text[slice(*tags.last_answer)]
    elif tags.last_answer_open is not None:
        body = text[tags.last_answer_open :]  # an answer cut off by the token limit
    else:
        body = _without_spans(text, tags.think_blocks)
        close = None if reasoning else _THINK_CLOSE_RE.search(body)
        if close:  # the template put <think> in the prompt: everything before </think> is reasoning
            reasoning = body[: close.start()].strip()
            body = body[close.end() :]
    body = _unfence(body.strip())
    if not body:
        raise ProtocolError(what, "no answer found", text)
    data = _load_object(body)
    if data is _TOO_DEEP:
        raise ProtocolError(what, f"the answer nests deeper than {MAX_NESTING} levels", text)
    if data is _TOO_LONG:
        reason = "the answer is not a JSON or Python object, and too long to repair"
        raise ProtocolError(what, f"{reason} (over {MAX_REPAIR_CHARS:,} characters)", text)
    if data is _MISSING:
        raise ProtocolError(what, "the answer is not a JSON or Python object", text)
    return AgentAnswer(reasoning=reasoning, data=data)


_MISSING: Any = object()
_TOO_DEEP: Any = object()
_TOO_LONG: Any = object()


@dataclass
class _Tags:
    """Where the tags are, read as the lazy patterns read them: a block runs from an opening tag to the first
    closing tag after it, and the next block starts after that. Spans are (start, end) of the content."""

    first_think: tuple[int, int] | None = None
    think_blocks: list[tuple[int, int]] = field(default_factory=list)  # whole blocks, tags included
    last_answer: tuple[int, int] | None = None
    last_answer_open: int | None = None  # end of the last <answer> tag


def _scan_tags(text: str) -> _Tags:
    tags = _Tags()
    think_open = answer_open = None
    for match in _TAG_RE.finditer(text):
        closing, name = match.group(1), match.group(2).lower()
        if name == "answer":
            if not closing:
                tags.last_answer_open = match.end()
                if answer_open is None:
                    answer_open = match.end()
            elif answer_open is not None:
                tags.last_answer = (answer_open, match.start())
                answer_open = None
        elif not closing:
            if think_open is None:
                think_open = match
        elif think_open is not None:
            if tags.first_think is None:
                tags.first_think = (think_open.end(), match.start())
            tags.think_blocks.append((think_open.start(), match.end()))
            think_open = None
    return tags


def _without_spans(text: str, spans: list[tuple[int, int]]) -> str:
    pieces, at = [], 0
    for start, end in spans:
        pieces.append(text[at:start])
        at = end
    pieces.append(text[at:])
    return "".join(pieces)


def _unfence(body: str) -> str:
    """The inside of the first fenced block (```json, ```python or bare), else the body unchanged."""
    start = body.find(_FENCE)
    if start == -1:
        return body
    inside = _FENCE_LANGUAGE_RE.match(body, start + len(_FENCE)).end()
    # A language name and whitespace hold no backtick, so no closing fence was skipped over.
    end = body.find(_FENCE, inside)
    return body if end == -1 else body[inside:end].strip()


def _load_object(body: str) -> Any:
    """Strict JSON, then a Python literal, then repaired JSON; the outermost braces first.

    At most two candidates (the outermost braces, the whole body) and one repair: a fixed number of linear
    passes.
    """
    candidates = [body]
    start, end = body.find("{"), body.rfind("}")
    if start != -1 and end > start and (start, end) != (0, len(body) - 1):
        # When the body starts at that "{", whatever follows the last "}" can only be space or a comment for
        # the body to parse, and then the braces parse too: the body is not parsed a second time.
        candidates = [body[start : end + 1]] + ([body] if start else [])
    deep = []
    for candidate in candidates:
        try:  # C, fails fast however deep the text nests
            data = json.loads(candidate)
        except (ValueError, RecursionError, MemoryError):
            data = None
        if isinstance(data, (dict, list)):
            return data
        deep.append(_too_deep(candidate))
        if deep[-1]:
            continue
        try:
            data = _literal(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(data, (dict, list)):
            return data
    if deep[0]:
        return _TOO_DEEP
    if len(candidates[0]) > MAX_REPAIR_CHARS:
        return _TOO_LONG
    repaired = _repair(candidates[0])
    if isinstance(repaired, (dict, list)) and repaired:
        return repaired
    return _MISSING


def _too_deep(text: str) -> bool:
    """Whether a parser could nest brackets deeper than MAX_NESTING in ``text``; linear, at C speed.

    Judged outside quoted strings: what a parser sees when every string is closed, as in a complete answer.
    A string left open (a stray apostrophe, a missing quote, a cut-off answer) makes the strings ambiguous,
    and ``'{{{{`` costs the repair pass as much as ``{{{{``: then every bracket counts, with twice the room
    for the brackets that really are in strings. A looping output such as ``{{{{`` or ``{"a{"a{"a`` is deep
    both ways.
    """
    if _brackets_deeper(_STRING_RE.sub("", text), MAX_NESTING):
        return True
    left_open = ("", "") in _STRING_RE.findall(text)  # neither closing quote matched
    return left_open and _brackets_deeper(text, 2 * MAX_NESTING)


def _brackets_deeper(text: str, limit: int) -> bool:
    # Each pass deletes the innermost bracket pairs, so the passes count the nesting of what is balanced; the
    # openers never closed add to it. Their sum is at least the true depth and at most twice it.
    brackets = _NOT_BRACKET_RE.sub("", text).translate(_ONE_BRACKET_KIND)
    levels = 0
    while len(reduced := brackets.replace("()", "")) < len(brackets):
        brackets, levels = reduced, levels + 1
        if levels > limit:
            return True
    return levels + brackets.count("(") > limit


def _literal(text: str) -> Any:
    # literal_eval builds only literals: no names, no calls, nothing executed. Text without a bracket cannot
    # give a dict or a list, so it is not parsed whole for nothing.
    if "{" not in text and "[" not in text:
        raise ValueError("no dict or list in the text")
    return ast.literal_eval(text)


def _repair(text: str) -> Any:
    import json_repair

    try:
        return json_repair.loads(text)
    except Exception:  # the repair library has no narrow error contract; any failure means "not an object"
        return _MISSING


# ---------------------------------------------------------------------------------------------------------
# Validation


def _validate_plan(data: Any, *, reasoning: str, max_steps: int, text: str) -> Plan:
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if isinstance(data, Mapping):
        if "execution_plan" not in data:
            raise ProtocolError("plan", "no 'execution_plan' key", text)
        raw_steps = data["execution_plan"]
    elif isinstance(data, list):
        raw_steps = data
    else:
        raise ProtocolError("plan", f"expected an object, got {type(data).__name__}", text)
    if not isinstance(raw_steps, list):
        raise ProtocolError("plan", "'execution_plan' is not a list", text)
    if not raw_steps:
        raise ProtocolError("plan", "the plan has no steps", text)
    if len(raw_steps) > max_steps:
        raise ProtocolError(
            "plan", f"the plan has {len(raw_steps)} steps, more than the limit of {max_steps}", text
        )

    first = raw_steps[0].get("step_number") if isinstance(raw_steps[0], Mapping) else None
    start = _as_int(first)
    start = start if start is not None and 1 <= start <= 10_000 else 1  # guidance plans continue a sequence
    steps = []
    for index, raw in enumerate(raw_steps):
        if not isinstance(raw, Mapping):
            raise ProtocolError("plan", f"step {index + 1} is not an object", text)
        fields = {}
        for key in ("step_name", "instruction", "prompt", "auxiliary_text"):
            value = _as_text(raw.get(key))
            if value is _MISSING:
                raise ProtocolError("plan", f"step {index + 1}: '{key}' is not text", text)
            if value and _SERIALISED_STEP_RE.search(value):
                raise ProtocolError("plan", f"step {index + 1}: '{key}' holds a serialised plan", text)
            fields[key] = value
        if not (fields["prompt"] or fields["auxiliary_text"] or fields["instruction"]):
            raise ProtocolError(
                "plan", f"step {index + 1} has neither a prompt nor text for the reader", text
            )
        steps.append(
            PlanStep(
                step_number=start + index,
                step_name=fields["step_name"] or "",
                **{key: fields[key] for key in ("instruction", "prompt", "auxiliary_text")},
            )
        )
    return Plan(tuple(steps), reasoning=reasoning)


def _as_text(value: Any) -> Any:
    """None and the strings 'None'/'null' mean absent; numbers become text; anything else is invalid."""
    if value is None:
        return None
    if isinstance(value, bool):
        return _MISSING
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        return _MISSING
    value = value.strip()
    if value.lower() in ("", "none", "null"):
        return None
    return value


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,6}", value.strip(), re.ASCII):
        return int(value)
    return None


def _first_present(data: Mapping, keys: Iterable[str]) -> Any:
    for key in keys:
        if key in data:
            return data[key]
    return _MISSING


def _safe_dump(data: Any) -> str:
    try:
        return json.dumps(data, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return reprlib.repr(data)  # bounded in depth and length


__all__ = [
    "AgentAnswer",
    "MAX_PLAN_STEPS",
    "Plan",
    "PlanStep",
    "ProtocolError",
    "Verdict",
    "parse_answer",
    "parse_plan",
    "parse_verdict",
]
