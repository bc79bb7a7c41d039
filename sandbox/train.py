"""Train the sandbox's tiny Planner and Critics with the project's own SFT and GRPO scripts.

    python -m interleave_thinker.sandbox.train --work runs/sandbox --install

runs these steps, each a command of its own (printed as it runs, so any step can be repeated by hand):

1. ``python -m interleave_thinker.sandbox.teacher --out WORK/data ...``: the teacher data;
2. the tiny base model: ``build_tiny_agent`` with a tokenizer trained on sandbox text;
3. ``python -m interleave_thinker.training.sft --config sandbox/agents/recipes/planner_sft.yaml``;
4. ``python -m interleave_thinker.training.sft --config sandbox/agents/recipes/critic_sft.yaml``;
5. ``python -m interleave_thinker.training.grpo --config sandbox/agents/recipes/critic_grpo.yaml``
   (starting from the SFT Critic, with the sandbox generator and the oracle judge in the reward);
6. ``interleave-thinker eval`` on the test split: the Critics behind the oracle Planner (``WORK/eval-critic``)
   and the Planner alone (``WORK/eval-planner``).

``--install`` copies the three ``final/`` folders to ``sandbox/agents/{planner,critic-sft,critic-grpo}``,
where ``demo`` and ``eval`` find them, then runs the short version too (``WORK/short``) and records the
headline metrics of both in ``sandbox/agents/metrics.json``. ``--short`` runs every step on less data for
fewer steps (a few minutes) and says whether its metrics land within ``BAND`` of the recorded short run:
retraining reproduces the shipped agents. ``--resume`` skips the steps whose output is already in the work
folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..core.files import atomic_write_text
from .shipped import AGENTS_DIR, MAX_NEW_TOKENS, SHIPPED

RECIPES = AGENTS_DIR / "recipes"
# About 1.2 M parameters (5 MB). The templates' fixed text is one token per line, so a Critic prompt is about
# 60 tokens instead of 700 and a CPU trains on what varies. Untied embeddings: tied ones let words a tiny
# model cannot predict yet (colours, shapes) collapse to one vector early on, and then it can no longer copy
# them.
# The vision tower stays random and frozen (the recipes say freeze_vision: true), with a unit-scale position
# embedding so that each cell's token says where it is: trained along with the language model, the random
# tower collapsed every cell to the same vector within a few hundred steps and the agents could not see.
BASE = {
    "hidden_size": 128,
    "layers": 4,
    "heads": 4,
    "vocab_size": 1024,
    "seed": 0,
    "template_tokens": True,
    "vision_hidden_size": 64,
    "vision_depth": 2,
    "tie_embeddings": False,
    "vision_position_scale": 1.0,
}
# The short version: the same scripts and recipes on less data for fewer steps (about 10 minutes). A test
# retrains it and checks its metrics against those recorded when the shipped agents were installed.
SHORT = {
    "tasks": 400,
    "long_tasks": 100,
    "planner_steps": 150,
    "critic_steps": 800,
    "grpo_steps": 4,
    "eval_tasks": 20,
    "max_new_tokens": 400,
}
FULL = {
    "tasks": 4000,
    "long_tasks": 1000,
    "planner_steps": None,
    "critic_steps": None,
    "grpo_steps": None,
    "eval_tasks": 100,
    "max_new_tokens": MAX_NEW_TOKENS,
}
RECORD = AGENTS_DIR / "metrics.json"
# How far a rate of a retrained short run may land from the recorded one. Training on a CPU is deterministic
# for one torch build and thread count; the band absorbs what another build or core count changes (a greedy
# answer that flips on one token moves a rate of 20 tasks by a few points).
BAND = 0.10


def _run(command: list[str], log: Path, done: Path | None = None) -> None:
    """Run one step; with ``done`` (the step's output) already there, only say so: a resumed run skips it."""
    line = " ".join(shlex.quote(part) for part in command)
    if done is not None and done.exists():
        print(f"(done, {done} exists) $ {line}", flush=True)
        return
    print("$ " + line, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"step failed (exit {result.returncode}); log {log}:\n{tail}")


def _train(script: str, recipe: str, work: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        f"interleave_thinker.training.{script}",
        "--config",
        str(RECIPES / recipe),
    ] + [item for override in overrides for item in ("--set", override)]


def _source(path: Path, image_dir: Path, fmt: str = "sharegpt") -> str:
    return json.dumps([{"format": fmt, "path": str(path), "image_dir": str(image_dir)}])


def build_base(out: Path, **overrides) -> Path:
    from ..training.tiny import build_tiny_agent
    from .teacher import tokenizer_text

    settings = {**BASE, **overrides}
    return build_tiny_agent(out, extra_text=tokenizer_text(), **settings)


def train(
    work: str | Path,
    *,
    short: bool = False,
    install: bool = False,
    resume: bool = False,
    seed: int = 0,
) -> dict:
    """Run every step into ``work``; return the evaluation tables of the Critics and of the Planner
    (``critic``, ``planner``) and the headline ``metrics``. With ``resume``, steps whose output exists are not
    run again (the evaluations always run)."""
    work = Path(work)

    def done(path: Path) -> Path | None:
        return path if resume else None

    plan = SHORT if short else FULL
    data = work / "data"
    logs = work / "logs"
    _run(
        [
            sys.executable,
            "-m",
            "interleave_thinker.sandbox.teacher",
            "--out",
            str(data),
            "--tasks",
            str(plan["tasks"]),
            "--long-tasks",
            str(plan["long_tasks"]),
            "--quiet",
        ],
        logs / "teacher.log",
        done(data / "summary.json"),
    )
    base = work / "base"
    if not (resume and (base / "config.json").exists()):
        build_base(base, seed=seed)
    print(f"tiny base model -> {base}", flush=True)

    def steps(key: str) -> list[str]:
        return [f"trainer.max_steps={plan[key]}"] if plan[key] else []

    common = [f"seed={seed}"]
    _run(
        _train(
            "sft",
            "planner_sft.yaml",
            work,
            common
            + steps("planner_steps")
            + [
                f"model={base}",
                f"output_dir={work / 'planner-sft'}",
                f"data.train={_source(data / 'planner_sft.json', data)}",
            ],
        ),
        logs / "planner_sft.log",
        done(work / "planner-sft" / "final"),
    )
    _run(
        _train(
            "sft",
            "critic_sft.yaml",
            work,
            common
            + steps("critic_steps")
            + [
                f"model={base}",
                f"output_dir={work / 'critic-sft'}",
                f"data.train={_source(data / 'critic_sft.json', data)}",
            ],
        ),
        logs / "critic_sft.log",
        done(work / "critic-sft" / "final"),
    )
    _run(
        _train(
            "grpo",
            "critic_grpo.yaml",
            work,
            common
            + steps("grpo_steps")
            + [
                f"model={work / 'critic-sft' / 'final'}",
                f"output_dir={work / 'critic-grpo'}",
                f"data.train={_source(data / 'critic_rl.jsonl', data, 'critic_rl')}",
            ],
        ),
        logs / "critic_grpo.log",
        done(work / "critic-grpo" / "final"),
    )
    finals = {
        "shipped": work / "planner-sft" / "final",
        "sft": work / "critic-sft" / "final",
        "grpo": work / "critic-grpo" / "final",
    }
    # The Critics are measured behind the oracle Planner, so a weak Planner does not hide what they do;
    # the Planner is measured on its own, without a Critic.
    tasks = ["--tasks", str(plan["eval_tasks"]), "--max-new-tokens", str(plan["max_new_tokens"]), "--quiet"]
    _run(
        [
            sys.executable,
            "-m",
            "interleave_thinker",
            "eval",
            "--planner",
            "oracle",
            "--critic",
            "none",
            "--critic",
            str(finals["sft"]),
            "--critic",
            str(finals["grpo"]),
            "--out",
            str(work / "eval-critic"),
        ]
        + tasks,
        logs / "eval_critic.log",
    )
    _run(
        [
            sys.executable,
            "-m",
            "interleave_thinker",
            "eval",
            "--planner",
            str(finals["shipped"]),
            "--critic",
            "none",
            "--out",
            str(work / "eval-planner"),
        ]
        + tasks,
        logs / "eval_planner.log",
    )
    metrics = summarise(work)
    atomic_write_text(work / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if install:
        short_run = train(work / "short", short=True, resume=resume, seed=seed)
        for name, final in finals.items():
            target = AGENTS_DIR / SHIPPED[name]
            staging = target.with_name(target.name + ".new")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(final, staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            print(f"installed {final} -> {target}", flush=True)
        record = {"seed": seed, "full": metrics, "short": short_run["metrics"]}
        atomic_write_text(RECORD, json.dumps(record, indent=1) + "\n")
        print(f"metrics -> {RECORD}", flush=True)
    tables = {
        name: (work / f"eval-{name}" / "table.md").read_text(encoding="utf-8")
        for name in ("critic", "planner")
    }
    return {**tables, "metrics": metrics}


def summarise(work: str | Path) -> dict[str, float | None]:
    """The headline metrics of a run: the Planner alone, and no Critic / SFT / GRPO behind the oracle Planner.
    A rate with nothing to count (no judged attempt) is None."""
    work = Path(work)
    critics = json.loads((work / "eval-critic" / "results.json").read_text(encoding="utf-8"))
    (planner,) = json.loads((work / "eval-planner" / "results.json").read_text(encoding="utf-8"))
    none, sft, grpo = critics
    return {
        "planner valid-plan rate": planner["valid_plan_rate"],
        "planner story success": planner["story_success"],
        "no critic step success": none["step_success"],
        "SFT critic step success": sft["step_success"],
        "SFT critic verdict accuracy": sft["verdict_accuracy"],
        "GRPO critic step success": grpo["step_success"],
        "GRPO critic verdict accuracy": grpo["verdict_accuracy"],
    }


def recorded(which: str = "short", seed: int = 0) -> dict[str, float | None] | None:
    """The metrics recorded when the shipped agents were installed (``full`` or ``short``), if any were
    recorded with this seed."""
    if not RECORD.is_file():
        return None
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    return record.get(which) if record.get("seed") == seed else None


def compare(
    measured: dict, reference: dict, band: float = BAND
) -> list[tuple[str, float | None, float | None, bool]]:
    """(metric, reference, measured, within band) for every recorded metric."""
    rows = []
    for name, want in reference.items():
        got = measured.get(name)
        if want is None or got is None:
            rows.append((name, want, got, want is None and got is None))
        else:
            rows.append((name, want, got, abs(got - want) <= band + 1e-9))
    return rows


def comparison_table(rows) -> str:
    def rate(value):
        return "–" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"| metric | recorded | this run | within ±{round(100 * BAND)} points |",
        "|---|---:|---:|---|",
    ]
    lines += [
        f"| {name} | {rate(want)} | {rate(got)} | {'yes' if ok else 'NO'} |" for name, want, got, ok in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        help="folder for data, runs and logs (default runs/sandbox, or runs/sandbox-short with --short)",
    )
    parser.add_argument("--short", action="store_true", help="the quick version (tests use it)")
    parser.add_argument("--install", action="store_true", help="copy the trained agents to sandbox/agents/")
    parser.add_argument(
        "--resume", action="store_true", help="skip the steps whose output is already in --work"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.install and args.short:
        parser.error("--install ships agents of the full recipe; leave out --short")
    work = args.work or ("runs/sandbox-short" if args.short else "runs/sandbox")
    result = train(work, short=args.short, install=args.install, resume=args.resume, seed=args.seed)
    print("Critics (oracle Planner):\n" + result["critic"] + "\nPlanner (no Critic):\n" + result["planner"])
    reference = recorded("short", args.seed) if args.short else None
    if reference:
        rows = compare(result["metrics"], reference)
        print(
            f"\nAgainst the short run recorded with the shipped agents ({RECORD}):\n" + comparison_table(rows)
        )
        if not all(ok for *_, ok in rows):
            print("Some metrics left the band: this run does not reproduce the recorded one.")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
