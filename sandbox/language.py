"""The sandbox language: step prompts parsed into commands, commands applied to scenes, scenes phrased back.

One small grammar serves everyone: the task generator writes instructions in it, the generator reads prompts
with it, and the oracle judge applies instructions with it exactly. Sentences look like

    draw a large red circle at the top left and a small blue square at the centre
    add a small green triangle to the right of the red circle
    remove the blue square
    make the red circle yellow            make the red circle small
    make the red circle the same colour as the blue square
    move the red circle to the bottom left       move the red circle below the blue square

A prompt is *precise* when every object it draws has a size, a colour and a named place, every object it edits
is named with its size, colour, shape and place, several new objects come with their count ("two objects:"),
and it closes with "keep everything else unchanged" (an edit) or "nothing else" (a new picture). The
canonical precise prompt of any change is :func:`precise_prompt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..core.errors import BadInput
from .world import COLOURS, EMPTY, PLACES, SHAPES, SIZES, Obj, Scene, neighbour, place_index

KEEP = "keep everything else unchanged"
NOTHING_ELSE = "nothing else"
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
VERBS = ("draw", "add", "remove", "make", "move")
_FILLER = {"please", "then", "now", "also", "just", "finally", "next", "first"}
_SYNONYMS = {
    "color": "colour",
    "colours": "colour",
    "colors": "colour",
    "center": "centre",
    "middle": "centre",
    "big": "large",
    "tiny": "small",
    "delete": "remove",
    "erase": "remove",
    "recolour": "make",
    "recolor": "make",
    "place": "add",
    "put": "add",
    "paint": "draw",
    "objects": "object",
    "gray": "grey",
    "leave": "keep",
    "rest": "else",
}


class LanguageError(BadInput):
    """Text that is not a sandbox sentence."""


class ResolveError(BadInput):
    """A sentence that cannot be carried out exactly on this scene (ambiguous, missing or impossible)."""


@dataclass(frozen=True)
class Ref:
    """A description of an existing object; any part may be left out."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    place: str | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.shape, self.colour, self.size, self.place)

    def matches(self, index: int, obj: Obj) -> bool:
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
            and (self.place is None or PLACES[index] == self.place)
        )

    @property
    def words(self) -> str:
        text = " ".join(w for w in (self.size, self.colour, self.shape or "object") if w)
        return f"the {text}" + (f" at the {self.place}" if self.place else "")


@dataclass(frozen=True)
class Where:
    """Where an object goes: a named place, or a relation to another object."""

    place: str | None = None
    relation: str | None = None
    anchor: Ref | None = None

    @property
    def given(self) -> bool:
        return self.place is not None or self.relation is not None


@dataclass(frozen=True)
class New:
    """An object to draw; missing parts are left to the generator."""

    shape: str | None
    colour: str | None
    size: str | None
    where: Where = Where()

    @property
    def complete(self) -> bool:
        return None not in (self.shape, self.colour, self.size) and self.where.place is not None


@dataclass(frozen=True)
class Command:
    verb: str  # draw | add | remove | recolour | resize | move
    new: tuple[New, ...] = ()
    count: int | None = None
    target: Ref | None = None
    colour: str | None = None
    colour_like: Ref | None = None
    size: str | None = None
    to: Where | None = None


@dataclass(frozen=True)
class Sentence:
    """A parsed prompt: its commands and its closing clauses."""

    commands: tuple[Command, ...]
    keep: bool = False
    nothing_else: bool = False
    unknown: tuple[str, ...] = field(default=())  # clauses nobody understood


# ---------------------------------------------------------------------------------------------------------
# Parsing


def normalise(text: str) -> list[str]:
    text = str(text).lower().replace("colored", "coloured")
    text = re.sub(r"[^a-z0-9;:,]+", " ", text)
    text = re.sub(r"\s*([;:,])\s*", r" \1 ", text)
    return [_SYNONYMS.get(word, word) for word in text.split()]


def parse(text: str) -> Sentence:
    """Parse a prompt or instruction. Clauses end at ';' or '.'; unknown clauses are kept aside."""
    clauses = [c for c in re.split(r"[;.\n]+", str(text)) if c.strip()]
    commands: list[Command] = []
    keep = nothing_else = False
    unknown: list[str] = []
    for clause in clauses:
        words = [w for w in normalise(clause) if w not in _FILLER]
        while words and words[0] in (",", "and"):
            words = words[1:]
        if not words:
            continue
        joined = " ".join(w for w in words if w != ",")
        if joined in (
            "keep everything else unchanged",
            "keep everything else the same",
            "keep else unchanged",
            "keep the else unchanged",
            "change nothing else",
        ):
            keep = True
            continue
        if joined == "nothing else":
            nothing_else = True
            continue
        # A closing clause glued on: "..., nothing else" / "... and keep everything else unchanged".
        for tail, flag in ((" nothing else", "n"), (" keep everything else unchanged", "k")):
            if joined.endswith(tail) and joined != tail.strip():
                joined = joined[: -len(tail)].rstrip(" ,").removesuffix(" and").rstrip(" ,")
                nothing_else |= flag == "n"
                keep |= flag == "k"
        try:
            commands.append(_Parser(joined.split()).command())
        except LanguageError:
            unknown.append(clause.strip())
    return Sentence(tuple(commands), keep, nothing_else, tuple(unknown))


class _Parser:
    def __init__(self, words: list[str]):
        self.words = [w for w in words if w != ","]
        self.i = 0

    # -- tokens -------------------------------------------------------------------------------------------
    def peek(self, offset: int = 0) -> str | None:
        j = self.i + offset
        return self.words[j] if j < len(self.words) else None

    def take(self, *options: str) -> str | None:
        if self.peek() in options:
            self.i += 1
            return self.words[self.i - 1]
        return None

    def expect(self, *options: str) -> str:
        word = self.take(*options)
        if word is None:
            raise LanguageError(
                f"expected {' or '.join(options)} at {' '.join(self.words[self.i :]) or 'the end'!r}"
            )
        return word

    def at_end(self) -> bool:
        return self.i >= len(self.words)

    # -- grammar ------------------------------------------------------------------------------------------
    def command(self) -> Command:
        verb = self.expect(*VERBS)
        if verb in ("draw", "add"):
            count = None
            if self.peek() in NUMBERS and self.peek(1) == "object":
                count = NUMBERS[self.words[self.i]]
                self.i += 2
                self.take(":")
            new = [self.new_object()]
            while self.take("and"):
                new.append(self.new_object())
            command = Command(verb, new=tuple(new), count=count)
        elif verb == "remove":
            command = Command("remove", target=self.ref())
        elif verb == "move":
            target = self.ref()
            if self.take("from"):
                self.take("the")
                target = replace(target, place=self.place())
            command = Command("move", target=target, to=self.where(allow_to=True))
        else:  # make
            target = self.ref()
            if self.peek() in SIZES:
                command = Command("resize", target=target, size=self.expect(*SIZES))
            elif self.peek() in COLOURS:
                command = Command("recolour", target=target, colour=self.expect(*COLOURS))
            elif self.take("the") and self.take("same") and self.take("colour") and self.take("as"):
                command = Command("recolour", target=target, colour_like=self.ref())
            else:
                raise LanguageError("'make' needs a colour, a size or 'the same colour as'")
        if not self.at_end():
            raise LanguageError(f"unexpected words {' '.join(self.words[self.i :])!r}")
        return command

    def noun(self, articles: tuple[str, ...]) -> tuple[str | None, str | None, str]:
        self.take(*articles)
        size = self.take(*SIZES)
        colour = self.take(*COLOURS)
        if size is None:  # 'a red small circle' is not canonical, but clear
            size = self.take(*SIZES)
        shape = self.take(*SHAPES)
        if shape is None:
            raise LanguageError(
                f"expected a shape ({', '.join(SHAPES)}) at {' '.join(self.words[self.i :])!r}"
            )
        return size, colour, shape

    def new_object(self) -> New:
        size, colour, shape = self.noun(("a", "an", "one"))
        return New(shape, colour, size, self.where(allow_to=False))

    def ref(self) -> Ref:
        size, colour, shape = self.noun(("the", "a", "an"))
        place = None
        if self.peek() == "at" and self.peek(1) == "the":
            self.i += 2
            place = self.place()
        return Ref(shape, colour, size, place)

    def where(self, allow_to: bool) -> Where:
        relation = self.relation()
        if relation:
            return Where(relation=relation, anchor=self.ref())
        if self.take("at", "in") or (allow_to and self.take("to", "into")):
            self.take("the")
            return Where(place=self.place())
        if not allow_to and self.at_end() or self.peek() == "and":
            return Where()
        raise LanguageError(f"expected a place at {' '.join(self.words[self.i :]) or 'the end'!r}")

    def relation(self) -> str | None:
        w = self.words[self.i :]
        for phrase, relation in (
            ("to the left of", "left of"),
            ("to the right of", "right of"),
            ("left of", "left of"),
            ("right of", "right of"),
            ("above", "above"),
            ("below", "below"),
            ("under", "below"),
            ("over", "above"),
        ):
            parts = phrase.split()
            if w[: len(parts)] == parts:
                self.i += len(parts)
                return relation
        return None

    def place(self) -> str:
        two = " ".join(self.words[self.i : self.i + 2])
        if two in PLACES:
            self.i += 2
            return two
        if self.peek() in PLACES:
            self.i += 1
            return self.words[self.i - 1]
        if two in ("top centre", "bottom centre", "centre left", "centre right"):
            self.i += 2
            return {
                "top centre": "top",
                "bottom centre": "bottom",
                "centre left": "left",
                "centre right": "right",
            }[two]
        raise LanguageError(f"expected a place ({', '.join(PLACES)}) at {' '.join(self.words[self.i :])!r}")


# ---------------------------------------------------------------------------------------------------------
# Exact meaning: what the sentence asks for, on this scene


def matches(ref: Ref, scene: Scene) -> list[int]:
    return [index for index, obj in scene.objects() if ref.matches(index, obj)]


def resolve_ref(ref: Ref, scene: Scene) -> int:
    found = matches(ref, scene)
    if not found:
        raise ResolveError(f"there is no {ref.words.removeprefix('the ')}")
    if len(found) > 1:
        raise ResolveError(f"{ref.words} is ambiguous: {len(found)} objects match")
    return found[0]


def resolve_where(where: Where, scene: Scene, moving: int | None = None) -> int:
    if where.place is not None:
        return place_index(where.place)
    if where.relation is None or where.anchor is None:
        raise ResolveError("the sentence does not say where")
    anchor = resolve_ref(where.anchor, scene)
    cell = neighbour(anchor, where.relation)
    if cell is None:
        raise ResolveError(f"nothing fits {where.relation} {where.anchor.words}: it is at the edge")
    return cell


def apply(sentence: Sentence | str, scene: Scene) -> Scene:
    """The scene the sentence asks for, carried out exactly; ResolveError if it cannot be done exactly."""
    sentence = parse(sentence) if isinstance(sentence, str) else sentence
    if sentence.unknown:
        raise ResolveError(f"cannot read {sentence.unknown[0]!r}")
    if not sentence.commands:
        raise ResolveError("the sentence asks for nothing")
    for command in sentence.commands:
        scene = _apply(command, scene)
    return scene


def _apply(command: Command, scene: Scene) -> Scene:
    if command.verb in ("draw", "add"):
        if command.count is not None and command.count != len(command.new):
            raise ResolveError(f"the count says {command.count} but {len(command.new)} objects are named")
        out = scene
        for new in command.new:
            if None in (new.shape, new.colour, new.size):
                raise ResolveError(f"the {new.shape} lacks a colour or a size")
            cell = resolve_where(new.where, scene)  # relations refer to the picture before the step
            if out[cell] is not None:
                raise ResolveError(f"the {PLACES[cell]} is already taken")
            out = out.with_cell(cell, Obj(new.shape, new.colour, new.size))
        return out
    index = resolve_ref(command.target, scene)
    obj = scene[index]
    if command.verb == "remove":
        return scene.with_cell(index, None)
    if command.verb == "recolour":
        colour = command.colour or scene[resolve_ref(command.colour_like, scene)].colour
        return scene.with_cell(index, replace(obj, colour=colour))
    if command.verb == "resize":
        return scene.with_cell(index, replace(obj, size=command.size))
    cell = resolve_where(command.to, scene, moving=index)  # move
    if cell != index and scene[cell] is not None:
        raise ResolveError(f"the {PLACES[cell]} is already taken")
    return scene.with_cell(index, None).with_cell(cell, obj)


# ---------------------------------------------------------------------------------------------------------
# Phrasing


def new_words(obj: Obj, place: str) -> str:
    return f"{'an' if obj.size[0] in 'aeiou' else 'a'} {obj.words} at the {place}"


def ref_words(obj: Obj, place: str | None = None, *, size: bool = True, colour: bool = True) -> str:
    words = " ".join(w for w in (obj.size if size else None, obj.colour if colour else None, obj.shape) if w)
    return f"the {words}" + (f" at the {place}" if place else "")


def precise_prompt(before: Scene, after: Scene) -> str:
    """The canonical precise prompt that turns ``before`` into ``after`` (from text when before is empty)."""
    if before == EMPTY:
        objects = [new_words(obj, PLACES[i]) for i, obj in after.objects()]
        if not objects:
            return "draw nothing"
        if len(objects) == 1:
            return f"draw {objects[0]}; {NOTHING_ELSE}"
        return f"draw {_count(len(objects))}: {' and '.join(objects)}; {NOTHING_ELSE}"
    clauses = change_clauses(before, after)
    return "; ".join(clauses + [KEEP]) if clauses else KEEP


def change_clauses(before: Scene, after: Scene) -> list[str]:
    """One precise clause per change, a move detected as such."""
    changed = [i for i in range(len(before.cells)) if before[i] != after[i]]
    added = [i for i in changed if before[i] is None]
    removed = [i for i in changed if after[i] is None]
    clauses: list[str] = []
    for i in list(removed):  # an object that vanished from one cell and appeared unchanged in another moved
        twin = next((j for j in added if after[j] == before[i]), None)
        if twin is not None:
            clauses.append(f"move {ref_words(before[i], PLACES[i])} to the {PLACES[twin]}")
            removed.remove(i)
            added.remove(twin)
    for i in removed:
        clauses.append(f"remove {ref_words(before[i], PLACES[i])}")
    for i in changed:
        if i in added or i in removed or before[i] is None or after[i] is None:
            continue
        old, new = before[i], after[i]
        if old.shape == new.shape and old.colour != new.colour and old.size == new.size:
            clauses.append(f"make {ref_words(old, PLACES[i])} {new.colour}")
        elif old.shape == new.shape and old.size != new.size and old.colour == new.colour:
            clauses.append(f"make {ref_words(old, PLACES[i])} {new.size}")
        else:
            clauses.append(f"remove {ref_words(old, PLACES[i])}")
            added.append(i)
    if len(added) == 1:
        clauses.append(f"add {new_words(after[added[0]], PLACES[added[0]])}")
    elif added:
        objects = " and ".join(new_words(after[i], PLACES[i]) for i in sorted(added))
        clauses.append(f"add {_count(len(added))}: {objects}")
    return clauses


def _count(n: int) -> str:
    return f"{NUMBER_WORDS.get(n, str(n))} objects"


def is_precise(text: str) -> bool:
    """Whether a prompt leaves the generator nothing to guess (see the module docstring)."""
    sentence = parse(text)
    if sentence.unknown or not sentence.commands:
        return False
    drawing = all(c.verb in ("draw", "add") for c in sentence.commands)
    for command in sentence.commands:
        if command.verb in ("draw", "add"):
            if not all(n.complete for n in command.new):
                return False
            if len(command.new) > 1 and command.count != len(command.new):
                return False
        else:
            if not command.target.complete or command.colour_like is not None:
                return False
            if command.to is not None and command.to.place is None:
                return False
    first_is_draw = sentence.commands[0].verb == "draw"
    return sentence.nothing_else if first_is_draw and drawing else sentence.keep


__all__ = [
    "Command",
    "KEEP",
    "LanguageError",
    "NOTHING_ELSE",
    "New",
    "Ref",
    "ResolveError",
    "Sentence",
    "Where",
    "apply",
    "change_clauses",
    "is_precise",
    "matches",
    "new_words",
    "normalise",
    "parse",
    "precise_prompt",
    "ref_words",
    "resolve_ref",
    "resolve_where",
]
