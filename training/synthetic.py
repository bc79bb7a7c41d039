"""A small procedural world of coloured shapes: a generator, a rule-based judge and data sets in the official formats.

It stands in for a diffusion model and a VLM judge wherever training must run without either (tests, the tiny
CPU profile, demos), and it writes Planner SFT, Critic SFT and Critic RL files through the same writers as any
other producer, so the readers see exactly the files a real pipeline makes.

- :class:`ShapesGenerator` draws the shapes a prompt names ("a red circle", "add a blue square"). It follows the
  engine's Generator protocol. Prompts longer than ``wordy_limit`` words come out speckled: an overlong prompt
  costs quality, so padding prompts with keywords is not free.
- :class:`RuleJudge` scores by colour: semantics is the share of the named colours that newly appear, less
  penalties for colours nobody asked for and for destroying the before image; quality drops on speckles.
- ``make_*_examples`` build examples; :func:`write_synthetic_sets` writes all three files.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.generators.base import REFERENCE
from ..core.messages import to_rgb, white_canvas
from ..core.protocol import Plan, PlanStep, Verdict
from .data import (
    CriticExample,
    CriticRLExample,
    PlannerExample,
    write_critic_rl,
    write_critic_sft,
    write_planner_sft,
)
from .judge import JudgeError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
SPECKLE = (0, 0, 0)
_PAIR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b", re.IGNORECASE)
# A colour counts as drawn when it newly covers this share of the picture (a shape covers about 4-11 %).
_PRESENT_SHARE = 0.015
_COLOUR_TOLERANCE = 40


def parse_shapes(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a prompt names, in order."""
    return [(colour.lower(), shape.lower()) for colour, shape in _PAIR_RE.findall(text or "")]


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big"))


class ShapesGenerator:
    """Draws the coloured shapes a prompt names; edits draw them onto a copy of the before image."""

    name = "shapes"
    edit_route = REFERENCE

    def __init__(self, wordy_limit: int = 16):
        self.wordy_limit = wordy_limit

    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int) -> Image.Image:
        return self._draw(white_canvas(width, height), prompt, seed)

    def edit(self, before: Image.Image, prompt: str, *, seed: int) -> Image.Image:
        return self._draw(to_rgb(before).copy(), prompt, seed)

    def _draw(self, image: Image.Image, prompt: str, seed: int) -> Image.Image:
        width, height = image.size
        draw = ImageDraw.Draw(image)
        rng = _rng("shapes", prompt, seed)
        side = max(4, min(width, height) // 3)
        # Shapes go into free cells of a 3x3 grid, so an edit adds to the picture instead of painting over it.
        cells = [(i * width // 3, j * height // 3) for j in range(3) for i in range(3)]
        for colour, shape in parse_shapes(prompt):
            pixels = np.asarray(image)
            free = [
                (x, y) for x, y in cells if (pixels[y : y + side, x : x + side] == 255).all(-1).mean() > 0.95
            ]
            x, y = rng.choice(free or cells)
            box = (x, y, x + side - 1, y + side - 1)
            fill = COLOURS[colour]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(x + side // 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=fill)
        if len(prompt.split()) > self.wordy_limit:
            pixels = np.asarray(image).copy()
            mask = np.random.default_rng(rng.getrandbits(32)).random(pixels.shape[:2]) < 0.03
            pixels[mask] = SPECKLE
            image = Image.fromarray(pixels)
        return image


def _colour_share(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    distance = np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16)).sum(axis=-1)
    return float((distance < _COLOUR_TOLERANCE).mean())


class RuleJudge:
    """Scores pictures of the shapes world by their colours. Raises JudgeError when it cannot judge."""

    name = "rule"

    def semantics(self, before: Image.Image, after: Image.Image, instruction: str) -> float:
        targets = {colour for colour, _ in parse_shapes(instruction)}
        if not targets:
            raise JudgeError(f"the rule judge finds no coloured shape in {instruction!r}")
        old = np.asarray(to_rgb(before).resize(after.size))
        new = np.asarray(to_rgb(after))
        gained = {
            c
            for c, rgb in COLOURS.items()
            if _colour_share(new, rgb) - _colour_share(old, rgb) >= _PRESENT_SHARE
        }
        score = 10.0 * len(targets & gained) / len(targets)
        score -= 3.0 * len(gained - targets)
        drawn = (old != 255).any(axis=-1)
        if drawn.any() and (np.abs(old.astype(np.int16) - new)[drawn].sum(axis=-1) < 30).mean() < 0.5:
            score -= 3.0  # most of the before picture was painted over
        return float(max(0.0, min(10.0, round(score))))

    def quality(self, image: Image.Image) -> float:
        speckled = (np.asarray(to_rgb(image)) == SPECKLE).all(axis=-1).mean()
        return 3.0 if speckled > 0.005 else 9.0


# ---------------------------------------------------------------------------------------------------------
# Examples


def _pair(rng: random.Random, exclude: tuple[str, str] | None = None) -> tuple[str, str]:
    while True:
        pair = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if pair != exclude and (exclude is None or pair[0] != exclude[0]):
            return pair


def _phrase(pair: tuple[str, str]) -> str:
    return f"{pair[0]} {pair[1]}"


def make_planner_examples(count: int, seed: int = 0, *, size: int = 64, guidance_share: float = 0.25):
    """Planner examples: one or two shapes drawn in order; some continue from a user's picture (guidance)."""
    rng = _rng("planner", seed)
    generator = ShapesGenerator()
    examples = []
    for index in range(count):
        if rng.random() < guidance_share:
            start, add = _pair(rng), _pair(rng)
            picture = generator.text_to_image(f"a {_phrase(start)}", width=size, height=size, seed=index)
            plan = Plan(
                (PlanStep(1, add[1].title(), f"Add a {_phrase(add)}.", f"add a {_phrase(add)}", None),),
                reasoning="One edit.",
            )
            examples.append(
                PlannerExample(f"<image> Add a {_phrase(add)} to my picture.", plan, [picture], "guidance")
            )
            continue
        pairs = [_pair(rng) for _ in range(rng.choice((1, 2)))]
        steps = [
            PlanStep(1, pairs[0][1].title(), f"Draw a {_phrase(pairs[0])}.", f"a {_phrase(pairs[0])}", None)
        ]
        instruction = f"Draw a {_phrase(pairs[0])}"
        if len(pairs) == 2:
            steps.append(
                PlanStep(
                    2, pairs[1][1].title(), f"Add a {_phrase(pairs[1])}.", f"add a {_phrase(pairs[1])}", None
                )
            )
            instruction += f", then add a {_phrase(pairs[1])}"
        reasoning = "One step." if len(pairs) == 1 else "Two steps."
        examples.append(
            PlannerExample(instruction + ".", Plan(tuple(steps), reasoning=reasoning), [], "narrative")
        )
    return examples


@dataclass(frozen=True)
class _Step:
    before: Image.Image
    after: Image.Image
    original: str
    used: str
    correct: bool


def _critic_step(rng: random.Random, generator: ShapesGenerator, index: int, size: int, fail: bool) -> _Step:
    target = _pair(rng)
    from_white = rng.random() < 0.5
    if from_white:
        before = white_canvas(size, size)
        original = f"a {_phrase(target)}"
        wrong = f"a {_phrase(_pair(rng, exclude=target))}"
    else:
        before = generator.text_to_image(
            f"a {_phrase(_pair(rng, exclude=target))}", width=size, height=size, seed=index
        )
        original = f"add a {_phrase(target)}"
        wrong = f"add a {_phrase(_pair(rng, exclude=target))}"
    used = wrong if fail else original
    seed = rng.randrange(2**31)
    if from_white:
        after = generator.text_to_image(used, width=size, height=size, seed=seed)
    else:
        after = generator.edit(before, used, seed=seed)
    return _Step(before, after, original, used, not fail)


def make_critic_examples(
    count: int, seed: int = 0, *, size: int = 64, teacher_accuracy: float = 1.0, think_share: float = 1.0
):
    """Critic examples, half of them failed steps (the wrong colour was drawn).

    A perfect teacher accepts good steps and, for a failed one, rewrites the prompt back to the instruction.
    With ``teacher_accuracy`` below 1 the teacher is sometimes wrong: it accepts a failed step, or rejects
    a good one, or repeats the failed prompt. With ``think_share`` below 1 it sometimes answers without its
    reasoning. A model trained on such a teacher leaves room for GRPO to improve.
    """
    rng = _rng("critic", seed)
    generator = ShapesGenerator()
    examples = []
    for index in range(count):
        step = _critic_step(rng, generator, index, size, fail=index % 2 == 1)
        right = rng.random() < teacher_accuracy
        if step.correct:
            verdict = (
                Verdict(True, step.used, "It matches.")
                if right
                else Verdict(False, f"a {_phrase(_pair(rng))}", "Wrong colour.")
            )
        elif right:
            verdict = Verdict(False, step.original, "Wrong colour.")
        else:
            verdict = rng.choice(
                [Verdict(True, step.used, "It matches."), Verdict(False, step.used, "Wrong colour.")]
            )
        if rng.random() >= think_share:
            verdict = Verdict(verdict.accepted, verdict.refine_prompt)
        examples.append(CriticExample(step.before, step.after, step.original, step.used, verdict))
    return examples


def make_rl_examples(count: int, seed: int = 0, *, size: int = 64, fail_share: float = 0.75):
    """Critic RL examples with ground truth from the rule judge (the scores of the after image)."""
    rng = _rng("rl", seed)
    generator, judge = ShapesGenerator(), RuleJudge()
    examples = []
    for index in range(count):
        step = _critic_step(rng, generator, index, size, fail=rng.random() < fail_share)
        examples.append(
            CriticRLExample(
                step.before,
                step.after,
                step.original,
                step.used,
                step.correct,
                judge.semantics(step.before, step.after, step.original),
                judge.quality(step.after),
            )
        )
    return examples


def write_synthetic_sets(
    out_dir: str | Path,
    *,
    planner: int = 0,
    critic: int = 0,
    rl: int = 0,
    seed: int = 0,
    size: int = 64,
    teacher_accuracy: float = 1.0,
    think_share: float = 1.0,
) -> dict[str, Path]:
    """Write the requested sets as ``planner_sft.json``, ``critic_sft.json`` and ``critic_rl.jsonl``."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    if planner:
        paths["planner"] = write_planner_sft(
            out / "planner_sft.json",
            make_planner_examples(planner, seed, size=size),
            image_dir=out / "images",
        )
    if critic:
        examples = make_critic_examples(
            critic, seed, size=size, teacher_accuracy=teacher_accuracy, think_share=think_share
        )
        paths["critic"] = write_critic_sft(out / "critic_sft.json", examples, image_dir=out / "images")
    if rl:
        paths["rl"] = write_critic_rl(
            out / "critic_rl.jsonl", make_rl_examples(rl, seed, size=size), image_dir=out / "images"
        )
    return paths


__all__ = [
    "COLOURS",
    "RuleJudge",
    "SHAPES",
    "ShapesGenerator",
    "make_critic_examples",
    "make_planner_examples",
    "make_rl_examples",
    "parse_shapes",
    "write_synthetic_sets",
]
