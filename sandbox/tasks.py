"""Tasks: multi-step requests with their ground truth, in both Planner modes, split into train and test.

Three kinds of task:
- ``build`` (narrative mode): "Build a scene in 3 steps: draw ...; add ...; make ...."
- ``continue`` (guidance mode, Task B): pictures of the first steps, then "Continue with 2 more steps: ...".
- ``describe`` (guidance mode, Task A): pictures of every step; the answer is one sentence per step.

Requests use the sandbox language loosely, as people write: objects named by colour and shape only, places
often given by a relation, colours sometimes by reference, and no "keep everything else unchanged". A task's
split is a function of its request text, so train and test never share a request.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..core.stories import safe_id
from .grading import change_summary
from .language import apply
from .world import (
    COLOURS,
    DEFAULT_SIZE,
    EMPTY,
    PLACES,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    neighbour,
    render,
)

KINDS = ("build", "continue", "describe")
SPLITS = ("train", "test")
TEST_SHARE = 10  # one request in ten goes to the test split
MAX_OBJECTS = 5


@dataclass(frozen=True)
class StoryShape:
    """How long stories are and how full their scenes get. The default is the training split's shape; a
    longer, busier one (``StoryShape((5, 6), 6)``) makes a harder split the same way."""

    steps: tuple[int, int] = (
        2,
        4,
    )  # planned steps of a build or describe task, and of a continue task's whole
    max_objects: int = MAX_OBJECTS

    def __post_init__(self) -> None:
        low, high = self.steps
        if not 2 <= low <= high <= 12 or not 2 <= self.max_objects <= 9:
            raise TaskError(
                f"stories of {low}-{high} steps with up to {self.max_objects} objects: steps must be "
                "2-12 (low to high), objects 2-9"
            )

    @classmethod
    def parse(cls, steps: str, max_objects: int) -> StoryShape:
        """From the CLI's ``--steps 5-6`` (or ``--steps 5``) and ``--max-objects``."""
        low, _, high = steps.partition("-")
        try:
            bounds = int(low), int(high or low)
        except ValueError:
            raise TaskError(f"--steps takes a count or a range such as 5-6, got {steps!r}") from None
        return cls(bounds, max_objects)


DEFAULT_SHAPE = StoryShape()


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    instruction: str  # the request the Planner reads; guidance requests carry <image> markers
    steps: tuple[str, ...]  # build/continue: what each planned step must do; describe: reference answers
    scenes: tuple[Scene, ...]  # the scene after every step, the given ones first
    given: tuple[str, ...] = ()  # guidance: the steps shown as pictures
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    cast: tuple[Obj, ...] = ()  # objects that must keep their colour and shape through the story

    @property
    def mode(self) -> str:
        return "narrative" if self.kind == "build" else "guidance"

    @property
    def split(self) -> str:
        return split_of(self.instruction)

    @property
    def makes_images(self) -> bool:
        return self.kind != "describe"

    @property
    def first_step_number(self) -> int:
        return len(self.given) + 1 if self.kind == "continue" else 1

    @property
    def start(self) -> Scene:
        """The scene the planned steps start from."""
        return self.scenes[len(self.given) - 1] if self.kind == "continue" else EMPTY

    def input_images(self) -> list[Image.Image]:
        return [render(scene, self.width, self.height) for scene in self.scenes[: len(self.given)]]

    def reference_images(self) -> list[Image.Image]:
        """One picture per cast member, alone in the centre: the story's references."""
        centre = PLACES.index("centre")
        return [render(EMPTY.with_cell(centre, obj), self.width, self.height) for obj in self.cast]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "split": self.split,
            "instruction": self.instruction,
            "steps": list(self.steps),
            "given": list(self.given),
            "scenes": [s.to_dict() for s in self.scenes],
            "width": self.width,
            "height": self.height,
            **({"cast": [obj.__dict__.copy() for obj in self.cast]} if self.cast else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        """A task read from a file, which is data: its id (a folder name) is cleaned as batch ids are."""
        try:
            return cls(
                id=safe_id(str(data["id"])),
                kind=data["kind"],
                instruction=data["instruction"],
                steps=tuple(data["steps"]),
                scenes=tuple(Scene.from_dict(s) for s in data["scenes"]),
                given=tuple(data.get("given", ())),
                width=int(data.get("width", DEFAULT_SIZE)),
                height=int(data.get("height", DEFAULT_SIZE)),
                cast=tuple(Obj(o["shape"], o["colour"], o["size"]) for o in data.get("cast", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TaskError(f"not a sandbox task: {error}") from None


def split_of(instruction: str) -> str:
    digest = hashlib.sha256(instruction.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


# ---------------------------------------------------------------------------------------------------------
# Random stories


def _name(obj: Obj) -> str:
    """How a request names an object: colour and shape (unique in every scene the generator makes)."""
    return f"the {obj.colour} {obj.shape}"


def _new_obj(rng: random.Random, scene: Scene) -> Obj:
    taken = {(o.colour, o.shape) for _, o in scene.objects()}
    while True:
        obj = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
        if (obj.colour, obj.shape) not in taken:
            return obj


def _relational_spot(rng: random.Random, scene: Scene, exclude: int | None = None):
    """(relation, anchor cell, target cell) for a free cell next to some other object, or None."""
    options = []
    for index, _ in scene.objects():
        if index == exclude:
            continue
        for relation in RELATIONS:
            cell = neighbour(index, relation)
            if cell is not None and scene[cell] is None:
                options.append((relation, index, cell))
    return rng.choice(options) if options else None


def _where(relation: str) -> str:
    return f"to the {relation}" if relation in ("left of", "right of") else relation


def first_step(rng: random.Random) -> tuple[str, Scene]:
    count = 2 if rng.random() < 0.4 else 1
    cells = rng.sample(range(len(PLACES)), count)
    scene = EMPTY
    for cell in cells:
        scene = scene.with_cell(cell, _new_obj(rng, scene))
    objects = " and ".join(f"a {scene[c].words} at the {PLACES[c]}" for c in cells)
    return f"draw {objects}", scene


def next_step(rng: random.Random, scene: Scene, max_objects: int = MAX_OBJECTS) -> tuple[str, Scene]:
    objects = list(scene.objects())
    ops = []
    if len(objects) < max_objects and scene.free():
        ops += ["add"] * 3
    if len(objects) >= 2:
        ops.append("remove")
    ops += ["recolour"] * 2 + ["resize"] + (["move"] * 2 if scene.free() else [])
    op = rng.choice(ops)
    if op == "add":
        obj = _new_obj(rng, scene)
        spot = _relational_spot(rng, scene) if rng.random() < 0.6 else None
        if spot:
            relation, anchor, cell = spot
            sentence = f"add a {obj.words} {_where(relation)} {_name(scene[anchor])}"
        else:
            cell = rng.choice(scene.free())
            sentence = f"add a {obj.words} at the {PLACES[cell]}"
        return sentence, scene.with_cell(cell, obj)
    index, obj = rng.choice(objects)
    if op == "remove":
        return f"remove {_name(obj)}", scene.with_cell(index, None)
    if op == "resize":
        size = "small" if obj.size == "large" else "large"
        return f"make {_name(obj)} {size}", scene.with_cell(index, Obj(obj.shape, obj.colour, size))
    if op == "recolour":
        taken = {(o.colour, o.shape) for _, o in objects}
        donors = [(i, o) for i, o in objects if o.colour != obj.colour and (o.colour, obj.shape) not in taken]
        if donors and rng.random() < 0.5:
            _, donor = rng.choice(donors)
            sentence = f"make {_name(obj)} the same colour as {_name(donor)}"
            colour = donor.colour
        else:
            colour = rng.choice([c for c in COLOURS if c != obj.colour and (c, obj.shape) not in taken])
            sentence = f"make {_name(obj)} {colour}"
        return sentence, scene.with_cell(index, Obj(obj.shape, colour, obj.size))
    # move
    spot = _relational_spot(rng, scene, exclude=index) if rng.random() < 0.6 else None
    if spot:
        relation, anchor, cell = spot
        sentence = f"move {_name(obj)} {_where(relation)} {_name(scene[anchor])}"
    else:
        cell = rng.choice(scene.free())
        sentence = f"move {_name(obj)} to the {PLACES[cell]}"
    return sentence, scene.with_cell(index, None).with_cell(cell, obj)


def random_story(
    rng: random.Random, steps: int, max_objects: int = MAX_OBJECTS
) -> tuple[list[str], list[Scene]]:
    sentence, scene = first_step(rng)
    sentences, scenes = [sentence], [scene]
    while len(sentences) < steps:
        sentence, scene = next_step(rng, scenes[-1], max_objects)
        sentences.append(sentence)
        scenes.append(scene)
    for before, sentence, after in zip([EMPTY] + scenes, sentences, scenes):  # the generator's own check
        if apply(sentence, before) != after:
            raise AssertionError(f"task sentence {sentence!r} does not do what it was made for")
    return sentences, scenes


# ---------------------------------------------------------------------------------------------------------
# Requests


def build_request(sentences: list[str]) -> str:
    return f"Build a scene in {len(sentences)} steps: {'; '.join(sentences)}."


def continue_request(given: int, sentences: list[str]) -> str:
    return (
        f"{'<image>' * given} The pictures show the first {given} steps of a scene. "
        f"Continue with {len(sentences)} more steps: {'; '.join(sentences)}."
    )


def describe_request(scene: Scene, steps: int) -> str:
    names = " and ".join(f"a {obj.colour} {obj.shape}" for _, obj in scene.objects()) or "nothing"
    return (
        f"{'<image>' * steps} The pictures show the {steps} steps of building a scene of {names}. "
        "Describe each step in one sentence."
    )


_BUILD_RE = re.compile(r"^build a scene in (\d+) steps?:\s*(.*?)\.?\s*$", re.I | re.S)
_CONTINUE_RE = re.compile(
    r"the pictures show the first (\d+) steps? of a scene\.\s*continue with (\d+) more "
    r"steps?:\s*(.*?)\.?\s*$",
    re.I | re.S,
)
_DESCRIBE_RE = re.compile(
    r"the pictures show the (\d+) steps? of building a scene.*describe each step", re.I | re.S
)


@dataclass(frozen=True)
class Request:
    """A request read back from its text: the kind, the step sentences and the number of pictures."""

    kind: str
    sentences: tuple[str, ...] = ()
    pictures: int = 0
    steps: int = 0


def read_request(text: str) -> Request | None:
    """The structure of a sandbox request, or None for text that is not one."""
    text = text.strip()
    body = text.replace("<image>", "").strip()
    if match := _BUILD_RE.match(body):
        sentences = tuple(s.strip() for s in match.group(2).split(";") if s.strip())
        return Request("build", sentences, 0, int(match.group(1)))
    if match := _CONTINUE_RE.search(body):
        sentences = tuple(s.strip() for s in match.group(3).split(";") if s.strip())
        return Request("continue", sentences, int(match.group(1)), int(match.group(2)))
    if match := _DESCRIBE_RE.search(body):
        return Request("describe", (), int(match.group(1)), int(match.group(1)))
    return None


# ---------------------------------------------------------------------------------------------------------
# Task generation


def make_task(
    index: int,
    seed: int = 0,
    width: int = DEFAULT_SIZE,
    height: int = DEFAULT_SIZE,
    shape: StoryShape = DEFAULT_SHAPE,
) -> Task:
    """Candidate task number ``index`` of the stream fixed by ``seed`` (and ``shape``: the default shape's
    stream is the one the shipped agents were trained and measured on)."""
    rng = random.Random(f"sandbox-task:{seed}:{index}")
    roll = rng.random()
    kind = "build" if roll < 0.6 else "continue" if roll < 0.85 else "describe"
    default = shape == DEFAULT_SHAPE
    if kind == "build":
        sentences, scenes = random_story(rng, rng.randint(*shape.steps), shape.max_objects)
        instruction, given, steps = build_request(sentences), (), tuple(sentences)
    elif kind == "continue":
        shown = rng.randint(1, 2)
        more = rng.randint(1, 2) if default else rng.randint(*shape.steps) - shown
        sentences, scenes = random_story(rng, shown + more, shape.max_objects)
        instruction = continue_request(shown, sentences[shown:])
        given, steps = tuple(sentences[:shown]), tuple(sentences[shown:])
    else:
        count = rng.randint(2, 3) if default else rng.randint(*shape.steps)
        sentences, scenes = random_story(rng, count, shape.max_objects)
        instruction = describe_request(scenes[-1], len(sentences))
        given = tuple(sentences)
        steps = tuple(change_summary(before, after) for before, after in zip([EMPTY] + scenes, scenes))
    digest = hashlib.sha1(f"{instruction}|{'|'.join(given)}".encode()).hexdigest()[:8]
    return Task(f"{kind}-{digest}", kind, instruction, steps, tuple(scenes), given, width, height)


# ---------------------------------------------------------------------------------------------------------
# The cast suite: long stories whose first picture introduces two characters that must stay themselves

CAST_STEPS = 6
CAST_SIZE = 2
# The chance that a cast story's edit drifts (sandbox/generator.py): one in four, so a 6-step chain of five
# edits usually loses something, as chained edits of real models do.
CAST_DRIFT = 0.25


def cast_task(index: int, seed: int = 0, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> Task:
    """Cast story number ``index``: step 1 draws the cast, the later steps add, move, resize and remove
    around it (never recolouring or removing a cast member), so its colours and shapes hold by rule."""
    rng = random.Random(f"sandbox-cast:{seed}:{index}")
    cells = rng.sample(range(len(PLACES)), CAST_SIZE)
    scene = EMPTY
    for cell in cells:
        scene = scene.with_cell(cell, _new_obj(rng, scene))
    cast = tuple(scene[cell] for cell in cells)
    sentences = ["draw " + " and ".join(f"a {scene[c].words} at the {PLACES[c]}" for c in cells)]
    scenes = [scene]
    keep = {(obj.shape, obj.colour) for obj in cast}
    while len(sentences) < CAST_STEPS:
        sentence, after = next_step(rng, scenes[-1])
        if keep <= {(obj.shape, obj.colour) for _, obj in after.objects()}:
            sentences.append(sentence)
            scenes.append(after)
    for before, sentence, after in zip([EMPTY] + scenes, sentences, scenes):
        if apply(sentence, before) != after:
            raise AssertionError(f"task sentence {sentence!r} does not do what it was made for")
    instruction = build_request(sentences)
    digest = hashlib.sha1(instruction.encode()).hexdigest()[:8]
    return Task(
        f"cast-{digest}", "build", instruction, tuple(sentences), tuple(scenes), (), width, height, cast
    )


def cast_tasks(count: int, seed: int = 0) -> list[Task]:
    if count < 0:
        raise TaskError(f"count must be >= 0, got {count}")
    return [cast_task(index, seed) for index in range(count)]


def iter_tasks(
    split: str,
    seed: int = 0,
    width: int = DEFAULT_SIZE,
    height: int = DEFAULT_SIZE,
    shape: StoryShape = DEFAULT_SHAPE,
) -> Iterator[Task]:
    """The tasks of one split in a fixed order, without repeats."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; choose train or test")
    seen: set[str] = set()
    index = 0
    while True:
        task = make_task(index, seed, width, height, shape)
        index += 1
        if task.split == split and task.instruction not in seen:
            seen.add(task.instruction)
            yield task


def make_tasks(
    split: str,
    count: int,
    seed: int = 0,
    width: int = DEFAULT_SIZE,
    height: int = DEFAULT_SIZE,
    kinds: Iterable[str] = KINDS,
    shape: StoryShape = DEFAULT_SHAPE,
) -> list[Task]:
    """The first ``count`` tasks of ``split`` (of the given kinds)."""
    if count < 0:
        raise TaskError(f"count must be >= 0, got {count}")
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise TaskError(f"unknown task kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    tasks: list[Task] = []
    for task in iter_tasks(split, seed, width, height, shape):
        if len(tasks) >= count:
            break
        if task.kind in kinds:
            tasks.append(task)
    return tasks


def save_tasks(tasks: Iterable[Task], path: str | Path) -> Path:
    from ..core.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in tasks))
    return path


def load_tasks(path: str | Path) -> list[Task]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TaskError(f"cannot read tasks file {path}: {error}") from None
    tasks = []
    lines_of: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                task = Task.from_dict(json.loads(line))
            except (ValueError, TaskError) as error:
                raise TaskError(f"{path}:{number}: {error}") from None
            if task.id in lines_of:  # two tasks would share one storyboard folder
                raise TaskError(
                    f"{path}:{number}: task id {task.id!r} is already used on line {lines_of[task.id]}"
                )
            lines_of[task.id] = number
            tasks.append(task)
    return tasks


__all__ = [
    "CAST_DRIFT",
    "CAST_STEPS",
    "KINDS",
    "Request",
    "SPLITS",
    "StoryShape",
    "Task",
    "TaskError",
    "build_request",
    "cast_task",
    "cast_tasks",
    "continue_request",
    "describe_request",
    "iter_tasks",
    "load_tasks",
    "make_task",
    "make_tasks",
    "random_story",
    "read_request",
    "save_tasks",
    "split_of",
]
