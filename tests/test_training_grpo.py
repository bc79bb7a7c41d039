"""GRPO on the SFT'd tiny Critic with the sandbox generator and the oracle judge in the reward loop."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from interleave_thinker.training import config
from interleave_thinker.training.curves import read_metrics
from interleave_thinker.training.grpo import GeneratorSettings, GRPOSettings, build_generator, build_judge
from interleave_thinker.training.runs import RUN_INFO

WINDOW = 8


@pytest.mark.slow
def test_grpo_raises_the_reward_and_changes_the_weights(grpo_critic, trained_critic):
    rewards = [
        row["reward"] for row in read_metrics(grpo_critic.output_dir / "metrics.jsonl") if "reward" in row
    ]
    assert len(rewards) >= 3 * WINDOW
    first, last = sum(rewards[:WINDOW]) / WINDOW, sum(rewards[-WINDOW:]) / WINDOW
    assert last >= first + 0.1, (first, last)

    before, after = (
        load_file(trained_critic.final_dir / "model.safetensors"),
        load_file(grpo_critic.final_dir / "model.safetensors"),
    )
    changed = [name for name in before if not (before[name] == after[name]).all()]
    assert any(".language_model." in name for name in changed)
    assert not any(".visual." in name for name in changed)  # the tiny profile keeps the vision tower frozen

    stats = grpo_critic.reward_stats
    assert stats["generator_calls"] > 0 and stats["judge_calls"] > 0 and stats["abstained"] == 0
    info = json.loads((grpo_critic.final_dir / RUN_INFO).read_text())
    assert [h["stage"] for h in info["history"]] == ["sft", "grpo"]
    assert info["reward_weights"] == {"format": 0.5, "accuracy": 0.1, "semantics": 0.3, "quality": 0.1}
    assert (grpo_critic.output_dir / "curves.png").is_file()


def test_grpo_settings_are_checked_before_training():
    from interleave_thinker.sandbox.generator import SandboxGenerator
    from interleave_thinker.sandbox.grading import SandboxJudge

    base = config.load(
        None,
        [
            "role=critic",
            "model=m",
            "output_dir=o",
            "data.train=[{format: critic_rl, path: x}]",
            "generator={kind: import, target: 'interleave_thinker.sandbox.generator:SandboxGenerator'}",
            "judge={kind: import, target: 'interleave_thinker.sandbox.grading:SandboxJudge'}",
        ],
    )
    settings = GRPOSettings.from_dict(base)
    assert isinstance(build_generator(settings.generator), SandboxGenerator)  # imported as the config says
    assert isinstance(build_judge(settings.judge), SandboxJudge)
    for section in ("generator", "judge"):
        with pytest.raises(config.ConfigError, match=f"GRPO needs a '{section}' section"):
            GRPOSettings.from_dict({k: v for k, v in base.items() if k != section})
    with pytest.raises(config.ConfigError, match="must look like 'package.module:Class'"):
        GRPOSettings.from_dict({**base, "generator": {"kind": "import", "target": "SandboxGenerator"}})
    with pytest.raises(config.ConfigError, match="cannot import"):
        build_generator(GeneratorSettings("import", target="interleave_thinker.sandbox.generator:Absent"))
    with pytest.raises(config.ConfigError, match="GRPO trains the Critic"):
        GRPOSettings.from_dict({**base, "role": "planner"})
    with pytest.raises(config.ConfigError, match="generator kind must be"):
        GRPOSettings.from_dict({**base, "generator": {"kind": "midjourney"}})
    with pytest.raises(config.ConfigError, match="needs spec"):
        GRPOSettings.from_dict({**base, "judge": {"kind": "vlm"}})
    with pytest.raises(config.ConfigError, match="unknown key"):
        GRPOSettings.from_dict({**base, "reward": {"weight": {}}})


def test_a_group_of_equal_rewards_is_flat_whatever_float32_makes_of_its_std():
    import torch

    from interleave_thinker.training.grpo import FLAT_GROUP_TOLERANCE, flat_group_share

    equal = torch.full((8,), 0.9, dtype=torch.float32)
    # Eight equal float32 rewards: the std can come out a hair above zero, yet the group ranks nothing.
    assert flat_group_share(equal.tolist(), 8) == 1.0
    ranked = [0.9] * 7 + [0.9 + 10 * FLAT_GROUP_TOLERANCE]
    assert flat_group_share(ranked + equal.tolist(), 8) == 0.5
    # Abstentions are left out, as GRPO leaves them out of the baseline; one score alone ranks nothing.
    assert flat_group_share([0.9, None, float("nan"), 0.5], 4) == 0.0
    assert flat_group_share([0.9, None, None, None], 4) == 1.0
    with pytest.raises(ValueError, match="groups of 8"):
        flat_group_share([0.9] * 12, 8)


def test_the_reward_logs_the_share_of_flat_groups():
    import asyncio

    from interleave_thinker.core.messages import white_canvas
    from interleave_thinker.sandbox.generator import SandboxGenerator
    from interleave_thinker.sandbox.grading import SandboxJudge
    from interleave_thinker.training.grpo import FlatGroupLogger
    from interleave_thinker.training.rewards import CriticReward

    def answer(accepted):
        return f'<answer>{{"previous_step_success": {json.dumps(accepted)}, "refine_prompt": ""}}</answer>'

    reward = FlatGroupLogger(CriticReward(SandboxGenerator(), SandboxJudge()), group_size=2)
    logged = {}
    try:
        totals = asyncio.run(
            reward(
                prompts=[[]] * 4,
                completions=[answer(True), answer(True), answer(True), answer(False)],
                origin_prompt=["draw a large red circle at the centre; nothing else"] * 4,
                rewritten_prompt=["draw a large red circle at the centre; nothing else"] * 4,
                before_image=[white_canvas(64, 64)] * 4,
                label_success=[True] * 4,
                label_semantics=[10.0] * 4,
                label_quality=[10.0] * 4,
                log_metric=logged.__setitem__,
            )
        )
    finally:
        reward.reward.close()
    assert totals[0] == totals[1] and totals[2] > totals[3]  # the first group is flat, the second ranks
    assert logged["critic/flat_groups"] == 0.5
    assert reward.__name__ == "critic_reward"


def test_the_reward_draw_settings_are_checked():
    base = {
        "role": "critic",
        "model": "m",
        "output_dir": "o",
        "data": {"train": [{"format": "critic_rl", "path": "x"}]},
        "generator": {"kind": "import", "target": "interleave_thinker.sandbox.generator:SandboxGenerator"},
        "judge": {"kind": "import", "target": "interleave_thinker.sandbox.grading:SandboxJudge"},
    }
    settings = GRPOSettings.from_dict({**base, "reward": {"samples": 2, "baseline": "rejected"}})
    assert (settings.reward.samples, settings.reward.baseline) == (2, "rejected")
    with pytest.raises(config.ConfigError, match="samples must be a whole number of draws"):
        GRPOSettings.from_dict({**base, "reward": {"samples": 0}})
    with pytest.raises(config.ConfigError, match="baseline must be one of resend, rejected"):
        GRPOSettings.from_dict({**base, "reward": {"baseline": "luck"}})
