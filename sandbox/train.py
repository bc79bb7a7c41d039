"""Train the sandbox's tiny Planner and Critics with the project's own SFT and GRPO scripts.

    python -m interleave_thinker.sandbox.train --work runs/sandbox --install

runs these steps, each a command of its own (printed as it runs, so any step can be repeated by hand):

1. ``python -m interleave_thinker.sandbox.teacher --out WORK/data ...``: the oracle's teacher data;
2. the tiny base model: ``build_tiny_agent`` with a tokenizer trained on sandbox text;
3. ``python -m interleave_thinker.training.sft --config sandbox/agents/recipes/planner_sft.yaml``;
4. ``python -m interleave_thinker.training.sft --config sandbox/agents/recipes/critic_sft.yaml``;
5. ``python -m interleave_thinker.training.grpo --config sandbox/agents/recipes/critic_grpo.yaml``
   (starting from the SFT Critic, with the sandbox generator and the oracle judge in the reward);
6. ``interleave-thinker eval`` on the test split: the Critics behind the oracle Planner (``WORK/eval-critic``)
   and the Planner alone (``WORK/eval-planner``).

``--install`` copies the three ``final/`` folders to ``sandbox/agents/{planner,critic-sft,critic-grpo}``,
where ``demo`` and ``eval`` find them. ``--short`` runs every step on little data for a few steps: it checks
the whole path, not the quality of the result.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .shipped import AGENTS_DIR, SHIPPED

RECIPES = AGENTS_DIR / "recipes"
BASE = {"hidden_size": 64, "layers": 2, "heads": 4, "vocab_size": 1024, "seed": 0}
# The quick version: the same scripts and recipes on little data for a few steps; it checks the whole path.
SHORT = {"tasks": 40, "planner_steps": 3, "critic_steps": 3, "grpo_steps": 1, "eval_tasks": 3,
         "max_new_tokens": 48}
FULL = {"tasks": 1000, "planner_steps": None, "critic_steps": None, "grpo_steps": None, "eval_tasks": 100,
        "max_new_tokens": 400}


def _run(command: list[str], log: Path) -> None:
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
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


def train(work: str | Path, *, short: bool = False, install: bool = False, seed: int = 0) -> dict[str, str]:
    """Run every step into ``work``; return the evaluation tables of the Critics and of the Planner."""
    work = Path(work)
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
            "--quiet",
        ],
        logs / "teacher.log",
    )
    base = build_base(work / "base", seed=seed)
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
    if install:
        for name, final in finals.items():
            target = AGENTS_DIR / SHIPPED[name]
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(final, target)
            print(f"installed {final} -> {target}", flush=True)
    return {
        name: (work / f"eval-{name}" / "table.md").read_text(encoding="utf-8")
        for name in ("critic", "planner")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/sandbox", help="folder for data, runs and logs")
    parser.add_argument("--short", action="store_true", help="the quick version (tests use it)")
    parser.add_argument("--install", action="store_true", help="copy the trained agents to sandbox/agents/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tables = train(args.work, short=args.short, install=args.install, seed=args.seed)
    print("Critics (oracle Planner):\n" + tables["critic"] + "\nPlanner (no Critic):\n" + tables["planner"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
