"""Teacher data: the oracle plays Planner and Critic, and the results are written in the official formats.

    python -m interleave_thinker.sandbox.teacher --out data/sandbox

writes, with the writers of ``training/data.py`` (prompts rendered by core/, answers from Plan/Verdict):

- ``planner_sft.json``: sharegpt rows, one per train task (both Planner modes);
- ``critic_sft.json``: sharegpt rows, one per Critic call in the rollouts;
- ``critic_rl.jsonl``: one Critic step per line with the oracle's ``evaluation`` of the judged picture;
- ``storyboards/``: the rollouts themselves, saved by the engine; ``tasks.jsonl``: the tasks used.

The Critic data comes through the data flywheel: the train tasks run through the real refine loop (oracle
agents, sandbox generator), the storyboards are saved, read back with ``training.data.read_storyboards`` and
every judged attempt is labelled again by the oracle. ``--from-storyboards DIR`` adds storyboards made by any
agents (your own runs, ``eval --save-storyboards``), labelled the same way.

:func:`write_sets` writes the same data for a training run that makes its own (a ``generated`` data source,
as in ``training/configs/*_tiny_cpu.yaml``), with a fixed number of rows per file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..core import settings
from ..core.protocol import Plan
from .evaluate import run_task
from .grading import judge_step
from .language import KEEP, NOTHING_ELSE
from .oracle import OraclePlanner, TeacherCritic, plan_for, teacher_verdict
from .tasks import StoryShape, Task, iter_tasks, make_tasks, read_request, save_tasks
from .world import COLOURS, DEFAULT_SIZE, PLACES, SHAPES, SIZES

OFFICIAL_FILES = ("planner_sft.json", "critic_sft.json", "critic_rl.jsonl")
# The long tasks (``build(long_tasks=...)``) beside the default split: stories up to the loop's default
# ``max_steps`` in scenes of up to six objects, so the Planner learns to plan that far and the Critics see
# busy pictures.
LONG_SHAPE = StoryShape((5, settings.DEFAULT_MAX_STEPS), 6)


@dataclass
class TeacherData:
    planner: list = field(default_factory=list)
    critic: list = field(default_factory=list)
    rl: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _load(ref) -> Image.Image:
    if isinstance(ref, Image.Image):
        return ref
    with Image.open(ref) as image:
        return image.convert("RGB")


def planner_examples(tasks: Iterable[Task]) -> list:
    """One Planner SFT example per task: the request (with its pictures) and the oracle's plan."""
    from ..training.data import PlannerExample

    examples = []
    for task in tasks:
        request = read_request(task.instruction)
        images = task.input_images()
        plan, reasoning = plan_for(request, images)
        examples.append(
            PlannerExample(
                task.instruction, Plan(plan.steps, reasoning), images, task.mode, f"task {task.id}"
            )
        )
    return examples


def relabel_planner(examples: Sequence) -> tuple[list, list[str]]:
    """Planner examples read from storyboards, with the oracle's plan in place of the one the run used."""
    from ..training.data import PlannerExample

    out, skipped = [], []
    for example in examples:
        request = read_request(example.instruction)
        if request is None:
            skipped.append(f"{example.source}: not a sandbox request")
            continue
        images = [_load(ref) for ref in example.images]
        plan, reasoning = plan_for(request, images)
        out.append(
            PlannerExample(
                example.instruction,
                Plan(plan.steps, reasoning),
                list(example.images),
                example.mode,
                example.source,
            )
        )
    return out, skipped


def relabel_critic(examples: Sequence) -> tuple[list, list]:
    """Critic SFT and RL examples from judged attempts: the teacher Critic's verdict and the oracle's scores
    of each picture."""
    from ..training.data import CriticExample, CriticRLExample

    sft, rl = [], []
    for example in examples:
        before, after = _load(example.before), _load(example.after)
        verdict = teacher_verdict(before, after, example.original_instruction, example.prompt_used)
        sft.append(
            CriticExample(
                example.before,
                example.after,
                example.original_instruction,
                example.prompt_used,
                verdict,
                example.source,
            )
        )
        score = judge_step(example.original_instruction or example.prompt_used, before, after)
        rl.append(
            CriticRLExample(
                example.before,
                example.after,
                example.original_instruction,
                example.prompt_used,
                score.success,
                float(score.semantics),
                float(score.quality),
                example.source,
            )
        )
    return sft, rl


def rollouts(
    tasks: Sequence[Task], folder: Path, *, seeds: int = 1, max_attempts: int = 3, progress=None
) -> Path:
    """Run every image task through the loop with the oracle Planner and the teacher Critic, ``seeds`` times,
    saving storyboards."""
    planner, critic = OraclePlanner(), TeacherCritic()
    runs = [(task, seed) for task in tasks if task.makes_images for seed in range(seeds)]
    for task, seed in progress(runs) if progress else runs:
        story, _ = run_task(task, planner, critic, max_attempts=max_attempts, seed=seed)
        if story is not None:
            story.save(folder / f"{task.id}-seed{seed}", overwrite=True, pages=False)
    return folder


def build(
    out: str | Path,
    *,
    tasks: int = 1000,
    long_tasks: int = 0,
    seeds: int = 1,
    task_seed: int = 0,
    from_storyboards: Sequence[str | Path] = (),
    progress=None,
) -> dict[str, Path]:
    """Write the three teacher data files (and the rollouts they came from) to ``out``: ``tasks`` train tasks
    of the default shape and ``long_tasks`` of ``LONG_SHAPE``."""
    from ..training.data import read_storyboards, write_critic_rl, write_critic_sft, write_planner_sft

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = make_tasks("train", tasks, seed=task_seed)
    train += make_tasks("train", long_tasks, seed=task_seed, shape=LONG_SHAPE)
    save_tasks(train, out / "tasks.jsonl")
    data = TeacherData(planner=planner_examples(train))
    sources = [rollouts(train, out / "storyboards", seeds=seeds, progress=progress)] + [
        Path(p) for p in from_storyboards
    ]
    for source in sources:
        judged, report = read_storyboards(source, "critic")
        data.skipped += [str(bad) for bad in report.bad]
        sft, rl = relabel_critic(judged)
        data.critic += sft
        data.rl += rl
        if source != sources[0]:
            plans, _ = read_storyboards(source, "planner")
            relabelled, skipped = relabel_planner(plans)
            data.planner += relabelled
            data.skipped += skipped
    images = out / "images"
    paths = {
        "planner_sft": write_planner_sft(out / "planner_sft.json", data.planner, image_dir=images),
        "critic_sft": write_critic_sft(out / "critic_sft.json", data.critic, image_dir=images),
        "critic_rl": write_critic_rl(out / "critic_rl.jsonl", data.rl, image_dir=images),
    }
    accepted = sum(example.verdict.accepted for example in data.critic)
    summary = {
        "tasks": len(train),
        "planner_sft": len(data.planner),
        "critic_sft": len(data.critic),
        "critic_accepts": accepted,
        "critic_rejects": len(data.critic) - accepted,
        "critic_rl": len(data.rl),
        "skipped": data.skipped[:20],
    }
    from ..core.files import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    paths["summary"] = out / "summary.json"
    return paths


def write_sets(
    out: str | Path,
    files: Sequence[str] = OFFICIAL_FILES,
    *,
    count: int = 200,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    max_steps: int | None = None,
    think_share: float = 1.0,
    brief: bool = False,
) -> dict[str, Path]:
    """Write ``count`` rows of each official file named in ``files`` into ``out`` (pictures in out/images).

    The rows are :func:`build`'s: Planner rows for the first train tasks of the stream fixed by ``seed``,
    Critic SFT and RL rows from the judged attempts of those tasks' rollouts, with pictures of ``size`` x
    ``size``. ``max_steps`` keeps only tasks of at most that many planned steps (shorter answers, for small
    models). With ``think_share`` below 1 only that share of the Critic answers keep their reasoning and the
    rest give the verdict alone: a model trained on them does not always reason, which GRPO with
    ``require_think`` can then teach it. ``brief`` cuts the reasoning kept to its conclusion, "Done." or
    "Not done.", so that a tiny model's answers stay a few dozen tokens long.

    This is the function a ``generated`` source of ``training/config.py`` calls.
    """
    from ..training.data import write_critic_rl, write_critic_sft, write_planner_sft

    unknown = sorted(set(files) - set(OFFICIAL_FILES))
    if unknown:
        raise ValueError(
            f"unknown file(s) {', '.join(unknown)}; the teacher writes {', '.join(OFFICIAL_FILES)}"
        )
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if not 0.0 <= think_share <= 1.0:
        raise ValueError(f"think_share must be from 0 to 1, got {think_share}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images"

    def stream() -> Iterator[Task]:
        tasks = iter_tasks("train", seed, size, size)
        return (task for task in tasks if max_steps is None or len(task.steps) <= max_steps)

    paths: dict[str, Path] = {}
    if "planner_sft.json" in files:
        tasks = list(itertools.islice(stream(), count))
        save_tasks(tasks, out / "tasks.jsonl")
        paths["planner_sft"] = write_planner_sft(
            out / "planner_sft.json", planner_examples(tasks), image_dir=images
        )
    if {"critic_sft.json", "critic_rl.jsonl"} & set(files):
        judged = _judged_attempts(stream(), out / "storyboards", count)
        sft, rl = relabel_critic(judged)
        rng = random.Random(f"sandbox-teacher:{seed}")
        sft = [replace(e, verdict=_reasoning(e.verdict, rng.random() < think_share, brief)) for e in sft]
        if "critic_sft.json" in files:
            paths["critic_sft"] = write_critic_sft(out / "critic_sft.json", sft, image_dir=images)
        if "critic_rl.jsonl" in files:
            paths["critic_rl"] = write_critic_rl(out / "critic_rl.jsonl", rl, image_dir=images)
    return paths


def _reasoning(verdict, think: bool, brief: bool):
    if not think:
        return replace(verdict, reasoning="")
    return replace(verdict, reasoning="Done." if verdict.accepted else "Not done.") if brief else verdict


def _judged_attempts(tasks: Iterator[Task], folder: Path, count: int) -> list:
    """The first ``count`` judged attempts of the rollouts of ``tasks``, rolled out a batch at a time."""
    from ..training.data import read_storyboards

    judged: list = []
    for batch in itertools.count():
        # A story gives about three judged attempts: half as many stories as rows missing rarely overshoot.
        chunk = [t for t in itertools.islice(tasks, max(4, (count - len(judged)) // 2)) if t.makes_images]
        if chunk:
            found, _ = read_storyboards(rollouts(chunk, folder / f"batch{batch}"), "critic")
            judged += found
        if len(judged) >= count:
            return judged[:count]


def tokenizer_text(count: int = 300, seed: int = 0) -> list[str]:
    """Sandbox text for a tiny agent's tokenizer (``build_tiny_agent(extra_text=...)``): the vocabulary, the
    closing clauses and a sample of requests, plans and verdicts."""
    from .oracle import answer

    lines = [
        " ".join(SHAPES),
        " ".join(COLOURS),
        " ".join(SIZES),
        ", ".join(PLACES),
        KEEP,
        NOTHING_ELSE,
        "to the left of, to the right of, above, below, the same colour as, two objects:, three objects:",
        "Seen: nothing. Asked: draw add move remove make. Expected: a an. Done. Not done. no change",
    ]
    for task in make_tasks("train", count, seed=seed):
        lines.append(task.instruction)
        plan, reasoning = plan_for(read_request(task.instruction), task.input_images())
        lines.append(answer(reasoning, plan.to_dict()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write sandbox teacher data (Planner SFT, Critic SFT, Critic RL)."
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--tasks", type=int, default=1000, help="train tasks (default 1000)")
    parser.add_argument(
        "--long-tasks",
        type=int,
        default=0,
        help=f"also this many train tasks of {LONG_SHAPE.steps[0]}-{LONG_SHAPE.steps[1]} steps with up to "
        f"{LONG_SHAPE.max_objects} objects (default 0)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="rollouts per task, each with its own seed (default 1)"
    )
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the task generator (default 0)")
    parser.add_argument(
        "--from-storyboards",
        action="append",
        default=[],
        metavar="DIR",
        help="also learn from storyboards saved by any agents (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.seeds < 1 or args.long_tasks < 0:
        parser.error("--tasks and --seeds must be at least 1, --long-tasks at least 0")
    for folder in args.from_storyboards:
        if not Path(folder).is_dir():
            parser.error(f"--from-storyboards: not a folder: {folder}")
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        progress = lambda items: tqdm(items, desc="rollouts", unit="story", file=sys.stderr)  # noqa: E731
    paths = build(
        args.out,
        tasks=args.tasks,
        long_tasks=args.long_tasks,
        seeds=args.seeds,
        task_seed=args.task_seed,
        from_storyboards=args.from_storyboards,
        progress=progress,
    )
    print(paths["summary"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "LONG_SHAPE",
    "OFFICIAL_FILES",
    "build",
    "planner_examples",
    "relabel_critic",
    "relabel_planner",
    "rollouts",
    "tokenizer_text",
    "write_sets",
]
