"""The sandbox world: flat shapes on a 3x3 grid, rendered exactly and read back from the pixels.

A scene is nine cells (top left to bottom right), each empty or holding one object with a shape, a colour
and a size. Rendering has no anti-aliasing, so every pixel is either white or one palette colour; reading a
picture back compares each cell's pixels with the masks the renderer draws, so the judge recovers the scene
from the image alone, as it would have to from any generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import BadInput

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SIZES = ("small", "large")
# Cells in reading order; a place's name is how prompts say it.
PLACES = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
GRID = 3
WHITE = (255, 255, 255)
DEFAULT_SIZE = 96  # 3x3 cells of 32 px: one cell is one merged vision token of a Qwen3-VL processor

# Share of the cell's shorter side that a shape spans.
_EXTENT = {"small": 0.45, "large": 0.85}
# Below this overlap with the best reference mask, a cell holds something the sandbox never draws.
MIN_IOU = 0.75


class WorldError(BadInput):
    pass


@dataclass(frozen=True, order=True)
class Obj:
    shape: str
    colour: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise WorldError(f"not a sandbox object: {self.size} {self.colour} {self.shape}")

    @property
    def words(self) -> str:
        """'large red circle'."""
        return f"{self.size} {self.colour} {self.shape}"


UNKNOWN = "unknown"  # a cell whose pixels match no sandbox object


@dataclass(frozen=True)
class Scene:
    """Nine cells in reading order; each is an Obj, None (empty), or UNKNOWN (unreadable pixels)."""

    cells: tuple = (None,) * (GRID * GRID)

    def __post_init__(self) -> None:
        cells = tuple(self.cells)
        if len(cells) != GRID * GRID:
            raise WorldError(f"a scene has {GRID * GRID} cells, got {len(cells)}")
        object.__setattr__(self, "cells", cells)

    @classmethod
    def of(cls, placed: dict[str, Obj]) -> Scene:
        """A scene from {place name: object}."""
        cells: list = [None] * (GRID * GRID)
        for place, obj in placed.items():
            cells[place_index(place)] = obj
        return cls(tuple(cells))

    def __getitem__(self, index: int):
        return self.cells[index]

    def with_cell(self, index: int, value) -> Scene:
        cells = list(self.cells)
        cells[index] = value
        return Scene(tuple(cells))

    def objects(self) -> Iterator[tuple[int, Obj]]:
        for index, cell in enumerate(self.cells):
            if isinstance(cell, Obj):
                yield index, cell

    def free(self) -> list[int]:
        return [index for index, cell in enumerate(self.cells) if cell is None]

    @property
    def readable(self) -> bool:
        return UNKNOWN not in self.cells

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {PLACES[i]: {"shape": o.shape, "colour": o.colour, "size": o.size} for i, o in self.objects()}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls.of({place: Obj(**obj) for place, obj in data.items()})

    def describe(self) -> str:
        parts = [f"a {obj.words} at the {PLACES[i]}" for i, obj in self.objects()]
        return ", ".join(parts) if parts else "nothing"


EMPTY = Scene()


# ---------------------------------------------------------------------------------------------------------
# Places


def place_index(place: str) -> int:
    try:
        return PLACES.index(place)
    except ValueError:
        raise WorldError(f"unknown place {place!r}; choose one of {', '.join(PLACES)}") from None


RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def neighbour(index: int, relation: str) -> int | None:
    """The cell next to ``index`` in the direction of ``relation``, or None at the edge of the grid."""
    row, col = divmod(index, GRID)
    d_row, d_col = RELATIONS[relation]
    row, col = row + d_row, col + d_col
    if 0 <= row < GRID and 0 <= col < GRID:
        return row * GRID + col
    return None


# ---------------------------------------------------------------------------------------------------------
# Rendering


def cell_box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a cell, x1 and y1 exclusive."""
    row, col = divmod(index, GRID)
    return (col * width // GRID, row * height // GRID, (col + 1) * width // GRID, (row + 1) * height // GRID)


def _draw(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], shape: str, size: str, fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    r = max(1.0, min(x1 - x0, y1 - y0) * _EXTENT[size] / 2)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.72
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    else:
        raise WorldError(f"unknown shape {shape!r}")


def render(scene: Scene, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> Image.Image:
    """The scene as an RGB picture: white ground, flat shapes centred in their cells."""
    check_size(width, height)
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    for index, obj in scene.objects():
        _draw(draw, cell_box(index, width, height), obj.shape, obj.size, COLOURS[obj.colour])
    return image


def check_size(width: int, height: int) -> None:
    if width < 8 * GRID or height < 8 * GRID:
        raise WorldError(f"sandbox pictures need at least {8 * GRID}x{8 * GRID} pixels, got {width}x{height}")


@lru_cache(maxsize=64)
def _reference_masks(cell_w: int, cell_h: int) -> tuple[tuple[str, str, np.ndarray], ...]:
    """The mask of every (shape, size) drawn in a cell of this size, for matching read-back pixels."""
    masks = []
    for shape in SHAPES:
        for size in SIZES:
            canvas = Image.new("L", (cell_w, cell_h), 0)
            _draw(ImageDraw.Draw(canvas), (0, 0, cell_w, cell_h), shape, size, 255)
            masks.append((shape, size, np.asarray(canvas) > 0))
    return tuple(masks)


_PALETTE = np.array(list(COLOURS.values()), dtype=np.int32)
_PALETTE_NAMES = tuple(COLOURS)


def read(image: Image.Image) -> Scene:
    """Recover the scene from a picture's pixels (the judge's and the generator's only view of an image).

    Each cell's non-white pixels are matched against the renderer's masks; near-white and off-palette pixels
    are tolerated (a picture may have been resized or saved lossily), anything else reads as UNKNOWN.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    height, width = rgb.shape[:2]
    check_size(width, height)
    cells = []
    for index in range(GRID * GRID):
        x0, y0, x1, y1 = cell_box(index, width, height)
        cells.append(_read_cell(rgb[y0:y1, x0:x1]))
    return Scene(tuple(cells))


def _read_cell(pixels: np.ndarray):
    ink = (np.abs(pixels - 255).sum(axis=-1)) > 60
    if ink.sum() < max(2, ink.size // 200):
        return None
    # The colour: the palette entry nearest to the median ink pixel.
    median = np.median(pixels[ink], axis=0)
    distance = np.abs(_PALETTE - median).sum(axis=-1)
    if distance.min() > 90:
        return UNKNOWN
    colour = _PALETTE_NAMES[int(distance.argmin())]
    # Edge pixels blended with white (a resized picture) count as ink when they are nearer the colour.
    to_colour = np.abs(pixels - _PALETTE[int(distance.argmin())]).sum(axis=-1)
    ink = to_colour < np.abs(pixels - 255).sum(axis=-1)
    best, best_iou = None, 0.0
    for shape, size, mask in _reference_masks(ink.shape[1], ink.shape[0]):
        union = np.logical_or(mask, ink).sum()
        iou = np.logical_and(mask, ink).sum() / union if union else 0.0
        if iou > best_iou:
            best, best_iou = (shape, size), iou
    if best is None or best_iou < MIN_IOU:
        return UNKNOWN
    return Obj(best[0], colour, best[1])


def blank(width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> Image.Image:
    return render(EMPTY, width, height)


def scene_key(scene: Scene) -> str:
    """A short stable text key of a scene (for seeds and file names)."""
    return "|".join(
        "-" if c is None else "?" if c == UNKNOWN else f"{c.shape[0:2]}{c.colour[0:2]}{c.size[0]}"
        for c in scene.cells
    )


def all_objects() -> Sequence[Obj]:
    return [Obj(shape, colour, size) for shape in SHAPES for colour in COLOURS for size in SIZES]


__all__ = [
    "COLOURS",
    "DEFAULT_SIZE",
    "EMPTY",
    "GRID",
    "Obj",
    "PLACES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "UNKNOWN",
    "WorldError",
    "all_objects",
    "blank",
    "cell_box",
    "neighbour",
    "place_index",
    "read",
    "render",
    "scene_key",
]
