"""Pages you can print: the comic pages (PNG) and the PDF of a storyboard, and the Storyboard Page node.

A page cannot be read back by OCR here, so the PNG checks are on the layout the renderer wrote (one cell per
picture step, in order, in the chosen columns; every caption line drawn with ink where the layout put it) and
on the caption text being the step's. The PDF is read back with a real parser (pypdf, a dev extra).
"""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import PaintGenerator
from PIL import Image

from interleave_thinker.core import print_pages
from interleave_thinker.core.errors import BadInput
from interleave_thinker.core.loop import LoopConfig, run_plan
from interleave_thinker.core.protocol import Plan, PlanStep
from interleave_thinker.nodes.host import NodeError
from interleave_thinker.nodes.page_nodes import StoryboardPage

UNICODE_TEXT = "Café, naïve — Straße; 猫が座る 🐱 ✓"


def make_story(steps, instruction="A cat's day", size=(96, 64)):
    plan = Plan(tuple(PlanStep(i + 1, *step) for i, step in enumerate(steps)))
    config = LoopConfig(width=size[0], height=size[1], max_attempts=1, mode="narrative")
    return run_plan(plan, PaintGenerator(), None, instruction=instruction, config=config)


@pytest.fixture
def story():
    return make_story(
        [
            ("Cat", "A cat sits on the mat and waits for its breakfast, tail curled", "a cat"),
            ("Hat", "It puts on a tall red hat", "add a hat"),
            ("Note", None, None, "Cats nap for most of the day; this one does not."),
            ("Dog", UNICODE_TEXT, "a dog"),
            ("Ball", "A ball rolls in", "a ball"),
            ("", "They play until dark", "night"),
        ]
    )


def words(text: str) -> str:
    return " ".join(text.split())


def caption(step) -> str:
    return words(f"{step.number}. {step.plan_step.step_name or f'Step {step.number}'} {step.text}")


def inked(page: Image.Image, box) -> bool:
    """Whether ``box`` on the page holds dark pixels (text), not only white paper."""
    return int(np.asarray(page.crop(box).convert("L")).min()) < 128


# ---------------------------------------------------------------------------------------------------------
# Layout and PNG pages


def test_one_cell_per_picture_step_in_the_chosen_columns(story):
    sheet = print_pages.lay_out(story, page="a4", columns=2, dpi=100)
    assert [cell.step for cell in sheet.cells] == [1, 2, 3, 4, 5, 6]
    pictured = [cell.step for cell in sheet.cells if cell.picture is not None]
    assert pictured == [step.number for step in story.steps if step.image is not None] == [1, 2, 4, 5, 6]
    # Two columns: the text-only step 3 ends the first row, steps 4 and 5 share the next, 6 starts a third.
    rows = {}
    for cell in sheet.cells:
        if cell.picture is not None:
            rows.setdefault(cell.picture.box[1], []).append(cell.step)
    assert list(rows.values()) == [[1, 2], [4, 5], [6]]
    lefts = sorted({cell.picture.box[0] for cell in sheet.cells if cell.picture is not None})
    assert len(lefts) == 2
    # The text-only step runs across the page: it starts at the margin and is wider than one cell.
    note = sheet.cells[2]
    assert note.picture is None and note.lines[0].x == sheet.cells[0].lines[0].x
    # Pictures keep their proportions (96x64) and stay inside the page.
    for picture in sheet.pictures:
        left, top, right, bottom = picture.box
        assert abs((right - left) / (bottom - top) - 96 / 64) < 0.05
        assert 0 <= left < right <= sheet.size[0] and 0 <= top < bottom <= sheet.size[1]


def test_every_caption_is_the_steps_text_and_is_drawn(story):
    sheet = print_pages.lay_out(story, page="letter", columns=3, dpi=120)
    pages = print_pages.draw(sheet)
    assert len(pages) == sheet.page_count and all(page.size == sheet.size for page in pages)
    for step, cell in zip(story.steps, sheet.cells):
        assert words(" ".join(line.text for line in cell.lines)) == caption(step)
        assert cell.lines[0].bold and cell.lines[0].text.startswith(f"{step.number}. ")
        for line in cell.lines:
            box = (line.x, line.y, line.x + max(line.width, 1), line.y + line.size)
            assert inked(pages[line.page], box), line
        if cell.picture is not None:
            left, top, right, bottom = cell.picture.box
            centre = pages[cell.picture.page].getpixel(((left + right) // 2, (top + bottom) // 2))
            assert centre == step.image.getpixel((step.image.width // 2, step.image.height // 2))
    assert words(" ".join(line.text for line in sheet.title)) == "A cat's day"
    assert [line.text for line in sheet.footers] == [
        f"{i + 1} / {sheet.page_count}" for i in range(sheet.page_count)
    ]
    # The unnamed step 6 is captioned with its number.
    assert sheet.cells[-1].lines[0].text == "6. Step 6"


@pytest.mark.parametrize(
    "page, dpi, size",
    [("a4", 150, (1240, 1754)), ("letter-landscape", 100, (1100, 850)), ("square", 72, (576, 576))],
)
def test_pages_have_the_paper_size_at_the_chosen_resolution(story, page, dpi, size):
    pages = print_pages.render_pages(story, page=page, columns=4, dpi=dpi)
    assert pages and all(image.size == size for image in pages)


def test_text_too_long_for_a_page_continues_on_the_next(story):
    long_text = " ".join(f"word{i}" for i in range(900))
    story = make_story([("Long", long_text, "a"), ("Short", "short one", "b")])
    sheet = print_pages.lay_out(story, page="square", columns=6, dpi=72)
    long_cell = sheet.cells[0]
    assert len({line.page for line in long_cell.lines}) >= 2
    assert words(" ".join(line.text for line in long_cell.lines)) == caption(story.steps[0])
    margin = round(36 * 72 / 72)
    for line in sheet.title + [line for cell in sheet.cells for line in cell.lines]:
        assert line.y + line.size <= sheet.size[1] - margin and line.x + line.width <= sheet.size[0] - margin


def test_a_word_wider_than_a_cell_is_broken_inside_it():
    face = print_pages.font(12)
    word = "Supercalifragilisticexpialidocious" * 3
    lines = print_pages.wrap(f"a {word} b", face, 80)
    assert "".join(lines).replace(" ", "") == f"a{word}b" and len(lines) > 3
    assert lines[0] == "a" and word.startswith(lines[1])
    assert all(face.getlength(line) <= 80 for line in lines)
    assert print_pages.wrap("one\ttwo\r\nthree\x00four", face, 1000) == ["one two", "three four"]


def test_bad_options_say_what_to_fix(story):
    for kwargs, named in (
        ({"page": "a5"}, "page must be one of a4, a4-landscape"),
        ({"columns": 7}, "columns must be between 1 and 6"),
        ({"columns": 0}, "columns must be between 1 and 6"),
        ({"dpi": 1200}, "dpi must be between 72 and 300"),
    ):
        with pytest.raises(BadInput, match=named):
            print_pages.render_pages(story, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# PDF


def read_pdf(data: bytes):
    pypdf = pytest.importorskip("pypdf", reason="pypdf (the dev extra) reads the PDF back")
    return pypdf.PdfReader(io.BytesIO(data), strict=True)


def test_the_pdf_opens_and_holds_every_steps_text(story):
    printed = print_pages.print_story(story, page="a4", columns=3, dpi=100)
    reader = read_pdf(printed.pdf)
    assert len(reader.pages) == printed.sheet.page_count
    assert reader.metadata.title == "A cat's day"
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)  # A4 in points
    text = words(" ".join(page.extract_text() for page in reader.pages))
    for step in story.steps:
        assert caption(step) in text, step.number
    assert UNICODE_TEXT in text  # accents, CJK and an emoji come back as written


def test_every_line_is_on_its_page_of_the_pdf_even_with_many_alphabets():
    # More distinct characters than one PDF font holds (255), and a caption running over three pages.
    alphabet = "".join(chr(point) for point in range(0x400, 0x400 + 300))  # Cyrillic and beyond
    long_text = " ".join(alphabet[i : i + 12] for i in range(0, len(alphabet), 12)) * 6
    story = make_story([("Many", long_text, "a"), ("Next", "the end", "b")])
    printed = print_pages.print_story(story, page="square", columns=2, dpi=72)
    reader = read_pdf(printed.pdf)
    assert len(reader.pages) == printed.sheet.page_count >= 3
    for index, page in enumerate(reader.pages):
        extracted = page.extract_text()
        for line in printed.sheet.lines(index):
            assert line.text in extracted, (index, line.text)


def test_the_pdf_pages_are_the_png_pages(story):
    printed = print_pages.print_story(story, page="square", columns=2, dpi=72)
    reader = read_pdf(printed.pdf)
    for page, drawn in zip(reader.pages, printed.pages):
        (embedded,) = page.images
        assert np.array_equal(np.asarray(embedded.image.convert("RGB")), np.asarray(drawn))


def test_write_pages_puts_pngs_and_the_pdf_in_a_folder(story, tmp_path):
    paths = print_pages.write_pages(story, tmp_path, page="a4", columns=2, dpi=100)
    names = [path.name for path in paths]
    count = print_pages.lay_out(story, page="a4", columns=2, dpi=100).page_count
    assert names == [f"page-{i + 1:02d}.png" for i in range(count)] + ["storyboard.pdf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left
    assert all(print_pages.is_print_file(name) for name in names)
    assert not print_pages.is_print_file("index.html") and not print_pages.is_print_file("page-1.png")
    with Image.open(paths[0]) as page:
        assert page.size == (827, 1169) and round(page.info["dpi"][0]) == 100
    assert len(read_pdf(paths[-1].read_bytes()).pages) == count
    # save_pdf writes the same PDF alone.
    alone = print_pages.save_pdf(story, tmp_path / "alone.pdf", page="a4", columns=2, dpi=100)
    assert alone.read_bytes() == paths[-1].read_bytes()


def test_a_storyboard_read_back_from_its_folder_prints_the_same(story, tmp_path):
    from interleave_thinker.core.storyboard import Storyboard

    again = Storyboard.load(story.save(tmp_path / "story"))
    first, second = (print_pages.print_story(s, columns=2, dpi=72) for s in (story, again))
    assert first.pdf == second.pdf


# ---------------------------------------------------------------------------------------------------------
# The Storyboard Page node


@pytest.fixture
def output(tmp_path, monkeypatch):
    """folder_paths as ComfyUI has it: an output folder and the save-path helper (counter from 1)."""
    folder = tmp_path / "output"
    folder.mkdir()
    fake = types.ModuleType("folder_paths")
    fake.get_output_directory = lambda: str(folder)

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        subfolder, name = str(Path(prefix).parent), Path(prefix).name
        subfolder = "" if subfolder == "." else subfolder
        Path(output_dir, subfolder).mkdir(parents=True, exist_ok=True)
        return str(Path(output_dir, subfolder)), name, 1, subfolder, prefix

    fake.get_save_image_path = get_save_image_path
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return folder


def test_storyboard_page_node_gives_the_pages_and_saves_them_with_a_pdf(story, output):
    node = StoryboardPage()
    first = node.pages(story, "a4-landscape", 3, 72, True, "InterleaveThinker/pages")
    pages, pdf = first["result"]
    count = print_pages.lay_out(story, "a4-landscape", 3, 72).page_count
    assert tuple(pages.shape) == (count, 595, 842, 3)
    assert Path(pdf) == output / "InterleaveThinker" / "pages_00001_.pdf"
    assert len(read_pdf(Path(pdf).read_bytes()).pages) == count
    shown = first["ui"]["images"]
    assert [image["filename"] for image in shown] == [
        f"pages_00001_page-{i + 1:02d}.png" for i in range(count)
    ]
    assert all(image["subfolder"] == "InterleaveThinker" and image["type"] == "output" for image in shown)
    # The next run takes the next number, never overwriting.
    again = node.pages(story, "a4-landscape", 3, 72, True, "InterleaveThinker/pages")
    assert Path(again["result"][1]).name == "pages_00002_.pdf"
    # Save off: the pages only, nothing written.
    before = sorted(output.rglob("*"))
    pages, pdf = node.pages(story, "square", 1, 72, False, "InterleaveThinker/pages")
    assert pdf == "" and pages.shape[1:] == (576, 576, 3) and sorted(output.rglob("*")) == before


def test_storyboard_page_node_refuses_a_prefix_outside_the_output_folder(story, output):
    for prefix in ("../escape", "/tmp/x", ""):
        assert "filename_prefix" in StoryboardPage.VALIDATE_INPUTS(prefix)
        with pytest.raises(NodeError, match="filename_prefix"):
            StoryboardPage().pages(story, "a4", 3, 72, True, prefix)
    assert StoryboardPage.VALIDATE_INPUTS(None) is True
    with pytest.raises(NodeError, match="columns must be between 1 and 6"):
        StoryboardPage().pages(story, "a4", 9, 72, False, "x")
