"""Measuring agents in the sandbox: run tasks through the refine loop and score every step with the oracle.

Metrics (one column per Planner/Critic pairing):
- valid-plan rate: plans that parse and have the task's steps (count, numbering, image or text steps);
- step success: image steps whose kept picture does exactly what the task's step asks, judged from the pixels
  against the picture it edited; text success: "describe" steps whose sentence is exactly right;
- story success: tasks with a valid plan and every step right;
- attempts per step: generations per image step;
- critic verdict accuracy over every judged attempt, and the precision and recall of its rejections
  (a rejection is right when the picture really is wrong), at the first attempt and at later ones;
- retry success: of the attempts the Critic rejected that were followed by another, the share whose next
  attempt was right (what a Critic's refined prompt buys);
- for stories with a cast (the cast suite): identity errors, cast members whose colour and shape are not in
  a kept picture that should show them, counted against the task's own scenes (not against the picture
  before), so drift that a Critic let through counts at every later step too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core import settings
from ..core.agents.base import Agent
from ..core.loop import LoopConfig, derive_seed, run_story
from ..core.protocol import Plan, ProtocolError
from ..core.storyboard import ACCEPTED, REJECTED, Storyboard
from .generator import SandboxGenerator
from .grading import judge_step, judge_text
from .tasks import Task
from .world import EMPTY, read


@dataclass
class TaskResult:
    task_id: str
    kind: str
    plan_valid: bool
    steps: list[bool] = field(default_factory=list)  # one per task step
    attempts: list[int] = field(default_factory=list)  # per image step that ran
    verdicts: list[tuple[bool, bool]] = field(default_factory=list)  # (critic accepted, picture right)
    first_verdicts: list[tuple[bool, bool]] = field(default_factory=list)  # the same, first attempts only
    later_verdicts: list[tuple[bool, bool]] = field(default_factory=list)  # and second or later attempts
    retries: list[bool] = field(default_factory=list)  # per rejected attempt with a next: was the next right
    identity_errors: list[int] = field(default_factory=list)  # per image step, for tasks with a cast
    error: str = ""

    @property
    def success(self) -> bool:
        return self.plan_valid and bool(self.steps) and all(self.steps)


@dataclass
class Report:
    name: str
    planner: str
    critic: str
    tasks: int = 0
    valid_plan_rate: float = 0.0
    step_success: float = math.nan
    text_success: float = math.nan
    story_success: float = 0.0
    attempts_per_step: float = math.nan
    verdict_accuracy: float = math.nan
    reject_precision: float = math.nan
    reject_recall: float = math.nan
    reject_recall_first: float = math.nan
    reject_recall_later: float = math.nan
    retry_success: float = math.nan
    identity_errors: float = math.nan  # per story
    identity_error_steps: float = math.nan  # share of image steps with at least one
    image_steps: int = 0
    text_steps: int = 0
    judged_attempts: int = 0
    results: list[TaskResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = [asdict(r) for r in self.results]
        return _json_safe(data)


def plan_fits(task: Task, plan: Plan) -> bool:
    """Whether a plan has the task's shape: step count, numbering, and image steps or text steps as asked."""
    if len(plan.steps) != len(task.steps):
        return False
    if task.kind == "describe":
        return all(not step.makes_image and step.display_text for step in plan.steps)
    if plan.steps[0].step_number != task.first_step_number:
        return False
    return all(step.makes_image for step in plan.steps)


def score_story(task: Task, story: Storyboard | None, error: str = "") -> TaskResult:
    """Judge a storyboard made for ``task`` step by step against the task's ground truth."""
    if story is None:
        return TaskResult(task.id, task.kind, False, [False] * len(task.steps), error=error)
    result = TaskResult(task.id, task.kind, plan_fits(task, story.plan))
    for index, truth in enumerate(task.steps):
        step = story.steps[index] if index < len(story.steps) else None
        if task.kind == "describe":
            before = EMPTY if index == 0 else task.scenes[index - 1]
            result.steps.append(step is not None and judge_text(step.text, before, task.scenes[index]))
            continue
        if step is None or step.image is None:
            result.steps.append(False)
            continue
        before = read(story.before_image(index))
        result.steps.append(judge_step(truth, before, step.image).success)
        result.attempts.append(len(step.attempts))
        rights = [judge_step(truth, before, attempt.image).success for attempt in step.attempts]
        for number, (attempt, right) in enumerate(zip(step.attempts, rights)):
            if attempt.status in (ACCEPTED, REJECTED):
                result.verdicts.append((attempt.status == ACCEPTED, right))
                (result.later_verdicts if number else result.first_verdicts).append(
                    (attempt.status == ACCEPTED, right)
                )
            if attempt.status == REJECTED and number + 1 < len(rights):
                result.retries.append(rights[number + 1])
        if task.cast:
            result.identity_errors.append(identity_errors(task, index, step.image))
    return result


def identity_errors(task: Task, index: int, image) -> int:
    """Cast members that task step ``index`` should show but whose colour and shape ``image`` lacks."""
    expected = {(obj.shape, obj.colour) for _, obj in task.scenes[index].objects()}
    seen = {(obj.shape, obj.colour) for _, obj in read(image).objects()}
    return sum(
        1 for obj in task.cast if (obj.shape, obj.colour) in expected and (obj.shape, obj.colour) not in seen
    )


def run_task(
    task: Task,
    planner: Agent,
    critic: Agent | None,
    generator=None,
    *,
    max_attempts: int = 3,
    seed: int = 0,
    on_event=None,
    keep_attempt: str = settings.DEFAULT_KEEP,
    references: bool = False,
    anchor: str = settings.DEFAULT_ANCHOR,
) -> tuple[Storyboard | None, str]:
    """One task through the full loop; (None, error) when the Planner never gives a valid plan.
    ``references``: the task's cast pictures go to the generator as the story's references."""
    config = LoopConfig(
        max_attempts=max_attempts,
        seed=derive_seed(seed, task.id),
        width=task.width,
        height=task.height,
        mode=task.mode,
        keep_attempt=keep_attempt,
        anchor=anchor,
    )
    try:
        story = run_story(
            task.instruction,
            planner,
            generator or SandboxGenerator(),
            critic,
            images=task.input_images(),
            references=task.reference_images() if references else (),
            config=config,
            on_event=on_event,
        )
    except ProtocolError as error:
        return None, str(error)
    story.story_id = task.id
    return story, ""


def summarise(name: str, planner: str, critic: str, results: Sequence[TaskResult]) -> Report:
    report = Report(name, planner, critic, tasks=len(results), results=list(results))
    if not results:
        return report
    image = [ok for r in results if r.kind != "describe" for ok in r.steps]
    text = [ok for r in results if r.kind == "describe" for ok in r.steps]
    attempts = [n for r in results for n in r.attempts]
    verdicts = [v for r in results for v in r.verdicts]
    first = [v for r in results for v in r.first_verdicts]
    later = [v for r in results for v in r.later_verdicts]
    retries = [ok for r in results for ok in r.retries]
    identity = [r.identity_errors for r in results if r.identity_errors]
    report.retry_success = _mean(retries)
    if identity:
        report.identity_errors = _mean([sum(errors) for errors in identity])
        report.identity_error_steps = _mean([n > 0 for errors in identity for n in errors])
    report.reject_recall_first = _recall(first)
    report.reject_recall_later = _recall(later)
    report.valid_plan_rate = _mean([r.plan_valid for r in results])
    report.step_success = _mean(image)
    report.text_success = _mean(text)
    report.story_success = _mean([r.success for r in results])
    report.attempts_per_step = _mean(attempts)
    report.image_steps, report.text_steps, report.judged_attempts = len(image), len(text), len(verdicts)
    if verdicts:
        report.verdict_accuracy = _mean([accepted == right for accepted, right in verdicts])
        rejected_wrong = sum(not accepted and not right for accepted, right in verdicts)
        rejected = sum(not accepted for accepted, _ in verdicts)
        wrong = sum(not right for _, right in verdicts)
        report.reject_precision = rejected_wrong / rejected if rejected else math.nan
        report.reject_recall = rejected_wrong / wrong if wrong else math.nan
    return report


def _recall(verdicts: Sequence[tuple[bool, bool]]) -> float:
    """Of the wrong pictures, the share the Critic rejected."""
    wrong = [accepted for accepted, right in verdicts if not right]
    return _mean([not accepted for accepted in wrong])


def evaluate(
    tasks: Sequence[Task],
    planner: Agent,
    critic: Agent | None,
    *,
    name: str = "",
    max_attempts: int = 3,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    keep: Callable[[Task, Storyboard], None] | None = None,
    keep_attempt: str = settings.DEFAULT_KEEP,
    generator: SandboxGenerator | None = None,
    references: bool = False,
    anchor: str = settings.DEFAULT_ANCHOR,
) -> Report:
    """Run every task with ``planner`` and ``critic`` and summarise the oracle's scores. ``generator``:
    the sandbox generator to draw with (default: its standard failure model, no drift)."""
    generator = generator or SandboxGenerator()
    results = []
    for task in progress(tasks) if progress else tasks:
        story, error = run_task(
            task,
            planner,
            critic,
            generator,
            max_attempts=max_attempts,
            seed=seed,
            keep_attempt=keep_attempt,
            references=references,
            anchor=anchor,
        )
        results.append(score_story(task, story, error))
        if keep is not None and story is not None:
            keep(task, story)
    planner_name = getattr(planner, "name", "planner")
    critic_name = getattr(critic, "name", "critic") if critic is not None else "none"
    return summarise(name or f"critic {critic_name}", planner_name, critic_name, results)


# ---------------------------------------------------------------------------------------------------------
# Tables and plots


ROWS = (
    ("valid-plan rate", "valid_plan_rate", "pct"),
    ("step success", "step_success", "pct"),
    ("text success (describe)", "text_success", "pct"),
    ("story success", "story_success", "pct"),
    ("attempts per step", "attempts_per_step", "num"),
    ("critic verdict accuracy", "verdict_accuracy", "pct"),
    ("rejection precision", "reject_precision", "pct"),
    ("rejection recall", "reject_recall", "pct"),
    ("rejection recall, first attempt", "reject_recall_first", "pct"),
    ("rejection recall, later attempts", "reject_recall_later", "pct"),
    ("retry success", "retry_success", "pct"),
)
# Shown only when some report measured them (the cast suite).
IDENTITY_ROWS = (
    ("identity errors per story", "identity_errors", "num"),
    ("steps with an identity error", "identity_error_steps", "pct"),
)


def _cell(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}%" if kind == "pct" else f"{value:.2f}"


def format_table(reports: Sequence[Report]) -> str:
    """A Markdown table: one row per metric, one column per report."""
    header = "| metric | " + " | ".join(r.name for r in reports) + " |"
    lines = [header, "|---|" + "---:|" * len(reports)]
    shown = ROWS + (IDENTITY_ROWS if any(not math.isnan(r.identity_errors) for r in reports) else ())
    for label, key, kind in shown:
        lines.append(f"| {label} | " + " | ".join(_cell(getattr(r, key), kind) for r in reports) + " |")
    counts = ", ".join(
        f"{r.name}: {r.tasks} tasks, {r.image_steps} image steps, {r.text_steps} text steps, "
        f"{r.judged_attempts} judged attempts"
        for r in reports
    )
    return "\n".join(lines) + f"\n\n({counts})"


def write_plot(reports: Sequence[Report], path: str | Path) -> Path:
    """Grouped bars of the main rates, one group per report (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("valid_plan_rate", "valid plan"),
        ("step_success", "step success"),
        ("story_success", "story success"),
        ("verdict_accuracy", "verdict accuracy"),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.8 + 1.9 * len(reports), 3.6), dpi=110)
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        values = [getattr(r, key) for r in reports]
        heights = [0.0 if math.isnan(v) else 100 * v for v in values]
        bars = ax.bar(
            [i + (k - (len(keys) - 1) / 2) * width for i in range(len(reports))], heights, width, label=label
        )
        # No bar and no number where a metric does not apply (verdict accuracy without a Critic).
        ax.bar_label(
            bars, labels=["" if math.isnan(v) else f"{100 * v:.0f}" for v in values], fontsize=7, padding=1
        )
    ax.set_xticks(range(len(reports)), [r.name for r in reports], fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.set_title("Sandbox evaluation (oracle-judged)", fontsize=10)
    ax.legend(fontsize=7, ncols=len(keys), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _mean(values: Sequence[bool | float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_reports(reports: Sequence[Report], folder: str | Path) -> dict[str, Path | None]:
    """results.json, table.md and plot.png in ``folder``, each written atomically. The plot needs matplotlib
    (the ``train`` extra); without it ``plot`` is None."""
    from ..core.files import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = format_table(reports)
    atomic_write_text(folder / "table.md", table + "\n")
    atomic_write_text(folder / "results.json", json.dumps([r.to_dict() for r in reports], indent=1))
    try:
        plot = write_plot(reports, folder / "plot.png")
    except ImportError:
        plot = None
    return {"table": folder / "table.md", "results": folder / "results.json", "plot": plot}


__all__ = [
    "Report",
    "TaskResult",
    "evaluate",
    "format_table",
    "plan_fits",
    "run_task",
    "score_story",
    "summarise",
    "write_plot",
    "write_reports",
]
