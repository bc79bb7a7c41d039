"""Storyboard Page: a storyboard as printable comic pages, an IMAGE batch and (optionally) PNG files and a
PDF under the output folder."""

from __future__ import annotations

from pathlib import Path

from ..core import print_pages
from ..core.files import atomic_write_bytes
from .host import NodeError, check_inside, engine_errors, module, output_directory
from .images import to_tensor
from .types import CATEGORY, STORYBOARD


class StoryboardPage:
    """The storyboard's pictures in a grid with their captions, page by page."""

    DESCRIPTION = (
        "Lays the storyboard out as comic pages you can print: its pictures in a grid of 1 to 6 columns, "
        "each with its number, name and text (a step without a picture runs across the page), on A4, "
        "Letter or square paper at the resolution you choose. The pages come out as an IMAGE batch; with "
        "save on, the pages (PNG) and one PDF of them, its text searchable, go to the output folder."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("pages", "pdf")
    OUTPUT_TOOLTIPS = (
        "Every page, in order, as one IMAGE batch.",
        "The path of the saved PDF; empty when save is off.",
    )
    OUTPUT_NODE = True
    FUNCTION = "pages"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "storyboard": (STORYBOARD, {"tooltip": "The storyboard, from the Refine Loop."}),
                "page": (
                    list(print_pages.PAGE_SIZES),
                    {"default": print_pages.DEFAULT_PAGE, "tooltip": "The paper size and orientation."},
                ),
                "columns": (
                    "INT",
                    {
                        "default": print_pages.DEFAULT_COLUMNS,
                        "min": 1,
                        "max": print_pages.MAX_COLUMNS,
                        "tooltip": "Pictures side by side in a row.",
                    },
                ),
                "dpi": (
                    "INT",
                    {
                        "default": print_pages.DEFAULT_DPI,
                        "min": print_pages.MIN_DPI,
                        "max": print_pages.MAX_DPI,
                        "step": 1,
                        "tooltip": "Pixels per inch of the pages (300 for print, 150 to look at on screen).",
                    },
                ),
                "save": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Also write the pages (PNG) and a PDF of them under the output folder.",
                    },
                ),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "InterleaveThinker/pages",
                        "tooltip": "File name prefix inside the output folder; a counter is added. "
                        "%date:yyyy-MM-dd% style and sub-folders work as in Save Image; '..' and absolute "
                        "paths are refused.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        if filename_prefix is None:
            return True
        try:
            _check_prefix(filename_prefix)
        except NodeError as error:
            return str(error)
        return True

    def pages(self, storyboard, page, columns, dpi, save, filename_prefix):
        with engine_errors():
            printed = print_pages.print_story(storyboard, page, columns, dpi)
        pages = to_tensor(printed.pages)
        if not save:
            return (pages, "")
        _check_prefix(filename_prefix)
        output = str(output_directory())
        try:
            parent, name, counter, subfolder, _ = module("folder_paths").get_save_image_path(
                filename_prefix, output, *printed.sheet.size
            )
        except Exception as error:  # ComfyUI raises a bare Exception for prefixes outside the output folder
            raise NodeError(f"cannot save under {filename_prefix!r}: {error}") from None
        # Names as Save Image's (name_00001_...), so ComfyUI's counter sees them and the next run goes on.
        while (Path(parent) / f"{name}_{counter:05}_.pdf").exists():
            counter += 1
        stem = Path(parent) / f"{name}_{counter:05}_"
        try:
            files = [
                atomic_write_bytes(f"{stem}page-{index + 1:02d}.png", print_pages.png_bytes(image, dpi))
                for index, image in enumerate(printed.pages)
            ]
            pdf = atomic_write_bytes(f"{stem}.pdf", printed.pdf)
        except OSError as error:
            raise NodeError(f"cannot write the pages to {parent}: {error}") from None
        images = [{"filename": path.name, "subfolder": subfolder, "type": "output"} for path in files]
        return {"ui": {"images": images}, "result": (pages, str(pdf))}


def _check_prefix(prefix: str) -> None:
    check_inside(prefix, "filename_prefix", "the output folder (e.g. InterleaveThinker/pages)")
