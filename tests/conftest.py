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
