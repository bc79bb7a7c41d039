from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_agent_dir(tmp_path_factory):
    """A tiny random-weight Qwen3-VL folder with a locally trained tokenizer, built once per session."""
    from interleave_thinker.training.tiny import build_tiny_agent

    return build_tiny_agent(tmp_path_factory.mktemp("models") / "tiny-agent")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random-weight Stable Diffusion pipeline folder, built once per session."""
    from interleave_thinker.training.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def sandbox_examples(tmp_path_factory):
    """Planner, Critic and Critic RL examples of the sandbox teacher (64x64 pictures), made once: the
    rollouts of a few train tasks through the refine loop, every judged attempt labelled by the oracle."""
    from types import SimpleNamespace

    from interleave_thinker.sandbox import teacher
    from interleave_thinker.sandbox.tasks import make_tasks
    from interleave_thinker.training.data import read_storyboards

    tasks = make_tasks("train", 16, seed=0, width=64, height=64)
    stories = teacher.rollouts(tasks, tmp_path_factory.mktemp("sandbox") / "storyboards")
    judged, _ = read_storyboards(stories, "critic")
    critic, rl = teacher.relabel_critic(judged)
    return SimpleNamespace(planner=teacher.planner_examples(tasks), critic=critic, rl=rl)


# -- trained tiny agents, shared by the training and export tests --------------------------------------------


def _training_profile(name: str, **overrides) -> dict:
    from pathlib import Path

    import interleave_thinker.training as training
    from interleave_thinker.training import config

    path = Path(training.__file__).resolve().parent / "configs" / name
    return config.load(path, [f"{key}={value}" for key, value in overrides.items()])


@pytest.fixture(scope="session")
def trained_critic(tmp_path_factory, tiny_agent_dir):
    """The tiny Critic after the shipped tiny CPU SFT profile (about a minute): an SFTResult."""
    from interleave_thinker.training.sft import run_sft

    out = tmp_path_factory.mktemp("critic-sft")
    return run_sft(_training_profile("sft_critic_tiny_cpu.yaml", model=tiny_agent_dir, output_dir=out))


@pytest.fixture(scope="session")
def trained_planner(tmp_path_factory, tiny_agent_dir):
    """The tiny Planner after the shipped tiny CPU SFT profile: an SFTResult."""
    from interleave_thinker.training.sft import run_sft

    out = tmp_path_factory.mktemp("planner-sft")
    return run_sft(_training_profile("sft_planner_tiny_cpu.yaml", model=tiny_agent_dir, output_dir=out))


@pytest.fixture(scope="session")
def grpo_critic(tmp_path_factory, trained_critic):
    """The SFT'd tiny Critic after the shipped tiny CPU GRPO profile: a GRPOResult."""
    from interleave_thinker.training.grpo import run_grpo

    out = tmp_path_factory.mktemp("critic-grpo")
    return run_grpo(
        _training_profile("grpo_critic_tiny_cpu.yaml", model=trained_critic.final_dir, output_dir=out)
    )
