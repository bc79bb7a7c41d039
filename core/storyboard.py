"""The storyboard: the story, its steps and every attempt, saved as a folder a person can browse.

A saved storyboard folder holds ``storyboard.json`` (versioned), ``steps/`` (the kept image of each step),
``attempts/`` (every generated image), ``inputs/`` (the user's images), ``references/`` (the pictures that
hold the cast, when the story has any), ``index.html`` and ``story.md``.
Folders are written under a temporary name and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import BadInput
from .files import protected_folder, replace_folder, temporary_name
from .messages import to_rgb, white_canvas
from .pages import badge, escape, page
from .print_pages import is_print_file, write_pages
from .protocol import Plan, PlanStep, Verdict
from .settings import ANCHOR_FIRST
from .stories import inside

SCHEMA_VERSION = 1
FILENAME = "storyboard.json"

# Attempt status: what the Critic said of the image.
ACCEPTED = "accepted"
REJECTED = "rejected"
UNCHECKED = "unchecked"  # no critic, or its output never parsed: the image is kept unjudged
ATTEMPT_STATUSES = (ACCEPTED, REJECTED, UNCHECKED)
TEXT_ONLY = "text"  # step status of a step without a generator prompt
# How ``critic_error`` begins when the Critic could not be asked at all (not when its answer did not parse).
CRITIC_FAILED = "the Critic could not be used"

# What a storyboard folder holds: a folder of only these (say, its JSON lost) is what is left of one.
_LAYOUT_FILES = {FILENAME, "index.html", "story.md"}
_LAYOUT_FOLDERS = {"inputs", "steps", "attempts", "references"}


class StoryboardError(BadInput):
    pass


def normalize_image(image: Image.Image) -> Image.Image:
    """RGB with no format metadata, so an image equals itself after a PNG round trip."""
    image = to_rgb(image)
    if image.info:
        image = image.copy()
        image.info = {}
    return image


@dataclass(eq=True)
class Attempt:
    number: int
    prompt: str
    seed: int
    route: str
    image: Image.Image
    status: str
    verdict: Verdict | None = None
    critic_output: str = ""
    critic_error: str = ""
    generate_seconds: float = 0.0
    critic_seconds: float = 0.0
    # What the generator was given beside the edited picture: "reference 1", "step 1" (an anchor), ...
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.references = tuple(self.references)
        if self.status not in ATTEMPT_STATUSES:
            raise StoryboardError(f"unknown attempt status {self.status!r}")
        self.image = normalize_image(self.image)

    @property
    def critic_failed(self) -> bool:
        """The picture is unchecked because the Critic could not be used (an endpoint error, say)."""
        return self.status == UNCHECKED and self.critic_error.startswith(CRITIC_FAILED)


@dataclass(eq=True)
class Step:
    plan_step: PlanStep
    attempts: list[Attempt] = field(default_factory=list)
    # The attempt chosen when every one was rejected ("best of the attempts") and why; None: the last one.
    kept_number: int | None = None
    kept_reason: str = ""

    @property
    def number(self) -> int:
        return self.plan_step.step_number

    @property
    def text(self) -> str:
        return self.plan_step.display_text

    @property
    def kept(self) -> Attempt | None:
        """The attempt whose image the story uses: the chosen one, else the last (an accepted one ends the
        retries)."""
        if self.kept_number is not None:
            for attempt in self.attempts:
                if attempt.number == self.kept_number:
                    return attempt
        return self.attempts[-1] if self.attempts else None

    @property
    def image(self) -> Image.Image | None:
        return self.kept.image if self.kept else None

    @property
    def status(self) -> str:
        return self.kept.status if self.kept else TEXT_ONLY


@dataclass(eq=True)
class Storyboard:
    instruction: str
    mode: str
    plan: Plan
    steps: list[Step]
    input_images: list[Image.Image] = field(default_factory=list)
    # Pictures that hold the cast (characters, a style, a place): the generator's, not the Planner's.
    reference_images: list[Image.Image] = field(default_factory=list)
    width: int = 1024
    height: int = 1024
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    planner_output: str = ""
    planner_tries: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    story_id: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.input_images = [normalize_image(image) for image in self.input_images]
        self.reference_images = [normalize_image(image) for image in self.reference_images]

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def images(self) -> list[Image.Image]:
        """The kept image of every image step, in order."""
        return [step.image for step in self.steps if step.image is not None]

    @property
    def attempts(self) -> list[Attempt]:
        return [attempt for step in self.steps for attempt in step.attempts]

    def text(self, separator: str = "\n\n") -> str:
        return separator.join(step.text for step in self.steps if step.text)

    def edit_source(self, index: int) -> Image.Image | None:
        """The image step ``index`` (0-based) edits: the last kept image before it; before any, the user's
        last image in guidance mode. None: the step is drawn from text."""
        for step in reversed(self.steps[:index]):
            if step.image is not None:
                return step.image
        if self.mode == "guidance" and self.input_images:
            return self.input_images[-1]
        return None

    def before_image(self, index: int) -> Image.Image:
        """What step ``index`` is judged against: its edit source, or the white canvas a story starts from."""
        source = self.edit_source(index)
        return source if source is not None else white_canvas(self.width, self.height)

    def extra_references(self, index: int, anchor: str) -> list[tuple[str, Image.Image]]:
        """``(label, picture)`` for what step ``index``'s generator call carries beside its edit source: the
        story's references, then with ``anchor="first"`` the story's first picture, unless that is the very
        picture being edited (the step right after it, or a first step)."""
        extras = [(f"reference {i + 1}", image) for i, image in enumerate(self.reference_images)]
        if anchor == ANCHOR_FIRST:
            first = next((step for step in self.steps[:index] if step.image is not None), None)
            if first is not None and first.image is not self.edit_source(index):
                extras.append((f"step {first.number}", first.image))
        return extras

    # -- file names inside a saved folder ----------------------------------------------------------------
    @staticmethod
    def step_file(step: Step) -> str:
        return f"steps/step-{step.number:02d}.png"

    @staticmethod
    def attempt_file(step: Step, attempt: Attempt) -> str:
        return f"attempts/step-{step.number:02d}-attempt-{attempt.number}.png"

    @staticmethod
    def input_file(index: int) -> str:
        return f"inputs/input-{index + 1:02d}.png"

    @staticmethod
    def reference_file(index: int) -> str:
        return f"references/reference-{index + 1:02d}.png"

    @staticmethod
    def is_saved(folder: str | Path) -> bool:
        """Whether ``folder`` holds a finished storyboard (its JSON is written last, inside the renamed
        folder)."""
        return (Path(folder) / FILENAME).is_file()

    @staticmethod
    def is_remains(folder: str | Path) -> bool:
        """Whether ``folder`` is what is left of a storyboard: its picture folders, and nothing but its own
        files and pictures (a lone index.html could be anyone's)."""
        folders = 0
        for entry in Path(folder).iterdir():
            if entry.is_symlink():
                return False
            if entry.is_dir():
                if entry.name not in _LAYOUT_FOLDERS or any(
                    p.is_symlink() or not p.is_file() or p.suffix != ".png" for p in entry.iterdir()
                ):
                    return False
                folders += 1
            elif entry.name not in _LAYOUT_FILES and not is_print_file(entry.name):
                return False
        return folders > 0

    @staticmethod
    def check_replaceable(folder: str | Path) -> None:
        """Refuse to replace ``folder`` unless it holds a storyboard, what is left of one, or nothing; never
        the current folder, one above it, or the home folder."""
        folder = Path(folder)
        if not os.path.lexists(folder):
            return
        protected = protected_folder(folder)
        if protected:
            raise StoryboardError(
                f"{folder} is {protected}; a storyboard never replaces it: choose a new folder"
            )
        if not folder.is_dir():
            raise StoryboardError(f"{folder} is a file, not a storyboard folder; choose a new folder")
        if not (Storyboard.is_saved(folder) or not any(folder.iterdir()) or Storyboard.is_remains(folder)):
            raise StoryboardError(
                f"{folder} holds files that are not a storyboard; only a storyboard folder or an empty one "
                "is replaced: choose a new folder, or move those files away"
            )

    @staticmethod
    def find(path: str | Path) -> list[Path]:
        """The storyboard folders at or below ``path``."""
        path = Path(path)
        if Storyboard.is_saved(path):
            return [path]
        return sorted(p.parent for p in path.rglob(FILENAME))

    # -- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "story_id": self.story_id,
            "created": self.created,
            "instruction": self.instruction,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "settings": self.settings,
            "timings": self.timings,
            "planner": {
                "output": self.planner_output,
                "tries": self.planner_tries,
                "reasoning": self.plan.reasoning,
            },
            "plan": self.plan.to_dict(),
            "inputs": [self.input_file(i) for i in range(len(self.input_images))],
            # Added after 0.1.0, written only when there are some: older storyboards save as they were.
            **(
                {"references": [self.reference_file(i) for i in range(len(self.reference_images))]}
                if self.reference_images
                else {}
            ),
            "steps": [
                {
                    "step_number": step.number,
                    "status": step.status,
                    "text": step.text,
                    "image": self.step_file(step) if step.image is not None else None,
                    "attempts": [
                        {
                            "number": a.number,
                            "prompt": a.prompt,
                            "seed": a.seed,
                            "route": a.route,
                            "status": a.status,
                            "image": self.attempt_file(step, a),
                            "verdict": a.verdict.to_dict() | {"reasoning": a.verdict.reasoning}
                            if a.verdict
                            else None,
                            "critic_output": a.critic_output,
                            "critic_error": a.critic_error,
                            "generate_seconds": a.generate_seconds,
                            "critic_seconds": a.critic_seconds,
                            **({"references": list(a.references)} if a.references else {}),
                        }
                        for a in step.attempts
                    ],
                    # Added after 0.1.0 (readers that ignore it still find the kept picture under "image").
                    **(
                        {"kept": {"attempt": step.kept_number, "reason": step.kept_reason}}
                        if step.kept_number is not None
                        else {}
                    ),
                }
                for step in self.steps
            ],
        }

    def save(self, folder: str | Path, *, overwrite: bool = False, pages: bool = True) -> Path:
        """Write the storyboard folder atomically and return its path.

        ``pages``: also the printable pages (``page-NN.png``) and ``storyboard.pdf`` (about half a second
        more; evaluation runs that save hundreds of storyboards turn it off).
        """
        folder = Path(folder)
        if os.path.lexists(folder):
            if not overwrite:
                raise StoryboardError(f"{folder} already exists; choose another folder or allow overwriting")
            self.check_replaceable(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(folder)
        try:
            self._write(tmp, pages)
            replace_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def _write(self, root: Path, pages: bool = True) -> None:
        for sub in ("inputs", "steps", "attempts"):
            (root / sub).mkdir(parents=True)
        data = self.to_dict()
        for image, name in zip(self.input_images, data["inputs"]):
            image.save(root / name)
        if self.reference_images:
            (root / "references").mkdir()
            for image, name in zip(self.reference_images, data["references"]):
                image.save(root / name)
        for step in self.steps:
            for attempt in step.attempts:
                attempt.image.save(root / self.attempt_file(step, attempt))
            if step.kept is not None:
                shutil.copyfile(root / self.attempt_file(step, step.kept), root / self.step_file(step))
        (root / FILENAME).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        (root / "index.html").write_text(render_html(self), encoding="utf-8")
        (root / "story.md").write_text(render_markdown(self), encoding="utf-8")
        if pages:
            write_pages(self, root)

    @classmethod
    def load(cls, folder: str | Path) -> Storyboard:
        folder = Path(folder)
        path = folder / FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoryboardError(f"no storyboard in {folder} ({FILENAME} is missing)") from None
        except (OSError, ValueError) as error:
            raise StoryboardError(f"cannot read {path}: {error}") from None
        version = data.get("version")
        if version != SCHEMA_VERSION:
            raise StoryboardError(
                f"{path} has schema version {version!r}; this release reads {SCHEMA_VERSION}"
            )
        try:
            planner = data.get("planner", {})
            plan = Plan.from_dict(data["plan"], reasoning=planner.get("reasoning", ""))
            steps = []
            for plan_step, raw in zip(plan.steps, data["steps"]):
                attempts = [
                    Attempt(
                        number=a["number"],
                        prompt=a["prompt"],
                        seed=a["seed"],
                        route=a["route"],
                        image=_inside(folder, a["image"]),
                        status=a["status"],
                        verdict=_verdict(a.get("verdict")),
                        critic_output=a.get("critic_output", ""),
                        critic_error=a.get("critic_error", ""),
                        generate_seconds=a.get("generate_seconds", 0.0),
                        critic_seconds=a.get("critic_seconds", 0.0),
                        references=tuple(a.get("references", ())),
                    )
                    for a in raw["attempts"]
                ]
                kept = raw.get("kept") or {}
                steps.append(Step(plan_step, attempts, kept.get("attempt"), kept.get("reason", "")))
            return cls(
                instruction=data["instruction"],
                mode=data["mode"],
                plan=plan,
                steps=steps,
                input_images=[_inside(folder, name) for name in data.get("inputs", [])],
                reference_images=[_inside(folder, name) for name in data.get("references", [])],
                width=data["width"],
                height=data["height"],
                seed=data["seed"],
                settings=data.get("settings", {}),
                planner_output=planner.get("output", ""),
                planner_tries=planner.get("tries", 1),
                timings=data.get("timings", {}),
                story_id=data.get("story_id", ""),
                created=data.get("created", ""),
                version=version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise StoryboardError(f"{path} is damaged: {error}") from None


def _inside(folder: Path, name: str) -> Image.Image:
    """A picture a storyboard names, refused when the name leaves its folder (the JSON may be anyone's)."""
    try:
        path = inside(folder, str(name), "a picture")
    except ValueError as error:  # an absolute name, "..", or a link out of the folder
        raise StoryboardError(f"{folder / FILENAME} is damaged: {error}") from None
    return _open(path)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return normalize_image(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise StoryboardError(f"cannot open image {path}: {error}") from None


def _verdict(data: dict | None) -> Verdict | None:
    if not data:
        return None
    return Verdict(
        bool(data["previous_step_success"]), data.get("refine_prompt", ""), data.get("reasoning", "")
    )


# ---------------------------------------------------------------------------------------------------------
# Pages


# On top of the shared page style (core/pages.py).
_CSS = """
body{max-width:880px;font-size:17px}
.step{background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002;margin:1.6em 0;padding:1.1em 1.3em}
.step h2{font-size:1.1em;margin:.1em 0 .6em}
.step img.main{display:block;width:min(100%,512px);border:1px solid #e3e3e3;border-radius:8px;
margin:.4em auto}
img.small{image-rendering:pixelated}
details{margin-top:.8em;font-size:.9em}
.attempt{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #eee;padding:.6em 0}
.attempt img{width:160px;border:1px solid #e3e3e3;border-radius:6px;flex:none}
.attempt p{margin:.2em 0}
.inputs img{max-width:200px;border-radius:6px;margin-right:.5em}
.warn{background:#fef3c7;color:#78350f;border-radius:8px;padding:.6em 1em}
"""


def render_html(story: Storyboard) -> str:
    e = escape
    out = [
        f"<h1>{e(story.instruction)}</h1>",
        f"<p class=meta>{e(story.mode)} plan · {len(story.steps)} steps · seed {story.seed}"
        f" · {e(str(story.settings.get('generator', '')))} · {e(story.created)}</p>",
    ]
    failed = [a for a in story.attempts if a.critic_failed]
    if failed:
        out.append(
            f"<p class=warn>The Critic could not be used for {len(failed)} of {len(story.attempts)} "
            f"pictures: they are kept unchecked. {e(failed[0].critic_error)}</p>"
        )
    inputs = [story.input_file(i) for i in range(len(story.input_images))]
    references = [story.reference_file(i) for i in range(len(story.reference_images))]
    out += [
        row
        for row in (
            _picture_row(inputs, "input"),
            _picture_row(references, "reference", "<p class=meta>References</p>"),
        )
        if row
    ]
    note = (story.settings.get("references") or {}).get("note")
    if note:
        out.append(f"<p class=warn>{e(note)}</p>")
    for step in story.steps:
        title = e(step.plan_step.step_name or f"Step {step.number}")
        out.append(
            f'<section class=step id="step-{step.number}"><h2>{step.number}. {title}'
            f"{badge(step.status) if step.attempts else ''}</h2>"
        )
        if step.image is not None:
            # Small pictures are shown larger, with sharp pixels rather than a blur.
            small = " small" if max(step.image.size) < 256 else ""
            out.append(f'<img class="main{small}" src="{story.step_file(step)}" alt="{title}">')
        if step.text:
            out.append(f"<p>{e(step.text)}</p>")
        if step.attempts:
            count = len(step.attempts)
            out.append(f"<details><summary>{count} attempt{'' if count == 1 else 's'}</summary>")
            for a in step.attempts:
                reason = a.verdict.reasoning if a.verdict else a.critic_error
                out.append(
                    f'<div class=attempt><img src="{story.attempt_file(step, a)}" '
                    f'alt="attempt {a.number}"><div>'
                    f"<p><b>Attempt {a.number}</b>{badge(a.status)}</p>"
                    f"<p><code>{e(a.prompt)}</code></p>"
                    + (f"<p>{e(reason)}</p>" if reason else "")
                    + f"<p class=meta>{e(a.route)}{e(_with(a.references))} · seed {a.seed}"
                    f" · generate {a.generate_seconds:.2f} s"
                    f" · critic {a.critic_seconds:.2f} s</p></div></div>"
                )
            out.append("</details>")
        out.append("</section>")
    out.append(f"<details><summary>Plan</summary><pre>{e(story.plan.to_json())}</pre></details>")
    return page(story.instruction[:80], "\n".join(out), _CSS)


def _picture_row(files: list[str], what: str, title: str = "") -> str:
    if not files:
        return ""
    pictures = "".join(f'<img src="{name}" alt="{what} {i + 1}">' for i, name in enumerate(files))
    return f"<div class=inputs>{title}{pictures}</div>"


def _with(references: tuple[str, ...]) -> str:
    return f" with {', '.join(references)}" if references else ""


# Markdown that makes links, pictures, HTML, code or emphasis anywhere, and block syntax at a line's start.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>&|~])")
_MD_LINE_START = re.compile(r"^([ \t]*)([#>+=-]|\d+[.)])", re.MULTILINE)


def markdown_text(text: str, *, one_line: bool = False) -> str:
    """``text`` (the user's or a model's) as Markdown that shows it as written and makes nothing else: no
    link, picture or HTML a model could slip in. Plain prose stays as it is."""
    if one_line:
        text = " ".join(text.split())
    text = _MD_INLINE.sub(r"\\\1", text)
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)


def render_markdown(story: Storyboard) -> str:
    lines = [f"# {markdown_text(story.instruction, one_line=True)}", ""]
    for step in story.steps:
        name = markdown_text(step.plan_step.step_name or f"Step {step.number}", one_line=True)
        lines.append(f"## {step.number}. {name}")
        lines.append("")
        if step.image is not None:
            lines += [f"![step {step.number}]({story.step_file(step)})", ""]
        if step.text:
            lines += [markdown_text(step.text), ""]
    return "\n".join(lines)


__all__ = [
    "ACCEPTED",
    "ATTEMPT_STATUSES",
    "Attempt",
    "CRITIC_FAILED",
    "REJECTED",
    "SCHEMA_VERSION",
    "Step",
    "Storyboard",
    "StoryboardError",
    "TEXT_ONLY",
    "UNCHECKED",
    "markdown_text",
    "normalize_image",
    "render_html",
    "render_markdown",
]
