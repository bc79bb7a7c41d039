"""The fast decoding path gives the plain path's greedy answers, token for token, on the tiny agents; the GPU
benchmark's code runs (``--smoke``: tiny shapes on the CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import ChatServer, plan_text
from PIL import Image

from interleave_thinker import cli as program
from interleave_thinker.core.agents import Decoding
from interleave_thinker.core.agents.transformers_agent import TransformersAgent
from interleave_thinker.core.messages import critic_messages, planner_messages
from interleave_thinker.core.prompts import load_template
from interleave_thinker.core.storyboard import Storyboard

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "sandbox" / "agents"


def _messages():
    before = Image.new("RGB", (64, 64), "white")
    after = Image.new("RGB", (64, 64), (200, 30, 30))
    prompt = "draw a large red circle at the centre"
    return {
        "critic": critic_messages(before, after, prompt, prompt, load_template("critic")),
        "planner": planner_messages("a red circle, then make it blue", [], "narrative"),
    }


def _tokens(agent, messages):
    import torch

    inputs = agent.prepare(messages)
    with torch.inference_mode():
        out = agent.model.generate(**inputs, **agent.generation_kwargs(None), return_dict_in_generate=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), type(cache).__name__


@pytest.mark.parametrize("which", ["tiny", "planner", "critic-sft"])
def test_fast_decoding_gives_the_plain_greedy_answer_token_for_token(which, tiny_agent_dir):
    folder = tiny_agent_dir if which == "tiny" else SHIPPED / which
    decoding = Decoding(max_new_tokens=32)
    plain = TransformersAgent(folder, device="cpu", decoding=decoding)
    fast = TransformersAgent(folder, device="cpu", decoding=decoding, fast_decoding=True)
    assert fast.info["fast_decoding"] is True and "fast_decoding" not in plain.info
    for role, messages in _messages().items():
        tokens, cache = _tokens(plain, messages)
        fast_tokens, fast_cache = _tokens(fast, messages)
        assert fast_cache == "StaticCache" and cache != "StaticCache"  # the two paths really differ
        assert tokens and fast_tokens == tokens, role
    messages = _messages()["critic"]
    assert fast.complete(messages, seed=1) == plain.complete(messages, seed=1)


def test_the_command_line_turns_fast_decoding_on_for_a_local_agent(tiny_agent_dir, tmp_path):
    plan = plan_text("draw a large red circle at the centre")
    out = tmp_path / "story"
    with ChatServer(lambda body, n: plan) as server:  # the Planner; the Critic is the local agent
        argv = ["run", "a red circle", "--out", str(out), "--planner", server.url, "--planner-model", "m",
                "--critic", str(tiny_agent_dir), "--fast-decoding", "--max-new-tokens", "6",
                "--device", "cpu", "--generator", "sandbox", "--width", "64", "--height", "64",
                "--quiet"]  # fmt: skip
        assert program.main(argv) == 0
    critic = Storyboard.load(out).settings["agents"]["critic"]
    assert critic["name"] == tiny_agent_dir.name and critic["fast_decoding"] is True


def test_the_gpu_benchmark_runs_its_code_on_tiny_shapes_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_inference", ROOT / "bench" / "gpu_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    numbers = tmp_path / "numbers.json"
    assert bench.main(["--smoke", "--json", str(numbers)]) == 0
    printed = capsys.readouterr().out
    assert "same tokens on both paths: yes" in printed and "these numbers measure nothing" in printed
    data = json.loads(numbers.read_text())
    assert [row["path"] for row in data["agent"]] == ["plain", "fast"]
    assert all(row["new_tokens"] == 8 and row["tokens_per_s"] > 0 for row in data["agent"])
    assert [p["what"] for p in data["pictures"]] == ["picture from text", "edit, one reference image"]
