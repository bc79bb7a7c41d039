"""The sandbox's subcommands ``demo`` and ``eval`` and its ``sandbox`` generator, added to the engine CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import cli as core_cli
from ..core.cli import EXIT_OK, UsageError


def _progress(quiet: bool, label: str):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda items: tqdm(
        items, desc=label, unit="task", file=sys.stderr, leave=False, dynamic_ncols=True
    )


def _agent_options(args: argparse.Namespace, model: str | None):
    from .shipped import AgentOptions

    return AgentOptions(
        model=model,
        api_key_env=getattr(args, "api_key_env", None),
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )


def _load(spec: str, role: str, args: argparse.Namespace, model: str | None):
    from .shipped import SpecError, load

    try:
        return load(spec, role, _agent_options(args, model))
    except SpecError as error:
        raise UsageError(str(error)) from None


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
        raise UsageError(f"--tasks must be at least 1, got {args.tasks}")
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
    from .shipped import default_critics, default_planner, label
    from .tasks import TaskError, load_tasks, make_tasks

    if args.tasks < 1:
        raise UsageError(f"--tasks must be at least 1, got {args.tasks}")
    try:
        tasks = (
            load_tasks(args.tasks_file)
            if args.tasks_file
            else make_tasks(args.split, args.tasks, seed=args.task_seed)
        )
    except TaskError as error:
        raise UsageError(str(error)) from None
    planner_spec = args.planner or default_planner()
    planner = _load(planner_spec, "planner", args, args.planner_model)
    critics = args.critic or default_critics()
    reports = []
    for spec in critics:
        critic = _load(spec, "critic", args, args.critic_model)
        keep = None
        if args.save_storyboards:
            folder = Path(args.out) / "storyboards" / label(spec).replace(" ", "-")
            keep = lambda task, story, folder=folder: story.save(folder / task.id, overwrite=True)  # noqa: E731
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
            )
        )
    table = format_table(reports)
    source = args.tasks_file or f"{args.split} split, {len(tasks)} tasks"
    print(
        f"Planner: {label(planner_spec, 'planner')} ({getattr(planner, 'name', planner_spec)}); "
        f"tasks: {source}; "
        f"max attempts {args.max_attempts}; seed {args.seed}\n"
    )
    print(table)
    paths = write_reports(reports, args.out)
    plot = paths["plot"] or "no plot (install matplotlib: pip install 'comfyui-interleave-thinker[train]')"
    print(f"\n-> {paths['table']}, {paths['results']}, {plot}")
    return EXIT_OK


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
        raise UsageError(f"--storyboards: not found: {args.storyboards}")
    if not find_storyboards(args.storyboards):
        raise UsageError(f"--storyboards: no storyboard.json in or below {args.storyboards}")
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
    parser.add_argument("--max-attempts", type=int, default=3, help="generations per step (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs (default 0)")
    parser.add_argument("--planner-model", metavar="NAME", help="model name served at a --planner URL")
    parser.add_argument("--critic-model", metavar="NAME", help="model name served at a --critic URL")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding an endpoint's API key"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=400, help="bound on each agent answer (default 400)"
    )
    parser.add_argument("--device", default="auto", help="device for local agents: auto, cpu, cuda, mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the offline sandbox demo",
        description="Run a handful of sandbox test tasks through the full refine loop, offline, and write "
        "browsable storyboards with an index.html. Uses the shipped tiny agents when they are "
        "installed, else the sandbox's oracle agents (labelled as such).",
    )
    demo.add_argument(
        "--out", default="interleave-demo", metavar="DIR", help="output folder (default ./interleave-demo)"
    )
    demo.add_argument("--tasks", type=int, default=4, help="how many test tasks (default 4)")
    demo.add_argument("--planner", metavar="SPEC", help="oracle, shipped, a model folder or a URL")
    demo.add_argument("--critic", metavar="SPEC", help="oracle, sft, grpo, none, a model folder or a URL")
    _common(demo)
    demo.set_defaults(handler=_guard(cmd_demo))

    ev = sub.add_parser(
        "eval",
        help="measure Planner and Critic in the sandbox, or score saved storyboards",
        description="Run a sandbox task split with each Critic and print valid-plan rate, step and story "
        "success, attempts per step and Critic verdict accuracy; write table.md, results.json and "
        "plot.png. With --storyboards, score saved storyboards step by step with a judge instead.",
    )
    ev.add_argument("--split", default="test", choices=("train", "test"), help="task split (default test)")
    ev.add_argument("--tasks", type=int, default=200, help="how many tasks of the split (default 200)")
    ev.add_argument("--tasks-file", metavar="JSONL", help="tasks saved by the sandbox instead of a split")
    ev.add_argument("--task-seed", type=int, default=0, help="seed of the task generator (default 0)")
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
    ev.set_defaults(handler=_guard(cmd_eval))


def _guard(handler):
    """Turn sandbox errors into the engine's bad-input exit."""

    def run(args):
        from .language import LanguageError
        from .world import WorldError

        if not 1 <= args.max_attempts <= 10:
            raise UsageError(f"--max-attempts must be between 1 and 10, got {args.max_attempts}")
        if not 1 <= args.max_new_tokens <= 32768:
            raise UsageError(f"--max-new-tokens must be between 1 and 32768, got {args.max_new_tokens}")
        if args.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {args.seed}")
        if getattr(args, "api_key_env", None):
            import os

            if not os.environ.get(args.api_key_env):
                raise UsageError(f"--api-key-env: environment variable {args.api_key_env} is not set")
        try:
            return handler(args)
        except (WorldError, LanguageError) as error:
            raise UsageError(str(error)) from None

    return run


_REGISTERED = False


def _sandbox_generator(args: argparse.Namespace):
    """``--generator sandbox``: the procedural generator with its default failure model."""
    from .generator import SandboxGenerator

    return SandboxGenerator()


def install() -> None:
    """Add demo, eval and the 'sandbox' generator to the engine CLI (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    core_cli._EXTRA_COMMANDS.append(register)
    core_cli.register_generator("sandbox", _sandbox_generator)
    _REGISTERED = True


__all__ = ["cmd_demo", "cmd_eval", "install", "register"]
