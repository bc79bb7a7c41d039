"""The offline demo: a handful of test tasks through the full refine loop, saved as browsable storyboards."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.agents.base import Agent
from ..core.pages import escape, page
from ..core.storyboard import Storyboard
from .evaluate import TaskResult, run_task, score_story
from .tasks import Task, make_tasks

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


@dataclass
class DemoStory:
    task: Task
    folder: str | None
    result: TaskResult
    story: Storyboard | None
    error: str = ""


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
        if story is not None:
            story.save(out / task.id, overwrite=True)
            folder = task.id
        stories.append(DemoStory(task, folder, score_story(task, story, error), story, error))
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


def render_index(stories: Sequence[DemoStory], labels: dict[str, str]) -> str:
    e = escape
    right = sum(sum(s.result.steps) for s in stories)
    total = sum(len(s.result.steps) for s in stories)
    out = [
        "<h1>InterleaveThinker sandbox demo</h1>",
        "<p class=meta>Each story went through the full refine loop: the Planner planned it, the sandbox "
        "generator "
        "drew every step, the Critic checked each picture and rewrote the prompt when it fell short. "
        "The oracle judge, which reads the pictures' pixels, marks each step right or wrong.</p>",
        "<ul class=meta>"
        + "".join(f"<li><b>{e(role)}</b>: {e(text)}</li>" for role, text in labels.items())
        + "</ul>",
        f"<p><b>{right} of {total}</b> steps right in {len(stories)} stories.</p>",
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
            for index, step in enumerate(s.story.steps):
                ok = index < len(s.result.steps) and s.result.steps[index]
                mark = f"<span class={'ok' if ok else 'bad'}>{'right' if ok else 'wrong'}</span>"
                count = len(step.attempts)
                attempts = f" · {count} attempt{'' if count == 1 else 's'}" if count else ""
                image = (
                    f'<img src="{e(s.folder)}/{Storyboard.step_file(step)}" alt="step {step.number}">'
                    if step.image is not None
                    else ""
                )
                figures.append(
                    f"<figure>{image}<figcaption><b>{step.number}.</b> {e(step.text)}<br>{mark}"
                    f"{attempts}{_attempt_list(s.folder, step)}</figcaption></figure>"
                )
        else:
            figures.append(f"<p class=bad>No valid plan: {e(s.error)}</p>")
        out.append("<div class=strip>" + "".join(figures) + "</div></section>")
    return page("InterleaveThinker sandbox demo", "\n".join(out), _CSS)


def _attempt_list(folder: str, step) -> str:
    """Every attempt of a step: a thumbnail, the Critic's verdict, the prompt and the Critic's reasoning."""
    if len(step.attempts) < 2:
        return ""
    e = escape
    rows = []
    for attempt in step.attempts:
        reason = attempt.verdict.reasoning if attempt.verdict else attempt.critic_error
        src = f"{folder}/{Storyboard.attempt_file(step, attempt)}"
        rows.append(
            f'<div class=attempt><img src="{e(src)}" alt="attempt {attempt.number}">'
            f"<span><b>{attempt.number}</b> {e(attempt.status)}: <code>{e(attempt.prompt)}</code>"
            f"<br>{e(reason)}</span></div>"
        )
    return "<details><summary>attempts</summary>" + "".join(rows) + "</details>"


__all__ = ["DEFAULT_OUT", "DemoStory", "demo_tasks", "render_index", "run_demo"]
