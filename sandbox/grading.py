"""Ground-truth grading of sandbox pictures (the oracle judge): it reads the before and after pictures and
checks them against a step's sentence. :class:`SandboxJudge` offers it through training's Judge interface;
``sandbox/rubric.py`` grades whole storyboards with it.

It applies the sentence exactly to the scene it reads from the before picture and compares the result with
the scene it reads from the after picture. The scores follow the official RL data: ``semantics`` (0-10) is
the lower of ``intent`` (was the asked change made?) and ``preservation`` (did nothing else change?), as
the semantic consistency judge takes the lower of "edit success" and "minimal over-editing"; ``quality``
(0-10) is perceptual: a picture made only of sandbox shapes scores 10, unreadable cells cost points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from .language import ResolveError, apply, change_clauses, new_words
from .world import EMPTY, PLACES, UNKNOWN, Obj, Scene, read

COLLATERAL_PENALTY = 4  # preservation points lost per cell changed without being asked
UNREADABLE_PENALTY = 4  # quality points lost per cell that holds no sandbox shape


@dataclass(frozen=True)
class StepScore:
    success: bool
    intent: int
    preservation: int
    quality: int
    before: Scene
    seen: Scene
    expected: Scene | None = None
    problems: tuple[str, ...] = field(default=())
    error: str = ""  # why the sentence could not be applied to the before picture

    @property
    def semantics(self) -> int:
        return min(self.intent, self.preservation)

    def evaluation(self) -> dict:
        """The ``evaluation`` object of a Critic RL record."""
        return {"success": self.success, "semantics": self.semantics, "quality": self.quality}


def as_scene(picture: Image.Image | Scene) -> Scene:
    return picture if isinstance(picture, Scene) else read(picture)


def judge_step(sentence: str, before: Image.Image | Scene, after: Image.Image | Scene) -> StepScore:
    """Score ``after`` as the result of carrying out ``sentence`` on ``before``."""
    before_scene, seen = as_scene(before), as_scene(after)
    try:
        expected = apply(sentence, before_scene)
    except ResolveError as error:
        return StepScore(
            False,
            0,
            10 if seen == before_scene else 0,
            quality_of(seen),
            before_scene,
            seen,
            None,
            (f"the step cannot be carried out here: {error}",),
            str(error),
        )
    targets = [i for i in range(len(expected.cells)) if expected[i] != before_scene[i]]
    others = [i for i in range(len(expected.cells)) if i not in targets]
    if targets:
        intent = round(10 * sum(_cell_credit(expected[i], seen[i]) for i in targets) / len(targets))
    else:
        intent = 10
    collateral = sum(seen[i] != expected[i] for i in others)
    preservation = max(0, 10 - COLLATERAL_PENALTY * collateral)
    problems = tuple(
        _difference(i, expected[i], seen[i]) for i in range(len(expected.cells)) if expected[i] != seen[i]
    )
    return StepScore(
        seen == expected, intent, preservation, quality_of(seen), before_scene, seen, expected, problems
    )


def quality_of(scene: Scene) -> int:
    """Perceptual quality: 10 for a picture made only of sandbox shapes."""
    return max(0, 10 - UNREADABLE_PENALTY * sum(cell == UNKNOWN for cell in scene.cells))


def _cell_credit(expected, seen) -> float:
    if expected == seen:
        return 1.0
    if isinstance(expected, Obj) and isinstance(seen, Obj):  # the right place, partly the right object
        same = (
            (expected.shape == seen.shape) + (expected.colour == seen.colour) + (expected.size == seen.size)
        )
        return 0.5 * same / 3
    return 0.0


def _thing(cell) -> str:
    if cell is None:
        return "nothing"
    if cell == UNKNOWN:
        return "something unreadable"
    return f"a {cell.words}"


def _difference(index: int, expected, seen) -> str:
    return f"at the {PLACES[index]} expected {_thing(expected)}, found {_thing(seen)}"


def verdict_reasoning(score: StepScore) -> str:
    """The Critic's <think> text for a verdict: the picture seen, the change asked, the picture expected with
    each object marked, the objects nobody asked for, then the verdict.

    The after picture is described whole and first, so every object in it has to be read (nothing written so
    far says what is there); the expected picture is the before picture with the change asked applied, read
    the same way. Each expected object is then marked ``ok`` (the same object is seen at its place) or
    ``missing``, and ``Extra`` lists what is seen at places where nothing is expected; the step is done when
    every mark is ok and nothing is extra. A Critic that had to compare the two lists whole in one verdict
    word contradicted its own right lists; a mark asks one question about one place.
    """
    if score.error:
        return f"The step cannot be carried out on the before image: {score.error}."
    asked = change_summary(score.before, score.expected)
    if not score.seen.readable:
        return f"Asked: {asked}. Not done: " + "; ".join(score.problems) + "."
    expected = marked_summary(score.expected, score.seen)
    extra = scene_summary(extra_objects(score.seen, score.expected))
    return f"Seen: {scene_summary(score.seen)}. Asked: {asked}. Expected: {expected}. Extra: {extra}. " + (
        "Done." if score.success else "Not done."
    )


def scene_summary(scene: Scene) -> str:
    """Every object of a scene in place order ("nothing" for an empty one)."""
    return "; ".join(new_words(obj, PLACES[i]) for i, obj in scene.objects()) or "nothing"


def marked_summary(expected: Scene, seen: Scene) -> str:
    """Every expected object in place order, marked ``ok`` when ``seen`` holds it at its place, else
    ``missing``."""
    marked = [
        f"{new_words(obj, PLACES[i])} {'ok' if seen[i] == obj else 'missing'}"
        for i, obj in expected.objects()
    ]
    return "; ".join(marked) or "nothing"


def extra_objects(seen: Scene, expected: Scene) -> Scene:
    """What ``seen`` holds at the places where ``expected`` is empty."""
    return Scene(tuple(cell if expected[i] is None else None for i, cell in enumerate(seen.cells)))


def change_summary(before: Scene, after: Scene) -> str:
    """The change from ``before`` to ``after`` in precise clauses, without the closing clause."""
    if before == EMPTY:
        objects = [new_words(obj, PLACES[i]) for i, obj in after.objects()]
        return "draw " + " and ".join(objects) if objects else "nothing drawn"
    clauses = change_clauses(before, after)
    return "; ".join(clauses) if clauses else "no change"


def judge_text(sentence: str, before: Scene, after: Scene) -> bool:
    """Whether a text answer describes the step from ``before`` to ``after`` exactly."""
    try:
        return apply(sentence, before) == after
    except ResolveError:
        return False


class SandboxJudge:
    """The oracle as a GRPO judge (``training.judge.Judge``): semantics of a step, quality of a picture."""

    name = "sandbox-oracle-judge"

    def semantics(self, before: Image.Image, after: Image.Image, instruction: str) -> float:
        return float(judge_step(instruction, before, after).semantics)

    def quality(self, image: Image.Image) -> float:
        return float(quality_of(read(image)))


__all__ = [
    "SandboxJudge",
    "StepScore",
    "as_scene",
    "change_summary",
    "extra_objects",
    "judge_step",
    "judge_text",
    "marked_summary",
    "quality_of",
    "scene_summary",
    "verdict_reasoning",
]
