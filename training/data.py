"""Training data: the official formats, the engine's storyboards, validation, and the rows TRL trains on.

Formats read and written here (the official InterleaveThinker release uses the first two for SFT and the third
for GRPO):

- Planner SFT and Critic SFT: a JSON array (or JSONL) of sharegpt rows
  ``{"messages": [{"role": "user", "content": str}, {"role": "assistant", "content": str}],
  "images": [path]}``.
  The user turn is a filled template with one ``<image>`` marker per image; the assistant turn is
  ``<think>...</think><answer>{plan or verdict}</answer>``.
- Critic RL: JSONL, one Critic step per line: ``{"origin_prompt", "rewritten_prompt", "origin_image_path",
  "edited_image_path", "evaluation": {"success", "semantics", "quality"}}``.
- Storyboards saved by the engine (``core/storyboard.py``): every attempt the Critic judged is a Critic
  example, and the plan a Planner example.

Whatever the source, prompts are rendered again with the engine's templates (``core/prompts``, through
``core/messages``) and answers are re-parsed with ``core/protocol`` and written back from ``Plan.to_dict`` /
``Verdict.to_dict``, so training sees exactly what inference sees. Rows are checked when the data set is
built; a bad row is reported with its file and line, then skipped or fatal as the caller chose.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.errors import BadInput
from ..core.messages import (
    IMAGE_MARKER,
    MAX_PIXELS,
    MessageError,
    count_markers,
    critic_messages,
    fit_pixels,
    planner_messages,
    to_rgb,
)
from ..core.prompts import ROLES, Template, TemplateError, load_template
from ..core.protocol import Plan, ProtocolError, Verdict, parse_plan, parse_verdict
from ..core.storyboard import FILENAME as STORYBOARD_FILE
from ..core.storyboard import Storyboard, StoryboardError

log = logging.getLogger(__name__)

PLANNER, CRITIC = "planner", "critic"
AGENT_ROLES = (PLANNER, CRITIC)
ON_BAD_ROW = ("skip", "error")
# Qwen-VL image processors refuse images whose sides differ by more than this factor.
MAX_ASPECT_RATIO = 200
SCORE_RANGE = (0.0, 10.0)

ImageRef = str | Path | Image.Image


class DataError(BadInput):
    """Data that cannot be used: a bad row in "error" mode, an unreadable file, a wrong setting."""


# ---------------------------------------------------------------------------------------------------------
# Examples: the Python objects every reader produces and every writer takes


@dataclass
class PlannerExample:
    """One Planner turn: the user's instruction (with ``<image>`` markers for its images) and the plan."""

    instruction: str
    plan: Plan
    images: list[ImageRef] = field(default_factory=list)
    mode: str = "auto"
    source: str = ""


@dataclass
class CriticExample:
    """One Critic turn: before and after images, the step's prompt and the prompt used, and the verdict."""

    before: ImageRef
    after: ImageRef
    original_instruction: str
    prompt_used: str
    verdict: Verdict
    source: str = ""


@dataclass
class CriticRLExample:
    """One Critic step with its ground truth: the verdict and the judge's scores of the after image (0-10)."""

    before: ImageRef
    after: ImageRef
    original_instruction: str
    prompt_used: str
    success: bool
    semantics: float
    quality: float
    source: str = ""


# ---------------------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass
class DataReport:
    """What a reader kept and what it rejected, file by file."""

    rows: int = 0
    kept: int = 0
    bad: list[BadRow] = field(default_factory=list)
    resized_images: int = 0
    files: list[str] = field(default_factory=list)

    def merge(self, other: DataReport) -> DataReport:
        self.rows += other.rows
        self.kept += other.kept
        self.bad += other.bad
        self.resized_images += other.resized_images
        self.files += other.files
        return self

    def summary(self) -> str:
        text = f"{self.kept} of {self.rows} rows kept from {len(self.files)} file(s)"
        if self.bad:
            text += f"; {len(self.bad)} bad row(s), first: {self.bad[0]}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "bad": [str(row) for row in self.bad],
            "resized_images": self.resized_images,
            "files": self.files,
        }


class _Rows:
    """Collects rows of one file, applying the bad-row policy."""

    def __init__(self, file: str | Path, on_bad_row: str):
        if on_bad_row not in ON_BAD_ROW:
            raise DataError(f"on_bad_row must be skip or error, got {on_bad_row!r}")
        self.file = str(file)
        self.on_bad_row = on_bad_row
        self.report = DataReport(files=[self.file])

    def bad(self, line: int | None, reason: str) -> None:
        row = BadRow(self.file, line, reason)
        if self.on_bad_row == "error":
            raise DataError(f"bad row: {row} (set on_bad_row: skip to leave such rows out)")
        if len(self.report.bad) < 20:
            log.warning("skipping bad row %s", row)
        self.report.bad.append(row)


class _RowError(ValueError):
    """A row-level problem; the message names it for the report."""


# ---------------------------------------------------------------------------------------------------------
# Images


class ImageChecker:
    """Checks that image files exist, open and suit a VLM; each file is checked once."""

    def __init__(self, max_pixels: int = MAX_PIXELS, verify: bool = True):
        self.max_pixels = max_pixels
        self.verify = verify
        self._seen: dict[str, str | None] = {}
        self.resized = 0

    def check(self, ref: ImageRef) -> None:
        if isinstance(ref, Image.Image):
            self._check_size(ref.size, "in-memory image")
            return
        key = str(ref)
        if key not in self._seen:
            try:
                self._seen[key] = None
                self._check_file(Path(key))
            except _RowError as error:
                self._seen[key] = str(error)
        if self._seen[key]:
            raise _RowError(self._seen[key])

    def _check_file(self, path: Path) -> None:
        if not path.is_file():
            raise _RowError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                size = image.size
                if self.verify:
                    image.verify()  # reads the whole file: catches truncated and corrupt images
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise _RowError(f"cannot open image {path}: {error}") from None
        self._check_size(size, str(path))

    def _check_size(self, size: tuple[int, int], name: str) -> None:
        width, height = size
        if width < 1 or height < 1:
            raise _RowError(f"image {name} is empty ({width}x{height})")
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise _RowError(f"image {name} is {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO}:1")
        if width * height > self.max_pixels:
            self.resized += 1


def load_image(ref: ImageRef, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An RGB image from a path or an image, shrunk to ``max_pixels`` (None keeps the full size)."""
    if isinstance(ref, Image.Image):
        image = to_rgb(ref)
    else:
        with Image.open(ref) as opened:
            image = to_rgb(opened)
            image.load()
    return fit_pixels(image, max_pixels) if max_pixels else image


def is_white(image: Image.Image) -> bool:
    """True for a plain white canvas: the before image of a story's first picture."""
    return all(low == high == 255 for low, high in to_rgb(image).getextrema())


def _resolve(path: Any, base: Path) -> Path:
    if not isinstance(path, str) or not path.strip():
        raise _RowError(f"image path must be a non-empty string, got {path!r}")
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


# ---------------------------------------------------------------------------------------------------------
# Templates: recognise the filled template of a user turn and take the values back out


_FIELD_RE = re.compile(r"\{(text_input|original_instruction|rewritten_prompt)\}")


@functools.lru_cache(maxsize=32)
def _template_regex(text: str) -> re.Pattern:
    pattern, seen, pos = [r"\s*"], set(), 0
    text = text.strip()
    for match in _FIELD_RE.finditer(text):
        pattern.append(re.escape(text[pos : match.start()]))
        name = match.group(1)
        pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
        pos = match.end()
    pattern.append(re.escape(text[pos:]) + r"\s*")
    return re.compile("".join(pattern), re.DOTALL)


def extract_fields(template: Template, text: str) -> dict[str, str] | None:
    """The placeholder values that turn ``template`` into ``text``, or None when ``text`` is not that
    template."""
    body = template.text.lstrip()
    if template.role == "critic" and body.lower().startswith(IMAGE_MARKER * 2):
        body = body[len(IMAGE_MARKER) * 2 :]  # the engine puts the two images before the text itself
    match = _template_regex(body).fullmatch(text)
    return None if match is None else match.groupdict()


@dataclass
class Templates:
    """The templates rows are rendered with, and the ones old data may have been written with.

    ``render`` holds the engine's template per role (or the user's own); ``sources`` are extra templates,
    e.g. the wording the official data was written with, used only to recognise and take apart user turns.
    """

    render: dict[str, Template]
    sources: list[Template] = field(default_factory=list)

    @classmethod
    def load(
        cls, overrides: dict[str, str | Path] | None = None, sources: Sequence[tuple[str, str | Path]] = ()
    ):
        overrides = overrides or {}
        unknown = set(overrides) - set(ROLES)
        if unknown:
            raise DataError(f"unknown template role(s) {sorted(unknown)}; choose from {', '.join(ROLES)}")
        try:
            render = {role: load_template(role, overrides.get(role)) for role in ROLES}
            extra = [load_template(role, path) for role, path in sources]
        except TemplateError as error:
            raise DataError(str(error)) from None
        return cls(render, extra)

    def candidates(self, roles: Sequence[str]) -> list[Template]:
        builtin = [load_template(role) for role in roles]
        found = [self.render[role] for role in roles] + builtin + [t for t in self.sources if t.role in roles]
        unique: dict[str, Template] = {}
        for template in found:
            unique.setdefault(template.text, template)
        return list(unique.values())


# ---------------------------------------------------------------------------------------------------------
# Answers: validated with core/protocol and written back in one canonical form


def answer_text(data: dict[str, Any], reasoning: str = "", keep_reasoning: bool = True) -> str:
    body = json.dumps(data, ensure_ascii=False)
    if keep_reasoning and reasoning.strip():
        return f"<think>{reasoning.strip()}</think>\n<answer>{body}</answer>"
    return f"<answer>{body}</answer>"


def plan_answer(plan: Plan, keep_reasoning: bool = True) -> str:
    return answer_text(plan.to_dict(), plan.reasoning, keep_reasoning)


def verdict_answer(verdict: Verdict, keep_reasoning: bool = True) -> str:
    return answer_text(verdict.to_dict(), verdict.reasoning, keep_reasoning)


# ---------------------------------------------------------------------------------------------------------
# Rendering: examples into the engine's chat messages


_PLACEHOLDER = Image.new("RGB", (1, 1), (255, 255, 255))


def planner_prompt(
    example: PlannerExample, templates: Templates, images: Sequence[Image.Image]
) -> list[dict]:
    mode = example.mode if example.mode != "auto" else ("guidance" if example.images else "narrative")
    return planner_messages(example.instruction, images, mode, templates.render[mode], max_pixels=10**12)


def critic_prompt(
    original_instruction: str, prompt_used: str, templates: Templates, before: Image.Image, after: Image.Image
) -> list[dict]:
    return critic_messages(
        before, after, original_instruction, prompt_used, templates.render["critic"], 10**12
    )


def split_images(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """Messages with bare ``{"type": "image"}`` placeholders, and the images in order (TRL's VLM row
    format)."""
    images: list[Image.Image] = []
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": parts})
    return out, images


def sharegpt_text(messages: list[dict]) -> str:
    """A rendered user turn as sharegpt text: each image becomes an ``<image>`` marker where it stands."""
    pieces = []
    for message in messages:
        for part in message["content"]:
            pieces.append(IMAGE_MARKER if part.get("type") == "image" else part["text"])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------------------
# Writers: Python objects into the official formats (atomic: temporary file, then rename)


class _ImageStore:
    """Where a writer puts in-memory images: content-addressed PNGs, so a shared before image is written
    once."""

    def __init__(self, data_file: Path, image_dir: Path | None):
        self.base = data_file.parent.resolve()
        self.dir = Path(image_dir) if image_dir else self.base / f"{data_file.stem}_images"

    def ref(self, image: ImageRef) -> str:
        if isinstance(image, Image.Image):
            image = to_rgb(image)
            digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:20]
            path = self.dir / f"{digest}.png"
            if not path.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
                image.save(tmp, format="PNG")
                os.replace(tmp, path)
        else:
            path = Path(image)
        path = path.resolve()
        try:
            return path.relative_to(self.base).as_posix()
        except ValueError:
            return str(path)


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _dump_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:  # one row per line inside the array, so line numbers in reports point at rows
        text = "[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n"
    return _write_atomic(path, text)


def planner_sft_row(
    example: PlannerExample, store: _ImageStore, templates: Templates, keep_reasoning: bool = True
) -> dict:
    user = sharegpt_text(planner_prompt(example, templates, [_PLACEHOLDER] * len(example.images)))
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": plan_answer(example.plan, keep_reasoning)},
        ],
        "images": [store.ref(image) for image in example.images],
    }


def critic_sft_row(
    example: CriticExample, store: _ImageStore, templates: Templates, keep_reasoning: bool = True
) -> dict:
    messages = critic_prompt(
        example.original_instruction, example.prompt_used, templates, _PLACEHOLDER, _PLACEHOLDER
    )
    return {
        "messages": [
            {"role": "user", "content": sharegpt_text(messages)},
            {"role": "assistant", "content": verdict_answer(example.verdict, keep_reasoning)},
        ],
        "images": [store.ref(example.before), store.ref(example.after)],
    }


def critic_rl_row(example: CriticRLExample, store: _ImageStore) -> dict:
    return {
        "origin_prompt": example.original_instruction,
        "rewritten_prompt": example.prompt_used,
        "origin_image_path": store.ref(example.before),
        "edited_image_path": store.ref(example.after),
        "evaluation": {
            "success": bool(example.success),
            "semantics": example.semantics,
            "quality": example.quality,
        },
    }


def write_planner_sft(
    path: str | Path,
    examples: Iterable[PlannerExample],
    *,
    image_dir: str | Path | None = None,
    templates: Templates | None = None,
    keep_reasoning: bool = True,
) -> Path:
    """Write Planner SFT data (sharegpt JSON, or JSONL for a ``.jsonl`` path); in-memory images go to
    ``image_dir`` (default: ``<name>_images`` next to the file) and are referenced relative to the file."""
    path = Path(path)
    store, templates = _ImageStore(path, image_dir), templates or Templates.load()
    return _dump_rows(path, [planner_sft_row(e, store, templates, keep_reasoning) for e in examples])


def write_critic_sft(
    path: str | Path,
    examples: Iterable[CriticExample],
    *,
    image_dir: str | Path | None = None,
    templates: Templates | None = None,
    keep_reasoning: bool = True,
) -> Path:
    """Write Critic SFT data (sharegpt JSON: before and after image, then the Critic template)."""
    path = Path(path)
    store, templates = _ImageStore(path, image_dir), templates or Templates.load()
    return _dump_rows(path, [critic_sft_row(e, store, templates, keep_reasoning) for e in examples])


def write_critic_rl(
    path: str | Path, examples: Iterable[CriticRLExample], *, image_dir: str | Path | None = None
) -> Path:
    """Write Critic RL data (JSONL, one step per line, the official field names)."""
    path = Path(path)
    store = _ImageStore(path, image_dir)
    return _dump_rows(path, [critic_rl_row(e, store) for e in examples])


# ---------------------------------------------------------------------------------------------------------
# Readers


def iter_json_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line, row) pairs of a JSON array or a JSONL file. A line that is not JSON yields a _RowError value.

    A JSON array is decoded element by element, so every row knows the line it starts on.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read data file {path}: {error}") from None
    stripped = text.lstrip()
    if path.suffix != ".jsonl" and stripped.startswith("["):
        yield from _array_rows(text, path)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, _RowError(f"not valid JSON ({error.msg} at column {error.colno})")


def _array_rows(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    pos = ws.match(text, 0).end() + 1  # past "["
    pos = ws.match(text, pos).end()
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        start = pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{line_at(error.pos)}: not valid JSON ({error.msg}); the rest of the file "
                f"cannot be read"
            ) from None
        yield line_at(start), row
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataError(f"{path}:{line_at(pos)}: expected ',' or ']' between rows")


def _sharegpt_turns(row: Any) -> tuple[str, str, list]:
    if not isinstance(row, dict):
        raise _RowError(f"a row must be an object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise _RowError("the row has no 'messages' list")
    turns = [m for m in messages if isinstance(m, dict)]
    if len(turns) != len(messages) or [m.get("role") for m in turns] != ["user", "assistant"]:
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise _RowError(f"expected one user turn then one assistant turn, got roles {roles}")
    user, answer = turns[0].get("content"), turns[1].get("content")
    if not isinstance(user, str) or not isinstance(answer, str):
        raise _RowError("message contents must be strings")
    images = row.get("images", [])
    if not isinstance(images, list):
        raise _RowError("'images' must be a list of paths")
    return user, answer, images


def _check_markers(user: str, images: list, expected: int | None = None) -> None:
    markers = count_markers(user)
    if markers != len(images):
        raise _RowError(
            f"the user turn has {markers} {IMAGE_MARKER} marker(s) but the row lists {len(images)} image(s)"
        )
    if expected is not None and markers != expected:
        raise _RowError(f"a Critic row needs exactly {expected} images (before, after), got {markers}")


def _read_sharegpt(path, on_bad_row, build: Callable[[int, Any], Any]) -> tuple[list, DataReport]:
    rows = _Rows(path, on_bad_row)
    examples = []
    for line, row in iter_json_rows(path):
        rows.report.rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            examples.append(build(line, row))
        except (_RowError, ProtocolError, MessageError) as error:
            rows.bad(line, str(error))
    rows.report.kept = len(examples)
    return examples, rows.report


def read_planner_sft(
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    templates: Templates | None = None,
    raw_instructions: bool = True,
    on_bad_row: str = "skip",
    checker: ImageChecker | None = None,
) -> tuple[list[PlannerExample], DataReport]:
    """Planner rows of a sharegpt file. The user turn is matched against the templates to recover the
    instruction; with ``raw_instructions`` a turn that matches no template is taken as the instruction
    itself."""
    path = Path(path)
    base = Path(image_dir) if image_dir else path.parent
    templates = templates or Templates.load()
    checker = checker or ImageChecker()
    candidates = templates.candidates(("narrative", "guidance"))

    def build(line: int, row: Any) -> PlannerExample:
        user, answer, images = _sharegpt_turns(row)
        _check_markers(user, images)
        instruction, mode = None, "auto"
        for template in candidates:
            fields = extract_fields(template, user)
            if fields is not None:
                instruction, mode = fields["text_input"], template.role
                break
        if instruction is None:
            if not raw_instructions:
                raise _RowError(
                    "the user turn matches no Planner template (add the template the data was "
                    "written with to source_templates)"
                )
            instruction = user
        instruction = instruction.strip()
        if not instruction:
            raise _RowError("the instruction is empty")
        if mode == "guidance" and not images:
            raise _RowError("a guidance-mode row has no images")
        refs = [_resolve(image, base) for image in images]
        for ref in refs:
            checker.check(ref)
        return PlannerExample(instruction, parse_plan(answer), refs, mode, f"{path}:{line}")

    examples, report = _read_sharegpt(path, on_bad_row, build)
    report.resized_images = checker.resized
    return examples, report


def read_critic_sft(
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    templates: Templates | None = None,
    on_bad_row: str = "skip",
    checker: ImageChecker | None = None,
) -> tuple[list[CriticExample], DataReport]:
    """Critic rows of a sharegpt file: two images (before, after) and a filled Critic template."""
    path = Path(path)
    base = Path(image_dir) if image_dir else path.parent
    templates = templates or Templates.load()
    checker = checker or ImageChecker()
    candidates = templates.candidates(("critic",))

    def build(line: int, row: Any) -> CriticExample:
        user, answer, images = _sharegpt_turns(row)
        _check_markers(user, images, expected=2)
        text = user.strip()
        if text.lower().startswith(IMAGE_MARKER * 2):
            text = text[len(IMAGE_MARKER) * 2 :]
        for template in candidates:
            fields = extract_fields(template, text)
            if fields is not None:
                break
        else:
            raise _RowError(
                "the user turn matches no Critic template (add the template the data was written "
                "with to source_templates)"
            )
        original = fields["original_instruction"].strip()
        if not original:
            raise _RowError("the step's original instruction is empty")
        before, after = (_resolve(image, base) for image in images)
        checker.check(before)
        checker.check(after)
        verdict = parse_verdict(answer)
        return CriticExample(
            before, after, original, fields["rewritten_prompt"].strip(), verdict, f"{path}:{line}"
        )

    examples, report = _read_sharegpt(path, on_bad_row, build)
    report.resized_images = checker.resized
    return examples, report


def _score(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _RowError(f"evaluation.{name} must be a number from 0 to 10, got {value!r}")
    if not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
        raise _RowError(f"evaluation.{name} must be from 0 to 10, got {value}")
    return float(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _RowError(f"evaluation.success must be true or false, got {value!r}")


def read_critic_rl(
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    on_bad_row: str = "skip",
    checker: ImageChecker | None = None,
) -> tuple[list[CriticRLExample], DataReport]:
    """Critic RL rows (JSONL): before/after image paths, the two prompts, and the ground-truth evaluation."""
    path = Path(path)
    base = Path(image_dir) if image_dir else path.parent
    checker = checker or ImageChecker()

    def build(line: int, row: Any) -> CriticRLExample:
        if not isinstance(row, dict):
            raise _RowError(f"a row must be an object, got {type(row).__name__}")
        required = ("origin_prompt", "origin_image_path", "edited_image_path", "evaluation")
        missing = [key for key in required if key not in row]
        if missing:
            raise _RowError(f"missing field(s): {', '.join(missing)}")
        original, used = row["origin_prompt"], row.get("rewritten_prompt") or ""
        if not isinstance(original, str) or not original.strip():
            raise _RowError("origin_prompt must be a non-empty string")
        if not isinstance(used, str):
            raise _RowError("rewritten_prompt must be a string")
        evaluation = row["evaluation"]
        if not isinstance(evaluation, dict):
            raise _RowError("evaluation must be an object with success, semantics and quality")
        for key in ("success", "semantics", "quality"):
            if key not in evaluation:
                raise _RowError(f"evaluation.{key} is missing")
        success = _flag(evaluation["success"])
        semantics, quality = (
            _score(evaluation["semantics"], "semantics"),
            _score(evaluation["quality"], "quality"),
        )
        before, after = _resolve(row["origin_image_path"], base), _resolve(row["edited_image_path"], base)
        checker.check(before)
        checker.check(after)
        return CriticRLExample(
            before, after, original.strip(), used.strip(), success, semantics, quality, f"{path}:{line}"
        )

    examples, report = _read_sharegpt(path, on_bad_row, build)
    report.resized_images = checker.resized
    return examples, report


def find_storyboards(path: str | Path) -> list[Path]:
    """Storyboard folders at ``path``: the folder itself, or every folder below it holding a storyboard."""
    path = Path(path)
    if (path / STORYBOARD_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"no storyboard folder at {path}")
    return sorted(p.parent for p in path.rglob(STORYBOARD_FILE))


def read_storyboards(
    path: str | Path, role: str, *, on_bad_row: str = "skip", checker: ImageChecker | None = None
) -> tuple[list[PlannerExample] | list[CriticExample], DataReport]:
    """Training examples from saved storyboards: the data flywheel.

    Critic: every attempt the Critic judged (accepted or rejected) is one example, with the before image the
    engine showed it. Planner: the plan of every story, with the story's instruction and input images.
    Unchecked attempts (no verdict) teach nothing and are left out without counting as bad.
    """
    if role not in AGENT_ROLES:
        raise DataError(f"role must be planner or critic, got {role!r}")
    checker = checker or ImageChecker()
    report = DataReport()
    examples: list = []
    for folder in find_storyboards(path):
        rows = _Rows(folder / STORYBOARD_FILE, on_bad_row)
        try:
            story = Storyboard.load(folder)
            data = story.to_dict()  # the file names the story was saved under
        except StoryboardError as error:
            rows.report.rows = 1
            rows.bad(None, str(error))
            report.merge(rows.report)
            continue
        for example in _story_examples(story, data, folder, role, rows):
            rows.report.rows += 1
            try:
                for image in [example.before, example.after] if role == CRITIC else example.images:
                    checker.check(image)
            except _RowError as error:
                rows.bad(None, f"{example.source}: {error}")
                continue
            examples.append(example)
            rows.report.kept += 1
        report.merge(rows.report)
    report.resized_images = checker.resized
    return examples, report


def _story_examples(story: Storyboard, data: dict, folder: Path, role: str, rows: _Rows) -> list:
    source = str(folder / STORYBOARD_FILE)
    inputs = [folder / name for name in data.get("inputs", [])]
    if role == PLANNER:
        if not story.planner_output:
            return []  # a plan the user wrote, not one a Planner answered
        instruction = story.instruction
        if inputs and count_markers(instruction) not in (0, len(inputs)):
            rows.report.rows += 1
            rows.bad(None, "the instruction's image markers do not match the story's input images")
            return []
        return [PlannerExample(instruction, story.plan, inputs, story.mode, source)]
    examples = []
    for index, (step, raw) in enumerate(zip(story.steps, data["steps"])):
        if not step.attempts:
            continue
        step_before = story.before_image(index)  # the rule lives on Storyboard, as the loop uses it
        for attempt, saved in zip(step.attempts, raw["attempts"]):
            if attempt.verdict is None:
                continue
            examples.append(
                CriticExample(
                    step_before,
                    folder / saved["image"],
                    step.plan_step.prompt or "",
                    attempt.prompt,
                    attempt.verdict,
                    f"{source} (step {step.number}, attempt {attempt.number})",
                )
            )
    return examples


# ---------------------------------------------------------------------------------------------------------
# Data sets for TRL: rows rendered lazily (images are opened when a batch is built, not all at once)


# What a picture counts for in SFTRows.length: about what a sandbox picture within the tiny recipes' pixel
# budget adds to a prompt, in characters of text. Only the order of lengths matters.
IMAGE_LENGTH = 200


class SFTRows:
    """Prompt-completion rows for ``SFTTrainer``: the engine's messages, image placeholders, the images.

    TRL trains on the completion only (the assistant turn) for prompt-completion data.
    """

    def __init__(
        self,
        examples: Sequence[PlannerExample | CriticExample],
        templates: Templates,
        *,
        max_pixels: int = MAX_PIXELS,
        keep_reasoning: bool = True,
    ):
        if not examples:
            raise DataError("the training set is empty: no usable rows were found")
        self.examples = list(examples)
        self.templates = templates
        self.max_pixels = max_pixels
        self.keep_reasoning = keep_reasoning

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.examples):
            raise IndexError(index)
        example = self.examples[index]
        prompt, images = split_images(self.prompt_messages(example))
        answer = (
            plan_answer(example.plan, self.keep_reasoning)
            if isinstance(example, PlannerExample)
            else verdict_answer(example.verdict, self.keep_reasoning)
        )
        return {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": images,
        }

    def as_dataset(self):
        """A ``datasets.Dataset`` of row numbers that renders rows when they are read (what TRL takes)."""
        return _lazy_dataset(self)

    def lengths(self) -> list[int]:
        """A cheap measure of each row's length (characters of its text, a fixed share per picture), for
        grouping rows of like length into batches without rendering them: plans of 2 and of 12 steps padded
        to one length cost a batch of short ones several times their own work."""
        out = []
        for example in self.examples:
            if isinstance(example, PlannerExample):
                text = example.instruction + plan_answer(example.plan, self.keep_reasoning)
                pictures = len(example.images)
            else:
                text = example.original_instruction + example.prompt_used
                text += verdict_answer(example.verdict, self.keep_reasoning)
                pictures = 2
            out.append(len(text) + IMAGE_LENGTH * pictures)
        return out

    def prompt_messages(self, example: PlannerExample | CriticExample) -> list[dict]:
        """The engine's messages for ``example``, images loaded within the pixel budget."""
        if isinstance(example, PlannerExample):
            images = [load_image(ref, self.max_pixels) for ref in example.images]
            return planner_prompt(example, self.templates, images)
        before, after = (
            load_image(example.before, self.max_pixels),
            load_image(example.after, self.max_pixels),
        )
        return critic_prompt(example.original_instruction, example.prompt_used, self.templates, before, after)


def _lazy_dataset(rows) -> Any:
    from datasets import Dataset

    def render(batch: dict[str, list]) -> dict[str, list]:
        items = [rows[index] for index in batch["row"]]
        return {key: [item[key] for item in items] for key in items[0]}

    # Trainers must keep the "row" column: set remove_unused_columns=False (sft.py and grpo.py do).
    return Dataset.from_dict({"row": list(range(len(rows)))}).with_transform(render)


class CriticRLRows:
    """Prompt rows for ``GRPOTrainer``: the Critic's messages plus the columns the reward reads."""

    def __init__(
        self, examples: Sequence[CriticRLExample], templates: Templates, *, max_pixels: int = MAX_PIXELS
    ):
        if not examples:
            raise DataError("the RL set is empty: no usable rows were found")
        self.examples = list(examples)
        self.templates = templates
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.examples)

    def as_dataset(self):
        return _lazy_dataset(self)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.examples):
            raise IndexError(index)
        e = self.examples[index]
        before, after = load_image(e.before, self.max_pixels), load_image(e.after, self.max_pixels)
        prompt, images = split_images(
            critic_prompt(e.original_instruction, e.prompt_used, self.templates, before, after)
        )
        return {
            "prompt": prompt,
            "images": images,
            # Read by the reward; the before image is passed by reference and opened there at full size.
            "origin_prompt": e.original_instruction,
            "rewritten_prompt": e.prompt_used,
            "before_image": e.before if isinstance(e.before, Image.Image) else str(e.before),
            "label_success": e.success,
            "label_semantics": e.semantics,
            "label_quality": e.quality,
        }


__all__ = [
    "AGENT_ROLES",
    "BadRow",
    "CRITIC",
    "CriticExample",
    "CriticRLExample",
    "CriticRLRows",
    "DataError",
    "DataReport",
    "ImageChecker",
    "PLANNER",
    "PlannerExample",
    "SFTRows",
    "Templates",
    "answer_text",
    "extract_fields",
    "find_storyboards",
    "is_white",
    "iter_json_rows",
    "load_image",
    "plan_answer",
    "read_critic_rl",
    "read_critic_sft",
    "read_planner_sft",
    "read_storyboards",
    "split_images",
    "verdict_answer",
    "write_critic_rl",
    "write_critic_sft",
    "write_planner_sft",
]
