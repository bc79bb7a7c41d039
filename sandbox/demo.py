"""The offline demo: a handful of test tasks through the full refine loop, saved as browsable storyboards.

Every step carries the oracle's truth beside the Critic's verdict: right or wrong, and for a wrong step what
the oracle expected and what it saw. The demo's index shows it under each step, and each storyboard's page
(the engine's own, which cannot know the truth) gets it as a first section and under each step's heading,
so that a step the Critic accepted and the oracle marks wrong never shows only a green "accepted".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.agents.base import Agent
from ..core.pages import escape, page
from ..core.storyboard import ACCEPTED, Storyboard
from .evaluate import TaskResult, run_task, score_story
from .grading import change_summary, judge_step, judge_text, scene_summary
from .tasks import Task, make_tasks
from .world import EMPTY, read

DEFAULT_OUT = "interleave-demo"
# Two stories built from words, one continued from pictures, one described: every kind of task.
DEMO_MIX = ("build", "build", "continue", "describe")


def demo_tasks(count: int = len(DEMO_MIX), seed: int = 0) -> list[Task]:
    """The first test tasks of each kind, in the demo's mix."""
    if count < 1:
        raise ValueError(f"the demo needs at least one task, got {count}")
    pools = {
        kind: make_tasks("test", DEMO_MIX.count(kind) * (count // len(DEMO_MIX) + 1), seed, kinds=(kind,))
        for kind in set(DEMO_MIX)
    }
    chosen: list[Task] = []
    taken = {kind: 0 for kind in pools}
    while len(chosen) < count:
        kind = DEMO_MIX[len(chosen) % len(DEMO_MIX)]
        chosen.append(pools[kind][taken[kind]])
        taken[kind] += 1
    return chosen


@dataclass(frozen=True)
class StepTruth:
    """The oracle's finding on one task step, beside what the Critic said of it."""

    number: int
    right: bool
    critic: str  # the kept attempt's status (accepted, rejected, unchecked); "" where no Critic looked
    asked: str  # the change the step asks for, in the sandbox's precise words
    expected: str  # what the oracle expected to see
    seen: str  # what it saw
    problems: tuple[str, ...] = ()
    attempts_right: tuple[bool, ...] = ()  # per attempt, in order

    @property
    def wrong_but_accepted(self) -> bool:
        return not self.right and self.critic == ACCEPTED


@dataclass
class DemoStory:
    task: Task
    folder: str | None
    result: TaskResult
    story: Storyboard | None
    error: str = ""
    truths: list[StepTruth] = field(default_factory=list)


def step_truths(task: Task, story: Storyboard | None) -> list[StepTruth]:
    """The oracle's finding on every step of ``task`` as ``story`` carried it out (the same judgement as
    ``evaluate.score_story``, with its words kept)."""
    truths = []
    for index, sentence in enumerate(task.steps):
        step = story.steps[index] if story is not None and index < len(story.steps) else None
        # The storyboard's own numbering: a continued story's first planned step is 3 after two pictures.
        number = step.number if step is not None else task.first_step_number + index
        if task.kind == "describe":
            before = EMPTY if index == 0 else task.scenes[index - 1]
            after = task.scenes[index]
            text = step.text if step is not None else ""
            right = step is not None and judge_text(text, before, after)
            asked = change_summary(before, after)
            truths.append(
                StepTruth(
                    number,
                    right,
                    "",
                    asked,
                    f"a text that says: {asked}",
                    f"the text: {text}" if text else "no text",
                    () if right else ("the text does not say what changed",),
                )
            )
            continue
        if step is None or step.image is None:
            truths.append(
                StepTruth(number, False, "", sentence, sentence, "no picture", ("the step made no picture",))
            )
            continue
        before = read(story.before_image(index))
        score = judge_step(sentence, before, step.image)
        if score.expected is None:
            asked, expected = sentence, f"a step that cannot be carried out here ({score.error})"
        else:
            asked, expected = change_summary(score.before, score.expected), scene_summary(score.expected)
        truths.append(
            StepTruth(
                number,
                score.success,
                step.status if step.attempts else "",
                asked,
                expected,
                scene_summary(score.seen) if score.seen.readable else "a picture it cannot read",
                score.problems,
                tuple(judge_step(sentence, before, a.image).success for a in step.attempts),
            )
        )
    return truths


def run_demo(
    out: str | Path,
    planner: Agent,
    critic: Agent | None,
    *,
    tasks: Sequence[Task],
    labels: dict[str, str],
    seed: int = 0,
    max_attempts: int = 3,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[Path, list[DemoStory]]:
    """Run ``tasks``, save each storyboard under ``out``, write ``out/index.html``; return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stories: list[DemoStory] = []
    for task in progress(tasks) if progress else tasks:
        story, error = run_task(task, planner, critic, max_attempts=max_attempts, seed=seed)
        folder = None
        truths = step_truths(task, story)
        if story is not None:
            story.save(out / task.id, overwrite=True)
            folder = task.id
            add_truth_to_page(out / task.id / "index.html", truths)
        stories.append(DemoStory(task, folder, score_story(task, story, error), story, error, truths))
    from ..core.files import atomic_write_text

    atomic_write_text(out / "index.html", render_index(stories, labels))
    atomic_write_text(
        out / "demo.json",
        json.dumps(
            {
                "agents": labels,
                "stories": [
                    {
                        "task": s.task.id,
                        "kind": s.task.kind,
                        "instruction": s.task.instruction,
                        "folder": s.folder,
                        "plan_valid": s.result.plan_valid,
                        "steps_right": sum(s.result.steps),
                        "steps": len(s.result.steps),
                        "wrong_but_accepted": sum(t.wrong_but_accepted for t in s.truths),
                        "oracle": [asdict(t) for t in s.truths],
                        "error": s.error,
                    }
                    for s in stories
                ],
            },
            indent=2,
        ),
    )
    return out / "index.html", stories


# On top of the shared page style (core/pages.py).
_CSS = """
body{max-width:980px}
.story{background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002;margin:1.4em 0;padding:1em 1.2em}
.story h2{font-size:1.05em;margin:.2em 0 .6em}
.strip{display:flex;gap:.8em;flex-wrap:wrap;align-items:flex-start}
.strip figure{margin:0;width:190px}.strip img{width:144px;height:144px;image-rendering:pixelated;
border:1px solid #ddd;border-radius:6px}
.strip figcaption{font-size:.78em;color:#333}
.attempt{display:flex;gap:.4em;margin-top:.4em}.strip .attempt img{width:48px;height:48px;flex:none}
figcaption .ok,figcaption .bad{background:none}.input img{border-style:dashed}
"""
_TRUTH_CSS = """
.truth{margin:.3em 0;padding:.3em .5em;border-radius:6px;font-size:.95em}
.truth.bad{background:#fde2e1;color:#7f1d1d}.truth.ok{background:#dcf5e3;color:#14532d}
.truth ul{margin:.2em 0;padding-left:1.1em}.oracle-check li{margin:.4em 0}
"""


def render_index(stories: Sequence[DemoStory], labels: dict[str, str]) -> str:
    e = escape
    right = sum(sum(s.result.steps) for s in stories)
    total = sum(len(s.result.steps) for s in stories)
    fooled = sum(t.wrong_but_accepted for s in stories for t in s.truths)
    out = [
        "<h1>InterleaveThinker sandbox demo</h1>",
        "<p class=meta>Each story went through the full refine loop: the Planner planned it, the sandbox "
        "generator "
        "drew every step, the Critic checked each picture and rewrote the prompt when it fell short. "
        "The oracle judge, which reads the pictures' pixels, marks each step right or wrong; under each step "
        "its finding stands beside the Critic's verdict.</p>",
        "<ul class=meta>"
        + "".join(f"<li><b>{e(role)}</b>: {e(text)}</li>" for role, text in labels.items())
        + "</ul>",
        f"<p><b>{right} of {total}</b> steps right in {len(stories)} stories."
        + (
            f' <span class="badge bad">the Critic accepted {fooled} wrong step{"" if fooled == 1 else "s"}'
            "</span>"
            if fooled
            else ""
        )
        + "</p>",
    ]
    for s in stories:
        task = s.task
        status = f"{sum(s.result.steps)}/{len(s.result.steps)} steps right"
        title = e(task.instruction.replace("<image>", "").strip())
        link = f'<a href="{e(s.folder)}/index.html">{title}</a>' if s.folder else title
        out.append(
            f"<section class=story><h2>{link}<span class=badge>{e(task.kind)}</span>"
            f'<span class="badge {"ok" if s.result.success else "bad"}">{e(status)}</span></h2>'
        )
        figures = []
        if s.folder and s.story is not None:
            for i in range(len(s.story.input_images)):
                figures.append(
                    f'<figure class=input><img src="{e(s.folder)}/{Storyboard.input_file(i)}" '
                    f'alt="input {i + 1}"><figcaption>given picture {i + 1}</figcaption></figure>'
                )
            truths = {t.number: t for t in s.truths}
            for step in s.story.steps:
                truth = truths.get(step.number)
                count = len(step.attempts)
                attempts = f"{count} attempt{'' if count == 1 else 's'}" if count else ""
                image = (
                    f'<img src="{e(s.folder)}/{Storyboard.step_file(step)}" alt="step {step.number}">'
                    if step.image is not None
                    else ""
                )
                verdict = truth_html(truth) if truth else ""
                state = "" if truth is None else " right" if truth.right else " wrong"
                figures.append(
                    f'<figure class="step{state}" id="{e(s.folder)}-step-{step.number}">{image}<figcaption>'
                    f"<b>{step.number}.</b> {e(step.text)}{verdict}<span class=meta>{attempts}</span>"
                    f"{_attempt_list(s.folder, step, truth)}</figcaption></figure>"
                )
        else:
            figures.append(f"<p class=bad>No valid plan: {e(s.error)}</p>")
        out.append("<div class=strip>" + "".join(figures) + "</div></section>")
    return page("InterleaveThinker sandbox demo", "\n".join(out), _CSS + _TRUTH_CSS)


def truth_html(truth: StepTruth) -> str:
    """The oracle's finding beside the Critic's verdict; for a wrong step, what was expected and seen."""
    e = escape
    critic = f"Critic: {e(truth.critic)}" if truth.critic else "no Critic verdict"
    if truth.right:
        return f'<div class="truth ok"><b>Oracle: right</b> · {critic}</div>'
    if truth.critic == ACCEPTED:
        critic += ", but the oracle marks the step wrong"
    problems = "".join(f"<li>{e(problem)}</li>" for problem in truth.problems)
    return (
        f'<div class="truth bad"><b>Oracle: wrong</b> · {critic}'
        f"<br><b>Asked:</b> {e(truth.asked)}<br><b>Expected:</b> {e(truth.expected)}"
        f"<br><b>Saw:</b> {e(truth.seen)}" + (f"<ul>{problems}</ul>" if problems else "") + "</div>"
    )


def add_truth_to_page(path: Path, truths: Sequence[StepTruth]) -> None:
    """Put the oracle's findings into a storyboard's page: a first section with every step, and each
    finding under its step's heading. The page is the engine's; where its markup differs from what is
    looked for, the first section still carries everything."""
    from ..core.files import atomic_write_text

    text = path.read_text(encoding="utf-8")
    wrong = sum(not t.right for t in truths)
    items = "".join(
        f'<li><a href="#step-{t.number}">Step {t.number}</a> {truth_html(t)}</li>' for t in truths
    )
    section = (
        f"<style>{_TRUTH_CSS}</style><section class=oracle-check><h2>The oracle's check: "
        f"{len(truths) - wrong} of {len(truths)} steps right</h2><p class=meta>The sandbox oracle reads the "
        "pictures' pixels and knows what each step should show; the Critic's verdicts on this page are the "
        f"Critic's own.</p><ul>{items}</ul></section>\n"
    )
    for truth in truths:
        heading = re.compile(rf'(<section class=step id="step-{truth.number}">.*?</h2>)', re.DOTALL)
        text = heading.sub(lambda m, t=truth: m.group(1) + truth_html(t), text, count=1)
    start = text.find("<body>")
    if start < 0:
        raise ValueError(f"{path} is not a page this demo can add to: it has no <body>")
    start += len("<body>")
    atomic_write_text(path, text[:start] + "\n" + section + text[start:])


def _attempt_list(folder: str, step, truth: StepTruth | None = None) -> str:
    """Every attempt of a step: a thumbnail, the Critic's verdict beside the oracle's, the prompt and the
    Critic's reasoning."""
    if len(step.attempts) < 2:
        return ""
    e = escape
    rights = truth.attempts_right if truth is not None else ()
    rows = []
    for index, attempt in enumerate(step.attempts):
        reason = attempt.verdict.reasoning if attempt.verdict else attempt.critic_error
        src = f"{folder}/{Storyboard.attempt_file(step, attempt)}"
        oracle = ""
        if index < len(rights):
            oracle = f" · oracle: <span class={'ok' if rights[index] else 'bad'}>" + (
                "right</span>" if rights[index] else "wrong</span>"
            )
        rows.append(
            f'<div class=attempt><img src="{e(src)}" alt="attempt {attempt.number}">'
            f"<span><b>{attempt.number}</b> Critic: {e(attempt.status)}{oracle}"
            f"<br><code>{e(attempt.prompt)}</code><br>{e(reason)}</span></div>"
        )
    return "<details><summary>attempts</summary>" + "".join(rows) + "</details>"


__all__ = [
    "DEFAULT_OUT",
    "DemoStory",
    "StepTruth",
    "add_truth_to_page",
    "demo_tasks",
    "render_index",
    "run_demo",
    "step_truths",
    "truth_html",
]
