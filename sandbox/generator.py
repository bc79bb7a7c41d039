"""A procedural image generator that fails the way real ones do, and only when the prompt gives it room to.

It reads the before picture's pixels, parses the prompt with the sandbox language and redraws the scene.
What a precise prompt asks for is drawn exactly. Every way a prompt can be vague has its own fault, drawn
with a known probability from a random stream fixed by the seed, the prompt and the before picture:

| the prompt...                                         | fault                                   | default |
|-------------------------------------------------------|-----------------------------------------|---------|
| places an object by a relation ("right of the cube")   | wrong place (another free cell)         | 0.5     |
| gives a colour by a relation ("same colour as ...")    | wrong colour                            | 0.5     |
| edits without "keep everything else unchanged"         | collateral change to another object     | 0.35    |
| draws a new picture without "nothing else"            | an extra object                         | 0.3     |
| draws several objects without their count             | a missing object                        | 0.4     |
| names an object that several objects match            | one of them, chosen at random           | (1-1/k) |
| leaves out a colour, a size or a place                | chosen at random                        |         |

Chained edits also drift, whatever the prompt says (``drift``, off unless asked for: the cast suite turns it
on): an edit changes the colour or shape of an object it was not asked to touch, as real edit models lose a
character's look over a chain of edits. A reference picture holds what it shows: an object whose colour and
shape appear in one of the call's ``references`` (the story's cast, or the anchor) neither drifts nor takes a
collateral recolour; a reference does not stop an edit from moving or dropping it. The random stream is the
same with or without references, so the two runs differ only where a reference held an object.

Clauses it cannot read are ignored, so nonsense leaves the picture unchanged (a blank canvas from text).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from PIL import Image

from ..core import settings
from ..core.generators.base import REFERENCE
from .language import Command, New, Ref, Sentence, Where, matches, parse
from .world import COLOURS, EMPTY, PLACES, SHAPES, SIZES, Obj, Scene, neighbour, read, render, scene_key


@dataclass(frozen=True)
class FailureModel:
    """Probabilities of the faults a vague prompt invites (see the module docstring)."""

    wrong_place: float = 0.5
    wrong_colour: float = 0.5
    collateral: float = 0.35
    extra_object: float = 0.3
    missing_object: float = 0.4
    drift: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FailureModel.{name} must be a probability in [0, 1], got {value}")

    @classmethod
    def perfect(cls) -> FailureModel:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _rng(seed: int, prompt: str, scene: Scene) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\x00{prompt}\x00{scene_key(scene)}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class SandboxGenerator:
    """An engine Generator over the sandbox world. ``faults`` records what went wrong in the last call."""

    name = "sandbox"
    edit_route = REFERENCE  # the before picture is read and redrawn, as a reference-latent editor does
    max_references = settings.MAX_REFERENCES

    def __init__(self, failure: FailureModel = FailureModel()):
        self.failure = failure
        self.faults: list[str] = []

    def text_to_image(
        self, prompt: str, *, width: int, height: int, seed: int, references: Sequence[Image.Image] = ()
    ) -> Image.Image:
        scene = self.carry_out(prompt, EMPTY, seed)
        return render(scene, width, height)

    def edit(
        self, before: Image.Image, prompt: str, *, seed: int, references: Sequence[Image.Image] = ()
    ) -> Image.Image:
        width, height = before.size
        start = read(before)
        # Pixels that are no sandbox object are redrawn as white: this generator only knows its shapes.
        start = Scene(tuple(None if not isinstance(c, Obj) else c for c in start.cells))
        return render(self.carry_out(prompt, start, seed, held_by(references)), width, height)

    # -- the scene-level model ----------------------------------------------------------------------------
    def carry_out(
        self, prompt: str, scene: Scene, seed: int, held: frozenset[tuple[str, str]] = frozenset()
    ) -> Scene:
        """The scene drawn for ``prompt`` over ``scene`` with ``seed``; what went wrong is in ``faults``.
        ``held``: (shape, colour) pairs that references show, which do not drift."""
        drawing = _Drawing(self.failure, _rng(seed, prompt, scene), held)
        scene = drawing.run(parse(prompt), scene)
        self.faults = drawing.faults  # one assignment: concurrent calls never mix their lists
        return scene


class _Drawing:
    """One generator call: its random stream and the faults it made."""

    def __init__(self, failure: FailureModel, rng: random.Random, held: frozenset = frozenset()):
        self.failure = failure
        self.rng = rng
        self.held = held
        self.faults: list[str] = []

    def run(self, sentence: Sentence, scene: Scene) -> Scene:
        rng, p = self.rng, self.failure
        from_text = scene == EMPTY
        before = scene
        touched: set[int] = set()
        for command in sentence.commands:
            scene = self._command(command, before, scene, rng, touched, from_text)
        if from_text and sentence.commands and not sentence.nothing_else and rng.random() < p.extra_object:
            free = scene.free()
            if free:
                cell = rng.choice(free)
                scene = scene.with_cell(cell, _random_obj(rng, "small"))
                self.faults.append(f"extra object at the {PLACES[cell]}")
        if not from_text and sentence.commands and not sentence.keep and rng.random() < p.collateral:
            others = [i for i, _ in before.objects() if i not in touched and scene[i] == before[i]]
            if others:
                scene = self._collateral(scene, rng.choice(others), rng)
        # Drawn only when drift is on, so the other faults' random stream is what it always was.
        if not from_text and sentence.commands and p.drift and rng.random() < p.drift:
            scene = self._drift(scene, before, touched, rng)
        return scene

    def _drift(self, scene: Scene, before: Scene, touched: set[int], rng: random.Random) -> Scene:
        others = [i for i, _ in before.objects() if i not in touched and scene[i] == before[i]]
        if not others:
            return scene
        index = rng.choice(others)
        obj = scene[index]
        if rng.random() < 0.5:
            drifted = replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
        else:
            drifted = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
        if (obj.shape, obj.colour) in self.held:
            self.faults.append(f"drift of the {obj.words} held by a reference")
            return scene
        self.faults.append(f"drift of the {obj.words} to {drifted.words}")
        return scene.with_cell(index, drifted)

    def _command(
        self,
        command: Command,
        before: Scene,
        scene: Scene,
        rng: random.Random,
        touched: set[int],
        from_text: bool,
    ) -> Scene:
        p = self.failure
        if command.verb in ("draw", "add"):
            new = list(command.new)
            if len(new) > 1 and command.count is None and rng.random() < p.missing_object:
                dropped = new.pop(rng.randrange(len(new)))
                self.faults.append(f"missing {dropped.shape}")
            for item in new:
                scene = self._draw(item, before, scene, rng, touched)
            return scene
        if from_text:
            return scene  # nothing to edit on a blank canvas
        index = self._pick(command.target, scene, rng, "object to edit")
        if index is None:
            return scene
        touched.add(index)
        obj = scene[index]
        if command.verb == "remove":
            return scene.with_cell(index, None)
        if command.verb == "resize":
            return scene.with_cell(index, replace(obj, size=command.size))
        if command.verb == "recolour":
            colour = command.colour
            if colour is None:
                like = self._pick(command.colour_like, scene, rng, "colour to copy")
                colour = scene[like].colour if like is not None else rng.choice(list(COLOURS))
                if rng.random() < p.wrong_colour:
                    colour = rng.choice([c for c in COLOURS if c != colour])
                    self.faults.append(f"wrong colour {colour}")
            return scene.with_cell(index, replace(obj, colour=colour))
        # move
        emptied = scene.with_cell(index, None)
        cell = self._place(command.to, before, emptied, rng, exclude=index)
        if cell is None:
            return scene
        touched.add(cell)
        return emptied.with_cell(cell, obj)

    def _draw(self, item: New, before: Scene, scene: Scene, rng: random.Random, touched: set[int]) -> Scene:
        if item.shape is None:
            return scene
        colour = item.colour or rng.choice(list(COLOURS))
        size = item.size or rng.choice(SIZES)
        cell = self._place(item.where, before, scene, rng)
        if cell is None:
            self.faults.append(f"no room for the {item.shape}")
            return scene
        touched.add(cell)
        return scene.with_cell(cell, Obj(item.shape, colour, size))

    def _place(
        self, where: Where | None, before: Scene, scene: Scene, rng: random.Random, exclude: int | None = None
    ) -> int | None:
        """The cell an object lands in. Named places are exact; relations go astray with ``wrong_place``."""
        free = [i for i in scene.free() if i != exclude]
        if where is None or not where.given:
            return rng.choice(free) if free else None
        if where.place is not None:
            return PLACES.index(where.place)
        anchor = self._pick(where.anchor, before, rng, "anchor")
        cell = neighbour(anchor, where.relation) if anchor is not None else None
        if cell is None or scene[cell] is not None:
            return rng.choice(free) if free else None
        others = [i for i in free if i != cell]
        if others and rng.random() < self.failure.wrong_place:
            wrong = rng.choice(others)
            self.faults.append(f"wrong place {PLACES[wrong]}")
            return wrong
        return cell

    def _pick(self, ref: Ref | None, scene: Scene, rng: random.Random, what: str) -> int | None:
        found = matches(ref, scene) if ref is not None else []
        if not found:
            return None
        if len(found) > 1:
            self.faults.append(f"ambiguous {what}")
        return rng.choice(found)

    def _collateral(self, scene: Scene, index: int, rng: random.Random) -> Scene:
        obj = scene[index]
        kind = rng.choice(("recolour", "recolour", "remove", "move"))
        if kind == "move" and scene.free():
            cell = rng.choice(scene.free())
            self.faults.append(f"collateral move of the {obj.words}")
            return scene.with_cell(index, None).with_cell(cell, obj)
        if kind == "remove":
            self.faults.append(f"collateral removal of the {obj.words}")
            return scene.with_cell(index, None)
        colour = rng.choice([c for c in COLOURS if c != obj.colour])
        if (obj.shape, obj.colour) in self.held:
            self.faults.append(f"collateral recolour of the {obj.words} held by a reference")
            return scene
        self.faults.append(f"collateral recolour of the {obj.words}")
        return scene.with_cell(index, replace(obj, colour=colour))


def held_by(references: Sequence[Image.Image]) -> frozenset[tuple[str, str]]:
    """The (shape, colour) of every sandbox object the reference pictures show."""
    return frozenset((obj.shape, obj.colour) for image in references for _, obj in read(image).objects())


def _random_obj(rng: random.Random, size: str | None = None) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), size or rng.choice(SIZES))


__all__ = ["FailureModel", "SandboxGenerator"]
