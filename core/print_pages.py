"""Pages you can print: a storyboard as comic pages (its pictures in a grid, each with its caption), as PNG
files and as one PDF.

Pillow lays out and draws every page. The PDF holds those same pages as pictures, with the text laid
invisibly over the captions where they are drawn (as on a scanned page with an OCR layer): it prints as the
PNG looks, and its text can be searched, selected and copied. Pillow's own PDF writer stores pictures only, so
the few PDF objects that carry the text are written here.

A step with a picture is one cell of the grid: the picture, then "number. name" and the step's text. A step
without one (text only) ends the row and runs across the page. Text that does not fit a page continues on the
next, so every step's text is on the pages in full.
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from . import settings
from .files import atomic_write_bytes

# (width, height) in inches, as the page stands.
_MM = 1 / 25.4
PAGE_SIZES = {
    "a4": (210 * _MM, 297 * _MM),
    "a4-landscape": (297 * _MM, 210 * _MM),
    "letter": (8.5, 11.0),
    "letter-landscape": (11.0, 8.5),
    "square": (8.0, 8.0),
}
DEFAULT_PAGE = "a4"
DEFAULT_COLUMNS, MAX_COLUMNS = 3, 6
# 300 dpi is print quality; above it an A4 page alone is tens of megapixels held in memory.
DEFAULT_DPI, MIN_DPI, MAX_DPI = 150, 72, 300
PDF_FILE = "storyboard.pdf"
_PAGE_FILE_RE = re.compile(r"page-\d{2,}\.png")

# Sizes in points (1/72 inch). Captions get smaller as the cells get narrower.
_MARGIN, _GUTTER, _CAPTION_GAP, _ROW_GAP = 36, 13, 5, 16
_TITLE_POINTS, _FOOTER_POINTS = 16, 7
_BODY_POINTS = {1: 11, 2: 10, 3: 9, 4: 8.5, 5: 8, 6: 7.5}
_LEADING = 1.3  # line height over font size
_MAX_PICTURE_SHARE = 0.7  # of the page's text height: a picture always leaves room for its caption
_INK, _RULE, _FAINT = (20, 20, 20), (200, 200, 200), (110, 110, 110)


def page_file(index: int) -> str:
    """The file name of page ``index`` (0-based) inside a storyboard folder."""
    return f"page-{index + 1:02d}.png"


def is_print_file(name: str) -> bool:
    """Whether ``name`` is one of the files :func:`write_pages` puts in a storyboard folder."""
    return name == PDF_FILE or bool(_PAGE_FILE_RE.fullmatch(name))


def check_options(page: str, columns: int, dpi: int) -> None:
    """One clear error for a page size, column count or resolution out of its range."""
    settings.check_choice("page", page, tuple(PAGE_SIZES))
    settings.check_range("columns", columns, 1, MAX_COLUMNS)
    settings.check_range("dpi", dpi, MIN_DPI, MAX_DPI)


# ---------------------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Line:
    """One line of text as drawn: its page, top-left corner, width and font size, in pixels."""

    page: int
    x: int
    y: int
    text: str
    size: int
    bold: bool = False
    width: int = 0


@dataclass(frozen=True)
class Picture:
    """A step's picture as placed: its page and box (left, top, right, bottom) in pixels."""

    page: int
    box: tuple[int, int, int, int]
    image: Image.Image = field(repr=False, compare=False)


@dataclass
class Cell:
    """One step on the pages: its picture (None for a text-only step) and its caption's lines."""

    step: int
    picture: Picture | None
    lines: list[Line]


@dataclass
class Sheet:
    """A storyboard laid out on pages: what :func:`draw` draws and what the PDF's text layer holds."""

    page: str
    columns: int
    dpi: int
    size: tuple[int, int]  # of one page, in pixels
    page_count: int
    title: list[Line]
    cells: list[Cell]
    footers: list[Line]

    def lines(self, page: int | None = None) -> list[Line]:
        """Every line in reading order: the title, each step's caption, the page numbers."""
        lines = self.title + [line for cell in self.cells for line in cell.lines] + self.footers
        return lines if page is None else [line for line in lines if line.page == page]

    @property
    def pictures(self) -> list[Picture]:
        return [cell.picture for cell in self.cells if cell.picture is not None]


def lay_out(
    story: Any, page: str = DEFAULT_PAGE, columns: int = DEFAULT_COLUMNS, dpi: int = DEFAULT_DPI
) -> Sheet:
    """Place a storyboard's title, pictures and captions on pages of ``page`` size at ``dpi``.

    ``story`` is a :class:`~.storyboard.Storyboard` (anything with ``instruction`` and ``steps`` whose items
    have ``number``, ``plan_step.step_name``, ``text`` and ``image``).
    """
    check_options(page, columns, dpi)
    width_in, height_in = PAGE_SIZES[page]
    size = (round(width_in * dpi), round(height_in * dpi))

    def px(points: float) -> int:
        return max(1, round(points * dpi / 72))

    margin, gutter = px(_MARGIN), px(_GUTTER)
    flow = _Flow(top=margin, bottom=size[1] - margin)
    text_width = size[0] - 2 * margin
    cell_width = (text_width - (columns - 1) * gutter) // columns
    body, title_size = px(_BODY_POINTS[columns]), px(_TITLE_POINTS)
    max_picture = int((flow.bottom - flow.top) * _MAX_PICTURE_SHARE)

    title = flow.place([(margin, _wrapped(story.instruction, title_size, True, text_width))], title_size)[0]
    if title:
        flow.y += px(_ROW_GAP)
    cells: list[Cell] = []
    row: list[Any] = []

    def place_row() -> None:
        placed = []
        for step in row:
            image = step.image
            scale = min(cell_width / image.width, max_picture / image.height)
            placed.append((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        height = max(h for _, h in placed)
        if flow.y + height + px(_CAPTION_GAP) + _line_height(body) > flow.bottom and flow.y > flow.top:
            flow.new_page()
        lefts = [margin + i * (cell_width + gutter) for i in range(len(row))]
        pictures = [
            Picture(
                flow.page,
                (x + (cell_width - w) // 2, flow.y, x + (cell_width - w) // 2 + w, flow.y + h),
                s.image,
            )
            for x, (w, h), s in zip(lefts, placed, row)
        ]
        flow.y += height + px(_CAPTION_GAP)
        captions = flow.place([(x, _caption(s, body, cell_width)) for x, s in zip(lefts, row)], body)
        cells.extend(Cell(s.number, p, lines) for s, p, lines in zip(row, pictures, captions))
        flow.y += px(_ROW_GAP)
        row.clear()

    for step in story.steps:
        if step.image is not None:
            row.append(step)
            if len(row) == columns:
                place_row()
            continue
        if row:
            place_row()
        (lines,) = flow.place([(margin, _caption(step, body, text_width))], body)
        cells.append(Cell(step.number, None, lines))
        flow.y += px(_ROW_GAP)
    if row:
        place_row()

    count = flow.page + 1
    footer_size = px(_FOOTER_POINTS)
    footer_font = font(footer_size)
    footers = []
    for index in range(count):
        text = f"{index + 1} / {count}"
        width = round(footer_font.getlength(text))
        y = size[1] - margin + (margin - _line_height(footer_size)) // 2
        footers.append(Line(index, (size[0] - width) // 2, y, text, footer_size, False, width))
    return Sheet(page, columns, dpi, size, count, title, cells, footers)


@dataclass
class _Flow:
    """Where the next line goes: a page and a height on it; a new page begins when one is full."""

    top: int
    bottom: int
    page: int = 0
    y: int = 0

    def __post_init__(self) -> None:
        self.y = self.top

    def new_page(self) -> None:
        self.page += 1
        self.y = self.top

    def place(
        self, columns: list[tuple[int, list[tuple[str, int, bool, int]]]], size: int
    ) -> list[list[Line]]:
        """Lines side by side in columns (x, [(text, size, bold, width), ...]), one height at a time, so
        a caption too long for the page continues at the top of the next one, in its column."""
        height = _line_height(size)
        placed: list[list[Line]] = [[] for _ in columns]
        for level in range(max((len(entries) for _, entries in columns), default=0)):
            if self.y + height > self.bottom and self.y > self.top:
                self.new_page()
            for out, (x, entries) in zip(placed, columns):
                if level < len(entries):
                    text, line_size, bold, width = entries[level]
                    out.append(Line(self.page, x, self.y, text, line_size, bold, width))
            self.y += height
        return placed


def _line_height(size: int) -> int:
    return round(size * _LEADING)


def _caption(step: Any, size: int, width: int) -> list[tuple[str, int, bool, int]]:
    name = step.plan_step.step_name or f"Step {step.number}"
    return _wrapped(f"{step.number}. {name}", size, True, width) + _wrapped(step.text, size, False, width)


def _wrapped(text: str, size: int, bold: bool, width: int) -> list[tuple[str, int, bool, int]]:
    face = font(size, bold)
    return [(line, size, bold, round(face.getlength(line))) for line in wrap(text, face, width)]


def clean_text(text: str) -> str:
    """Text as a page shows it: line breaks as ``\\n``, other control characters as spaces, a lone surrogate
    (text decoded wrongly) as the replacement character."""
    text = str(text or "").replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for char in text:
        category = unicodedata.category(char)
        if char != "\n" and category == "Cc":
            char = " "
        elif category == "Cs":
            char = "\ufffd"
        out.append(char)
    return "".join(out)


def wrap(text: str, face: Any, width: int) -> list[str]:
    """``text`` as lines no wider than ``width`` pixels in ``face``: broken between words, and inside a word
    only when the word alone is wider. The text's own line breaks are kept; blank lines are dropped."""
    lines: list[str] = []
    for paragraph in clean_text(text).split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if face.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while face.getlength(word) > width:
                cut = _longest_prefix(word, face, width)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        if line:
            lines.append(line)
    return lines


def _longest_prefix(word: str, face: Any, width: int) -> int:
    """How many characters of ``word`` fit in ``width`` (at least one, so wrapping always advances)."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if face.getlength(word[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------------------------------------------------
# Fonts: DejaVu Sans where the system has it (wide Unicode coverage), a common sans-serif otherwise, else the
# font that ships with Pillow.

_FONT_FILES = {
    False: ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf"),
    True: ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf"),
}


@functools.cache
def _font_path(bold: bool) -> str | None:
    for name in _FONT_FILES[bold]:
        try:
            return ImageFont.truetype(name, 12).path  # Pillow looks in the system's font folders
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> Any:
    """A font of ``size`` pixels: bold when the system has a bold face to go with the regular one."""
    path = (_font_path(True) if bold else None) or _font_path(False)
    if path:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)  # a scalable font since Pillow 10.1
    except TypeError:
        return ImageFont.load_default()  # older Pillow: one small bitmap font


# ---------------------------------------------------------------------------------------------------------
# Drawing


def draw(sheet: Sheet) -> list[Image.Image]:
    """The pages of ``sheet`` as RGB images (white paper, pictures with a thin frame, dark text)."""
    pages = [Image.new("RGB", sheet.size, (255, 255, 255)) for _ in range(sheet.page_count)]
    pens = [ImageDraw.Draw(page) for page in pages]
    for picture in sheet.pictures:
        left, top, right, bottom = picture.box
        image = picture.image if picture.image.mode == "RGB" else picture.image.convert("RGB")
        # A small picture blown up shows its pixels sharp rather than a blur (as the HTML page does).
        sharp = right - left >= 2 * image.width
        resample = Image.Resampling.NEAREST if sharp else Image.Resampling.LANCZOS
        pages[picture.page].paste(image.resize((right - left, bottom - top), resample), (left, top))
        pens[picture.page].rectangle((left - 1, top - 1, right, bottom), outline=_RULE)
    captions = sheet.title + [line for cell in sheet.cells for line in cell.lines]
    for lines, ink in ((captions, _INK), (sheet.footers, _FAINT)):
        for line in lines:
            pens[line.page].text((line.x, line.y), line.text, font=font(line.size, line.bold), fill=ink)
    return pages


def render_pages(
    story: Any, page: str = DEFAULT_PAGE, columns: int = DEFAULT_COLUMNS, dpi: int = DEFAULT_DPI
) -> list[Image.Image]:
    """The storyboard as printable pages: one RGB image per page."""
    return draw(lay_out(story, page, columns, dpi))


def png_bytes(page: Image.Image, dpi: int) -> bytes:
    """A page as PNG, with its resolution recorded so it prints at its paper size."""
    buffer = io.BytesIO()
    page.save(buffer, "PNG", dpi=(dpi, dpi))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# PDF: each page one picture, the text invisible on top (text render mode 3) in Helvetica, which every
# viewer has and no file needs to embed. Each character gets a one-byte code in one of as many fonts as the
# text needs (255 codes each); the ToUnicode map of each font gives the characters back to search and copy.

_GLYPH_WIDTH = 500  # thousandths of the font size; horizontal scaling fits each line to its drawn width
_CODES_PER_FONT = 255


class _InvisibleFonts:
    def __init__(self) -> None:
        self.codes: dict[str, tuple[int, int]] = {}  # character -> (font, code)

    def runs(self, text: str) -> list[tuple[int, bytes]]:
        """``text`` as (font, codes) runs."""
        runs: list[tuple[int, bytearray]] = []
        for char in text:
            if char not in self.codes:
                count = len(self.codes)
                self.codes[char] = (count // _CODES_PER_FONT, count % _CODES_PER_FONT + 1)
            number, code = self.codes[char]
            if not runs or runs[-1][0] != number:
                runs.append((number, bytearray()))
            runs[-1][1].append(code)
        return [(number, bytes(codes)) for number, codes in runs]

    def fonts(self) -> list[list[str]]:
        """The characters of each font, in code order."""
        fonts: list[list[str]] = []
        for char, (number, _) in self.codes.items():
            if number == len(fonts):
                fonts.append([])
            fonts[number].append(char)
        return fonts


def _to_unicode(chars: list[str]) -> bytes:
    entries = [
        f"<{code:02X}> <{char.encode('utf-16-be').hex().upper()}>" for code, char in enumerate(chars, 1)
    ]
    blocks = [entries[i : i + 100] for i in range(0, len(entries), 100)]  # at most 100 a block
    body = "".join(f"{len(b)} beginbfchar\n" + "\n".join(b) + "\nendbfchar\n" for b in blocks)
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<00> <FF>\nendcodespacerange\n"
        f"{body}endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    ).encode("ascii")


def _glyph_name(char: str) -> str:
    point = ord(char)
    return f"/uni{point:04X}" if point <= 0xFFFF else f"/u{point:06X}"


def _text_string(text: str) -> bytes:
    """A PDF text string (UTF-16 with its byte-order mark, in hex: nothing in it needs escaping)."""
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


class _PdfWriter:
    def __init__(self) -> None:
        self.objects: list[bytes | None] = []

    def reserve(self) -> int:
        self.objects.append(None)
        return len(self.objects)

    def add(self, body: bytes, number: int | None = None) -> int:
        number = number or self.reserve()
        self.objects[number - 1] = body
        return number

    def stream(self, dictionary: bytes, data: bytes, level: int = 6) -> int:
        data, dictionary = zlib.compress(data, level), dictionary + b" /Filter /FlateDecode"
        return self.add(b"<< %s /Length %d >>\nstream\n%s\nendstream" % (dictionary, len(data), data))

    def tobytes(self, root: int, info: int) -> bytes:
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(self.objects, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
        start = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(self.objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\n" % (len(self.objects) + 1, root, info)
        out += b"startxref\n%d\n%%%%EOF\n" % start
        return bytes(out)


def _number(value: float) -> bytes:
    return b"%.2f" % value


def pdf_bytes(sheet: Sheet, pages: Sequence[Image.Image] | None = None, title: str = "") -> bytes:
    """The PDF of ``sheet``: its drawn ``pages`` (drawn here when not given), the text over them."""
    pages = draw(sheet) if pages is None else pages
    scale = 72 / sheet.dpi
    width, height = sheet.size[0] * scale, sheet.size[1] * scale
    pdf = _PdfWriter()
    catalog, tree = pdf.reserve(), pdf.reserve()
    fonts = _InvisibleFonts()
    page_objects = []
    for index, image in enumerate(pages):
        picture = pdf.stream(
            b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8"
            % image.size,
            (image if image.mode == "RGB" else image.convert("RGB")).tobytes(),
            level=1,  # pages are tens of megabytes raw: the fast level, nearly as small on white paper
        )
        ops = [b"q %s 0 0 %s 0 0 cm /Page Do Q" % (_number(width), _number(height))]
        lines = sheet.lines(index)
        if lines:
            ops.append(b"BT 3 Tr")
        for line in lines:
            size = line.size * scale
            ascent = font(line.size, line.bold).getmetrics()[0]
            natural = len(line.text) * _GLYPH_WIDTH / 1000 * size
            stretch = 100 * line.width * scale / natural if natural and line.width else 100
            x, y = line.x * scale, height - (line.y + ascent) * scale
            ops.append(b"%s Tz 1 0 0 1 %s %s Tm" % (_number(stretch), _number(x), _number(y)))
            for number, codes in fonts.runs(line.text):
                ops.append(b"/F%d %s Tf <%s> Tj" % (number, _number(size), codes.hex().upper().encode()))
        if lines:
            ops.append(b"ET")
        page_objects.append((picture, pdf.stream(b"", b"\n".join(ops) + b"\n")))

    font_refs = []
    for number, chars in enumerate(fonts.fonts()):
        to_unicode = pdf.stream(b"", _to_unicode(chars))
        names = " ".join(_glyph_name(char) for char in chars).encode("ascii")
        widths = b" ".join([b"%d" % _GLYPH_WIDTH] * len(chars))
        font_refs.append(
            b"/F%d %d 0 R"
            % (
                number,
                pdf.add(
                    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /FirstChar 1 /LastChar %d "
                    b"/Widths [%s] /Encoding << /Type /Encoding /Differences [1 %s] >> /ToUnicode %d 0 R >>"
                    % (len(chars), widths, names, to_unicode)
                ),
            )
        )
    kids = []
    for picture, contents in page_objects:
        resources = b"<< /XObject << /Page %d 0 R >> /Font << %s >> >>" % (picture, b" ".join(font_refs))
        kids.append(
            pdf.add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] /Resources %s /Contents %d 0 R >>"
                % (tree, _number(width), _number(height), resources, contents)
            )
        )
    pdf.add(
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)),
        tree,
    )
    pdf.add(b"<< /Type /Catalog /Pages %d 0 R >>" % tree, catalog)
    info = pdf.add(b"<< /Title %s >>" % _text_string(" ".join(clean_text(title).split())[:300]))
    return pdf.tobytes(catalog, info)


# ---------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class Printed:
    """What :func:`print_story` made: the laid-out sheet, its page images, the PDF."""

    sheet: Sheet
    pages: list[Image.Image]
    pdf: bytes


def print_story(
    story: Any, page: str = DEFAULT_PAGE, columns: int = DEFAULT_COLUMNS, dpi: int = DEFAULT_DPI
) -> Printed:
    """Lay out, draw and make the PDF once, for callers that want the pages and the PDF both."""
    sheet = lay_out(story, page, columns, dpi)
    pages = draw(sheet)
    return Printed(sheet, pages, pdf_bytes(sheet, pages, story.instruction))


def save_pdf(
    story: Any,
    path: str | Path,
    page: str = DEFAULT_PAGE,
    columns: int = DEFAULT_COLUMNS,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Write the storyboard's PDF to ``path`` (under a temporary name, then renamed)."""
    return atomic_write_bytes(path, print_story(story, page, columns, dpi).pdf)


def write_pages(
    story: Any,
    folder: str | Path,
    page: str = DEFAULT_PAGE,
    columns: int = DEFAULT_COLUMNS,
    dpi: int = DEFAULT_DPI,
) -> list[Path]:
    """Write ``page-01.png``, ``page-02.png``, ... and ``storyboard.pdf`` into ``folder``; their paths."""
    folder = Path(folder)
    printed = print_story(story, page, columns, dpi)
    paths = [
        atomic_write_bytes(folder / page_file(index), png_bytes(image, dpi))
        for index, image in enumerate(printed.pages)
    ]
    return paths + [atomic_write_bytes(folder / PDF_FILE, printed.pdf)]


__all__ = [
    "Cell",
    "DEFAULT_COLUMNS",
    "DEFAULT_DPI",
    "DEFAULT_PAGE",
    "Line",
    "MAX_COLUMNS",
    "MAX_DPI",
    "MIN_DPI",
    "PAGE_SIZES",
    "PDF_FILE",
    "Picture",
    "Printed",
    "Sheet",
    "check_options",
    "clean_text",
    "draw",
    "font",
    "is_print_file",
    "lay_out",
    "page_file",
    "pdf_bytes",
    "png_bytes",
    "print_story",
    "render_pages",
    "save_pdf",
    "wrap",
    "write_pages",
]
