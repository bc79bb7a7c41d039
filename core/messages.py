"""Templates and images into chat messages, the one format every agent backend takes.

A message is ``{"role": "user", "content": [part, ...]}`` with parts ``{"type": "text", "text": str}`` and
``{"type": "image", "image": PIL.Image}`` (the transformers chat format; the HTTP backend converts images to
data URLs). There is one user turn and no system message, as the released weights expect.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from . import settings
from .errors import BadInput
from .prompts import Template, load_template

IMAGE_MARKER = "<image>"
_MARKER_RE = re.compile(r"<image>", re.IGNORECASE)

# Per-image pixel budgets: training used at most 1024x1024; calls with many images shrink each one further.
MAX_PIXELS = 1024 * 1024
MANY_IMAGES_MAX_PIXELS = 384 * 384
MANY_IMAGES = 5

Message = dict[str, Any]


class MessageError(BadInput):
    pass


def choose_mode(mode: str, images: Sequence[Image.Image]) -> str:
    """'auto' plans in guidance mode when the user gave images, in narrative mode otherwise."""
    if mode not in ("auto", "narrative", "guidance"):
        raise MessageError(f"unknown planner mode {mode!r}; choose auto, narrative or guidance")
    if mode == "auto":
        return "guidance" if images else "narrative"
    if mode == "guidance" and not images:
        raise MessageError("guidance mode needs at least one input image; add images or use narrative mode")
    return mode


def pixel_budget(image_count: int, max_pixels: int = MAX_PIXELS) -> int:
    return min(max_pixels, MANY_IMAGES_MAX_PIXELS) if image_count >= MANY_IMAGES else max_pixels


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """An RGB copy no larger than ``max_pixels`` in area, aspect ratio kept; never upscaled."""
    image = to_rgb(image)
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def open_image(path: str | Path, max_pixels: int = settings.MAX_INPUT_PIXELS) -> Image.Image:
    """An RGB image read from a file. Its size comes from the header and is refused above ``max_pixels``
    before a pixel is decoded, so a decompression bomb costs nothing."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; here every oversized picture is refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MessageError(
                        f"image {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels); input "
                        f"images may have at most {max_pixels / 1e6:.0f} megapixels: downscale it"
                    )
                image.load()
                rgb = to_rgb(image)
                return rgb.copy() if rgb is image else rgb  # closing the file frees the image it opened
    except MessageError:
        raise
    except FileNotFoundError:
        raise MessageError(f"image not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MessageError(
            f"image {path} is too large to read safely ({error}); input images may have at most "
            f"{max_pixels / 1e6:.0f} megapixels: downscale it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise MessageError(f"cannot read image {path}: {error}; use a PNG, JPEG or WebP file") from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as on the canvas the planner imagines.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def white_canvas(width: int, height: int) -> Image.Image:
    """Narrative step 1's before image: a white canvas of the output size."""
    return Image.new("RGB", (width, height), (255, 255, 255))


def count_markers(text: str) -> int:
    return len(_MARKER_RE.findall(text))


def planner_messages(
    instruction: str,
    images: Sequence[Image.Image] = (),
    mode: str = "auto",
    template: Template | None = None,
    max_pixels: int = MAX_PIXELS,
) -> list[Message]:
    """The Planner's single user turn: the template around the instruction, user images at their markers.

    Images stand where the instruction has ``<image>`` markers; with no markers they come first, in order.
    """
    instruction = instruction.strip()
    if not instruction:
        raise MessageError("the instruction is empty; describe the story or process to illustrate")
    mode = choose_mode(mode, images)
    template = template or load_template(mode)
    markers = count_markers(instruction)
    if markers and markers != len(images):
        raise MessageError(
            f"the instruction has {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s) were given; "
            f"use one marker per image, or none to put the images first"
        )
    if images and not markers:
        instruction = IMAGE_MARKER * len(images) + "\n" + instruction
    budget = pixel_budget(len(images), max_pixels)
    head, tail = template.split("text_input")
    pieces = _MARKER_RE.split(instruction)
    parts: list[dict[str, Any]] = []
    _add_text(parts, head + pieces[0])
    for image, piece in zip(images, pieces[1:]):
        parts.append({"type": "image", "image": fit_pixels(image, budget)})
        _add_text(parts, piece)
    _add_text(parts, tail)
    return [{"role": "user", "content": _merge_text(parts)}]


def critic_messages(
    before: Image.Image,
    after: Image.Image,
    original_instruction: str,
    prompt_used: str,
    template: Template | None = None,
    max_pixels: int = MAX_PIXELS,
) -> list[Message]:
    """The Critic's single user turn: the before image, the after image, then the text."""
    template = template or load_template("critic")
    text = template.render(
        original_instruction=original_instruction or "", rewritten_prompt=prompt_used or ""
    )
    # A template written for the official data starts with two markers; our images already stand first.
    text = _MARKER_RE.sub("", text, count=2) if text.lower().startswith(IMAGE_MARKER) else text
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": fit_pixels(before, max_pixels)},
                {"type": "image", "image": fit_pixels(after, max_pixels)},
                {"type": "text", "text": text.lstrip("\n")},
            ],
        }
    ]


def message_images(messages: Sequence[Message]) -> list[Image.Image]:
    return [part["image"] for message in messages for part in _parts(message) if part.get("type") == "image"]


def message_text(messages: Sequence[Message]) -> str:
    return "".join(
        part["text"] for message in messages for part in _parts(message) if part.get("type") == "text"
    )


def _parts(message: Message) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _add_text(parts: list[dict[str, Any]], text: str) -> None:
    if text:
        parts.append({"type": "text", "text": text})


def _merge_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(part)
    return merged


__all__ = [
    "IMAGE_MARKER",
    "MAX_PIXELS",
    "Message",
    "MessageError",
    "choose_mode",
    "critic_messages",
    "fit_pixels",
    "message_images",
    "message_text",
    "open_image",
    "pixel_budget",
    "planner_messages",
    "white_canvas",
]
