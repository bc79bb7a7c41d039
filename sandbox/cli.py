"""The sandbox's commands ``demo`` and ``eval`` and its ``sandbox`` generator, for the ``interleave-thinker``
program (``interleave_thinker/cli.py`` lists them beside the engine's ``run`` and ``batch``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import settings
from ..core.cli import (
    EXIT_OK,
    Command,
    add_step_choices,
    check_agent_options,
    endpoint_policy,
    quiet_libraries,
)
from ..core.errors import BadInput
from ..core.stories import safe_id
from .shipped import MAX_NEW_TOKENS
from .tasks import CAST_DRIFT, CAST_STEPS
from .tasks import MAX_OBJECTS as DEFAULT_MAX_OBJECTS


def _progress(quiet: bool, label: str):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda items: tqdm(
        items, desc=label, unit="task", file=sys.stderr, leave=False, dynamic_ncols=True
    )


def _agent_options(args: argparse.Namespace, spec: str, model: str | None):
    from .shipped import AgentOptions

    return AgentOptions(
        model=model,
        api_key_env=getattr(args, "api_key_env", None),
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        policy=endpoint_policy(args, spec),  # the URL was typed by the person running the command
    )


def _load(spec: str, role: str, args: argparse.Namespace, model: str | None):
    from .shipped import SpecError, load

    try:
        return load(spec, role, _agent_options(args, spec, model))
    except SpecError as error:
        raise BadInput(str(error)) from None


def _agent_labels(planner_spec: str, critic_spec: str, planner, critic) -> dict[str, str]:
    def describe(spec, agent):
        if agent is None:
            return "none: every first attempt is kept"
        name = getattr(agent, "name", spec)
        if spec == "oracle":
            return f"{name} (oracle: the sandbox's teacher, which reads the pixels; not a trained model)"
        return f"{name} ({spec})"

    return {
        "Planner": describe(planner_spec, planner),
        "Critic": describe(critic_spec, critic),
        "generator": "sandbox (procedural; vague prompts fail with known probabilities)",
    }


# ---------------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_tasks, run_demo
    from .shipped import default_demo_critic, default_planner

    if args.tasks < 1:
        raise BadInput(f"--tasks must be at least 1, got {args.tasks}")
    planner_spec = args.planner or default_planner()
    critic_spec = args.critic or default_demo_critic()
    planner = _load(planner_spec, "planner", args, args.planner_model)
    critic = _load(critic_spec, "critic", args, args.critic_model)
    labels = _agent_labels(planner_spec, critic_spec, planner, critic)
    index, stories = run_demo(
        args.out,
        planner,
        critic,
        tasks=demo_tasks(args.tasks),
        labels=labels,
        seed=args.seed,
        max_attempts=args.max_attempts,
        progress=_progress(args.quiet, "demo"),
    )
    right = sum(sum(s.result.steps) for s in stories)
    total = sum(len(s.result.steps) for s in stories)
    for role, text in labels.items():
        print(f"{role}: {text}")
    print(f"{len(stories)} stories, {right} of {total} steps right (oracle-judged) -> {index}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# eval


def cmd_eval(args: argparse.Namespace) -> int:
    if args.storyboards:
        return _eval_storyboards(args)
    from .evaluate import evaluate, format_table, write_reports
    from .generator import FailureModel, SandboxGenerator
    from .shipped import default_critics, default_planner, label
    from .tasks import DEFAULT_SHAPE, StoryShape, TaskError, cast_tasks, load_tasks, make_tasks

    if args.tasks < 1:
        raise BadInput(f"--tasks must be at least 1, got {args.tasks}")
    if args.cast and args.tasks_file:
        raise BadInput("--cast makes its own tasks: leave out --tasks-file")
    drift = args.drift if args.drift is not None else (CAST_DRIFT if args.cast else 0.0)
    if not 0.0 <= drift <= 1.0:
        raise BadInput(f"--drift must be a probability in [0, 1], got {drift}")
    try:
        shape = StoryShape.parse(args.steps, args.max_objects) if args.steps else DEFAULT_SHAPE
        if args.steps and (args.cast or args.tasks_file):
            raise TaskError("--steps and --max-objects shape a split: leave out --cast and --tasks-file")
        if args.cast:
            tasks = cast_tasks(args.tasks, seed=args.task_seed)
        elif args.tasks_file:
            tasks = load_tasks(args.tasks_file)
        else:
            tasks = make_tasks(args.split, args.tasks, seed=args.task_seed, shape=shape)
    except TaskError as error:
        raise BadInput(str(error)) from None
    if args.references and not any(task.cast for task in tasks):
        raise BadInput("--references gives each story its cast pictures: only the --cast suite has a cast")
    generator = SandboxGenerator(FailureModel(drift=drift))
    planner_spec = args.planner or default_planner()
    planner = _load(planner_spec, "planner", args, args.planner_model)
    critics = args.critic or default_critics()
    reports = []
    for spec in critics:
        critic = _load(spec, "critic", args, args.critic_model)
        keep = None
        if args.save_storyboards:
            keep = _keeper(Path(args.out) / "storyboards" / safe_id(label(spec)))
        reports.append(
            evaluate(
                tasks,
                planner,
                critic,
                name=label(spec),
                max_attempts=args.max_attempts,
                seed=args.seed,
                progress=_progress(args.quiet, label(spec)),
                keep=keep,
                keep_attempt=args.keep_attempt,
                generator=generator,
                references=args.references,
                anchor=args.anchor,
            )
        )
    table = format_table(reports)
    if args.cast:
        source = f"cast suite, {len(tasks)} stories of {CAST_STEPS} steps"
    else:
        source = args.tasks_file or f"{args.split} split, {len(tasks)} tasks"
        if shape != DEFAULT_SHAPE:
            low, high = shape.steps
            source += f" of {low}-{high} steps, up to {shape.max_objects} objects, task seed {args.task_seed}"
    extras = "".join(
        part
        for part in (
            f"; drift {drift:g}" if drift else "",
            "; references on" if args.references else "",
            f"; anchor {args.anchor}" if args.anchor != settings.ANCHOR_NONE else "",
            f"; keep {args.keep_attempt}" if args.keep_attempt != settings.DEFAULT_KEEP else "",
        )
    )
    print(
        f"Planner: {label(planner_spec, 'planner')} ({getattr(planner, 'name', planner_spec)}); "
        f"tasks: {source}; "
        f"max attempts {args.max_attempts}; seed {args.seed}{extras}\n"
    )
    print(table)
    paths = write_reports(reports, args.out)
    plot = paths["plot"] or "no plot (install matplotlib: pip install 'interleave-thinker[train]')"
    print(f"\n-> {paths['table']}, {paths['results']}, {plot}")
    return EXIT_OK


def _keeper(folder: Path):
    """Save each task's storyboard in ``folder``, under its id, never outside it."""

    def keep(task, story) -> None:
        try:
            clean = safe_id(task.id)
        except ValueError as error:
            raise BadInput(f"task {task.id!r}: {error}") from None
        if clean != task.id:  # a folder name of its own: no "..", no slashes
            raise BadInput(f"task id {task.id!r} is not a folder name; {clean!r} would be")
        story.save(folder / clean, overwrite=True, pages=False)

    return keep


def _eval_storyboards(args: argparse.Namespace) -> int:
    from .rubric import (
        AgentRubricJudge,
        OracleRubricJudge,
        find_storyboards,
        format_scores,
        score_storyboards,
        write_scores,
    )

    if not Path(args.storyboards).exists():
        raise BadInput(f"--storyboards: not found: {args.storyboards}")
    if not find_storyboards(args.storyboards):
        raise BadInput(f"--storyboards: no storyboard.json in or below {args.storyboards}")
    if args.judge == "oracle":
        judge = OracleRubricJudge()
    else:
        judge = AgentRubricJudge(_load(args.judge, "critic", args, args.judge_model))
    scores = score_storyboards(args.storyboards, judge, _progress(args.quiet, "storyboards"))
    print(format_scores(scores, judge.name))
    path = write_scores(scores, Path(args.out) / "scores.json")
    print(f"\n-> {path}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# registration


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=settings.DEFAULT_MAX_ATTEMPTS,
        help=f"generations per step (default {settings.DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=settings.DEFAULT_SEED,
        help=f"seed of the runs (default {settings.DEFAULT_SEED})",
    )
    parser.add_argument("--planner-model", metavar="NAME", help="model name served at a --planner URL")
    parser.add_argument("--critic-model", metavar="NAME", help="model name served at a --critic URL")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding an endpoint's API key"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=MAX_NEW_TOKENS,
        help=f"bound on each agent answer (default {MAX_NEW_TOKENS}: sandbox answers are short)",
    )
    parser.add_argument(
        "--device", default=settings.DEFAULT_DEVICE, help="device for local agents: auto, cpu, cuda, mps"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _configure_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--out", default="interleave-demo", metavar="DIR", help="output folder (default ./interleave-demo)"
    )
    demo.add_argument("--tasks", type=int, default=4, help="how many test tasks (default 4)")
    demo.add_argument("--planner", metavar="SPEC", help="oracle, shipped, a model folder or a URL")
    demo.add_argument("--critic", metavar="SPEC", help="oracle, sft, grpo, none, a model folder or a URL")
    _common(demo)


def _configure_eval(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--split", default="test", choices=("train", "test"), help="task split (default test)")
    ev.add_argument("--tasks", type=int, default=200, help="how many tasks of the split (default 200)")
    ev.add_argument("--tasks-file", metavar="JSONL", help="tasks saved by the sandbox instead of a split")
    ev.add_argument("--task-seed", type=int, default=0, help="seed of the task generator (default 0)")
    ev.add_argument(
        "--steps",
        metavar="MIN-MAX",
        help="make the split's stories this long instead (e.g. 5-6; the default split's are 2-4)",
    )
    ev.add_argument(
        "--max-objects",
        type=int,
        default=DEFAULT_MAX_OBJECTS,
        metavar="N",
        help=f"with --steps: scenes hold up to N objects (default {DEFAULT_MAX_OBJECTS})",
    )
    ev.add_argument(
        "--planner",
        metavar="SPEC",
        help="oracle, shipped, a model folder or a URL (default: shipped if installed, else oracle)",
    )
    ev.add_argument(
        "--critic",
        action="append",
        metavar="SPEC",
        help="none, oracle, sft, grpo, a model folder or a URL; repeat to compare side by side "
        "(default: none, oracle, and the shipped sft and grpo critics)",
    )
    ev.add_argument(
        "--out", default="interleave-eval", metavar="DIR", help="output folder (default ./interleave-eval)"
    )
    add_step_choices(ev)
    ev.add_argument(
        "--cast",
        action="store_true",
        help=f"the cast suite: {CAST_STEPS}-step stories whose two first objects must keep their colour and "
        f"shape, drawn by a generator whose edits drift (--drift, default {CAST_DRIFT:g} here)",
    )
    ev.add_argument(
        "--references", action="store_true", help="give each cast story its cast pictures as references"
    )
    ev.add_argument(
        "--drift",
        type=float,
        metavar="P",
        help="chance that an edit changes an object it was not asked to touch (default 0; cast suite "
        f"{CAST_DRIFT:g})",
    )
    ev.add_argument(
        "--save-storyboards", action="store_true", help="also save every storyboard under OUT/storyboards"
    )
    ev.add_argument(
        "--storyboards", metavar="DIR", help="score the storyboards in DIR instead of running tasks"
    )
    ev.add_argument(
        "--judge",
        default="oracle",
        metavar="SPEC",
        help="judge for --storyboards: oracle (sandbox pictures), a VLM folder or a URL",
    )
    ev.add_argument("--judge-model", metavar="NAME", help="model name served at a --judge URL")
    _common(ev)


def _guard(handler):
    """Check the shared options first, and turn the sandbox's own errors into the engine's bad input."""

    def run(args):
        from .language import LanguageError
        from .world import WorldError

        settings.check_range("--max-attempts", args.max_attempts, 1, settings.MAX_ATTEMPTS_LIMIT)
        settings.check_range("--seed", args.seed, 0, settings.SEED_MAX)
        check_agent_options(args)
        if args.quiet:
            quiet_libraries()
        try:
            return handler(args)
        except (WorldError, LanguageError) as error:
            raise BadInput(str(error)) from None

    return run


def _sandbox_generator(args: argparse.Namespace):
    """``--generator sandbox``: the procedural generator with its default failure model."""
    from .generator import SandboxGenerator

    return SandboxGenerator()


GENERATORS = {"sandbox": _sandbox_generator}
COMMANDS = [
    Command(
        "demo",
        "run the offline sandbox demo",
        "Run a handful of sandbox test tasks through the full refine loop, offline, and write browsable "
        "storyboards with an index.html. Uses the shipped tiny agents when they are installed, else the "
        "sandbox's oracle agents (labelled as such).",
        _configure_demo,
        _guard(cmd_demo),
    ),
    Command(
        "eval",
        "measure Planner and Critic in the sandbox, or score saved storyboards",
        "Run a sandbox task split with each Critic and print valid-plan rate, step and story success, "
        "attempts per step and Critic verdict accuracy; write table.md, results.json and plot.png. With "
        "--storyboards, score saved storyboards step by step with a judge instead.",
        _configure_eval,
        _guard(cmd_eval),
    ),
]

__all__ = ["COMMANDS", "GENERATORS", "cmd_demo", "cmd_eval"]
