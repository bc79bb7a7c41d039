"""The Generator protocol: text to image for a first picture, and an edit of the before image for the rest."""

from __future__ import annotations

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
    name: str
    edit_route: str

    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int) -> Image.Image: ...

    def edit(self, before: Image.Image, prompt: str, *, seed: int) -> Image.Image:
        """The next picture from ``before`` and ``prompt``, the same size as ``before``."""
        ...


def check_route(route: str) -> str:
    if route not in EDIT_ROUTE_CHOICES:
        raise GeneratorError(f"unknown edit route {route!r}; choose one of {', '.join(EDIT_ROUTE_CHOICES)}")
    return route
