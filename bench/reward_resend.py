"""Does the Critic's GRPO reward pay for the fix or for the luck?

    python bench/reward_resend.py [--rows 400] [--data-seed 0] [--weights recipe|paper]

On the sandbox teacher's Critic RL rows (``sandbox.teacher.write_sets``), every row whose picture the oracle
marks wrong gets two completions that both reject it: one re-sends the very prompt that failed, one writes the
oracle's precise prompt. Both are scored with the sandbox generator and the oracle judge, as the tiny GRPO
profiles do, under the reward's settings before (one fixed seed, the rejected picture as the baseline: the
paper's) and now (the defaults: several seeds, the failed prompt re-sent under the same seeds as the
baseline). The table gives each mean reward, the mean gap, and on how many rows re-sending earned at least as
much as the precise prompt: those rows tell GRPO nothing, or the wrong thing. Wall time is given as a ratio
to the one-seed setting measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

WEIGHTS = {
    "recipe": {"format": 0.5, "accuracy": 0.3, "semantics": 0.15, "quality": 0.05},  # sandbox/agents/recipes
    "paper": {"format": 0.5, "accuracy": 0.1, "semantics": 0.3, "quality": 0.1},
}
SETTINGS = [  # (label, samples, baseline)
    ("one seed, rejected picture (before)", 1, "rejected"),
    ("4 seeds, rejected picture", 4, "rejected"),
    ("4 seeds, re-sent prompt (default)", 4, "resend"),
    ("8 seeds, re-sent prompt", 8, "resend"),
]


def reject(prompt: str) -> str:
    verdict = {"previous_step_success": False, "refine_prompt": prompt}
    return f"<think>Not done.</think><answer>{json.dumps(verdict)}</answer>"


def main(argv=None) -> int:
    from interleave_thinker.sandbox.generator import SandboxGenerator
    from interleave_thinker.sandbox.grading import SandboxJudge
    from interleave_thinker.sandbox.oracle import verdict_for
    from interleave_thinker.sandbox.teacher import write_sets
    from interleave_thinker.training.data import load_image, read_critic_rl
    from interleave_thinker.training.rewards import CriticReward, RewardWeights, StepCase

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="RL rows to write (about a fifth fail)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--weights", choices=sorted(WEIGHTS), default="recipe")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_sets(folder, ["critic_rl.jsonl"], count=args.rows, seed=args.data_seed)
        rows, _ = read_critic_rl(paths["critic_rl"])
        failed = [r for r in rows if not r.success]
        cases = [
            StepCase(r.original_instruction, r.prompt_used, r.before, False, r.semantics, r.quality)
            for r in failed
        ]
        precise = [
            verdict_for(
                load_image(str(r.before), max_pixels=None),
                load_image(str(r.after), max_pixels=None),
                r.original_instruction,
                r.prompt_used,
            ).refine_prompt
            for r in failed
        ]
        weights = WEIGHTS[args.weights]
        print(f"{len(rows)} RL rows, {len(failed)} marked wrong; weights {args.weights}: {weights}")
        print()
        print(
            "| setting | re-send the failed prompt | precise prompt | gap | rows re-send >= precise "
            "| time (ratio) |"
        )
        print("|---|---|---|---|---|---|")
        base_time = None
        for label, samples, baseline in SETTINGS:
            reward = CriticReward(
                SandboxGenerator(),
                SandboxJudge(),
                weights=RewardWeights.from_dict(weights),
                samples=samples,
                baseline=baseline,
            )
            start = time.perf_counter()
            try:
                resend = [r.total for r in reward.score_sync([reject(c.prompt_used) for c in cases], cases)]
                fixed = [r.total for r in reward.score_sync([reject(p) for p in precise], cases)]
            finally:
                reward.close()
            seconds = time.perf_counter() - start
            base_time = base_time or seconds
            mean_resend, mean_fixed = sum(resend) / len(resend), sum(fixed) / len(fixed)
            ties = sum(a >= b for a, b in zip(resend, fixed))
            print(
                f"| {label} | {mean_resend:.3f} | {mean_fixed:.3f} | {mean_fixed - mean_resend:+.3f} "
                f"| {ties}/{len(cases)} | {seconds:.2f} s ({seconds / base_time:.1f}x) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
