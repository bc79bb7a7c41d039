"""The Generator protocol: text to image for a first picture, and an edit of the before image for the rest."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from PIL import Image

from ..errors import BackendError

# How a generator turns the before image into the next one; the route used is recorded on every attempt.
TEXT_TO_IMAGE = "text-to-image"  # a fresh picture from the prompt alone (also: independent steps)
IMG2IMG = "img2img"  # encode the before image, denoise part of the way
REFERENCE = "reference"  # the before image conditions the model (Kontext, FLUX.2, Qwen-Image-Edit, ...)
ROUTES = (TEXT_TO_IMAGE, IMG2IMG, REFERENCE)
EDIT_ROUTE_CHOICES = ("auto",) + ROUTES


class GeneratorError(BackendError):
    """The generator could not make an image: a missing folder, an unsupported route, a failed call."""


@runtime_checkable
class Generator(Protocol):
    """Draws the story's pictures.

    A generator that can take extra reference pictures (the story's cast, an anchor) says how many in
    ``max_references`` and accepts ``references=`` (a list of images) in both calls; the loop passes it only
    then, and only when there are some, so a generator without the attribute never sees the keyword.
    """

    name: str
    edit_route: str

    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int) -> Image.Image: ...

    def edit(self, before: Image.Image, prompt: str, *, seed: int) -> Image.Image:
        """The next picture from ``before`` and ``prompt``, the same size as ``before``."""
        ...


def reference_capacity(generator: object) -> int:
    """How many extra reference pictures ``generator`` takes per call: its ``max_references``, else 0."""
    return max(0, int(getattr(generator, "max_references", 0) or 0))


def check_route(route: str) -> str:
    if route not in EDIT_ROUTE_CHOICES:
        raise GeneratorError(f"unknown edit route {route!r}; choose one of {', '.join(EDIT_ROUTE_CHOICES)}")
    return route


# ---------------------------------------------------------------------------------------------------------
# Several threads (a batch that overlaps its stories)


def concurrent_safe(model: object) -> bool:
    """Whether ``model`` may be called from several threads at once: its ``concurrent_safe`` attribute. A
    model that does not say is taken to hold one device (a pipeline, a local VLM) and is not."""
    return bool(getattr(model, "concurrent_safe", False))


class SerialGenerator:
    """``generator`` behind one lock: any number of threads may call it, one picture is drawn at a time.
    Everything else (``name``, ``edit_route``, ...) reads through to the generator."""

    concurrent_safe = True

    def __init__(self, generator: Generator, lock: threading.Lock | None = None):
        self.generator = generator
        self.lock = lock or threading.Lock()

    def __getattr__(self, name: str):
        if name == "generator":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.generator, name)

    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int, **extra) -> Image.Image:
        with self.lock:
            return self.generator.text_to_image(prompt, width=width, height=height, seed=seed, **extra)

    def edit(self, before: Image.Image, prompt: str, *, seed: int, **extra) -> Image.Image:
        with self.lock:
            return self.generator.edit(before, prompt, seed=seed, **extra)

    def __repr__(self) -> str:
        return f"SerialGenerator({self.generator!r})"


class GeneratorPool:
    """Generators that draw the same pictures (one ComfyUI server per GPU, each with the same model and
    graphs) as one: each call goes to a free member, the one idle longest first, and waits while all are busy.
    A story's pictures do not depend on which member drew them, so a pool of any size gives the storyboards
    of one server."""

    concurrent_safe = True

    def __init__(self, generators: Sequence[Generator], name: str | None = None):
        self.members = list(generators)
        if not self.members:
            raise GeneratorError("a generator pool needs at least one generator")
        routes = sorted({member.edit_route for member in self.members})
        if len(routes) > 1:
            raise GeneratorError(f"the pool's generators edit in different ways ({', '.join(routes)})")
        self.edit_route = routes[0]
        self.max_references = min(reference_capacity(member) for member in self.members)
        names = list(dict.fromkeys(member.name for member in self.members))
        self.name = name or (names[0] if len(names) == 1 else " | ".join(names))
        self._free: queue.Queue = queue.Queue()
        for member in self.members:
            self._free.put(member)

    @contextmanager
    def _member(self) -> Iterator[Generator]:
        member = self._free.get()
        try:
            yield member
        finally:
            self._free.put(member)

    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int, **extra) -> Image.Image:
        with self._member() as member:
            return member.text_to_image(prompt, width=width, height=height, seed=seed, **extra)

    def edit(self, before: Image.Image, prompt: str, *, seed: int, **extra) -> Image.Image:
        with self._member() as member:
            return member.edit(before, prompt, seed=seed, **extra)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"GeneratorPool({self.members!r})"
