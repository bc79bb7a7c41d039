"""Export: merged bf16 shards, processor and metadata in models/LLM, and the loop closing on them."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from safetensors import safe_open

from interleave_thinker.core.agents.base import Decoding
from interleave_thinker.core.agents.transformers_agent import TransformersAgent
from interleave_thinker.core.loop import LoopConfig, run_story
from interleave_thinker.core.storyboard import ACCEPTED, REJECTED, Storyboard
from interleave_thinker.sandbox.generator import SandboxGenerator
from interleave_thinker.training.data import read_storyboards
from interleave_thinker.training.export import METADATA, ExportError, comfyui_target, export_model, main

SHARD = 300_000  # bytes: small enough that the tiny model needs two shards


def comfyui(tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    return root


@pytest.mark.slow
def test_exported_agents_drive_the_engine_and_their_storyboard_feeds_training(
    tmp_path, grpo_critic, trained_planner
):
    root = comfyui(tmp_path)
    critic_dir = export_model(
        grpo_critic.final_dir, comfyui_target(root, "tiny-critic"), max_shard_size="300KB"
    )
    planner_dir = export_model(trained_planner.final_dir, comfyui_target(root, "tiny-planner"))
    assert critic_dir == root / "models" / "LLM" / "tiny-critic"
    assert sorted(p.name for p in (root / "models" / "LLM").iterdir()) == [
        "tiny-critic",
        "tiny-planner",
    ]  # no temp

    shards = sorted(critic_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2 and all(s.stat().st_size <= SHARD * 1.05 for s in shards)
    index = json.loads((critic_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    with safe_open(shards[0], framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert (critic_dir / "chat_template.jinja").is_file() and (critic_dir / "tokenizer.json").is_file()
    assert stat.S_IMODE(critic_dir.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in critic_dir.iterdir())
    meta = json.loads((critic_dir / METADATA).read_text())
    assert meta["role"] == "critic" and meta["dtype"] == "bf16" and meta["shards"] == len(shards)
    assert [h["stage"] for h in meta["training"]] == ["sft", "grpo"]
    assert meta["base_model"] and meta["exported_with"]["package"]

    with pytest.raises(ExportError, match="already exists"):
        export_model(grpo_critic.final_dir, critic_dir)

    # The engine's transformers backend loads the folders and runs a whole story with them.
    planner = TransformersAgent(planner_dir, decoding=Decoding(max_new_tokens=256))
    critic = TransformersAgent(critic_dir, decoding=Decoding(max_new_tokens=80))
    story = run_story(
        "Build a scene in 2 steps: draw a large red circle at the centre; add a small blue square at the top",
        planner,
        SandboxGenerator(),
        critic,
        config=LoopConfig(width=96, height=96, max_attempts=2),
    )
    assert story.images
    judged = [a for a in story.attempts if a.status in (ACCEPTED, REJECTED)]
    assert judged  # the Critic's answers parse
    folder = story.save(tmp_path / "stories" / "first")
    assert Storyboard.load(folder).plan == story.plan
    examples, report = read_storyboards(tmp_path / "stories", "critic")
    assert report.kept == len(judged) == len(examples)


@pytest.mark.slow
def test_a_lora_adapter_is_merged_into_its_base(tmp_path, tiny_agent_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from interleave_thinker.training import config
    from interleave_thinker.training.sft import run_sft

    raw = config.load(
        None,
        [
            "role=critic",
            f"model={tiny_agent_dir}",
            f"output_dir={tmp_path / 'run'}",
            "finetune=lora",
            "lora={r: 4, alpha: 16, dropout: 0.0}",
            "data.train=[{format: generated, target: 'interleave_thinker.sandbox.teacher:write_sets', "
            "options: {count: 8, size: 64}}]",
            "trainer={max_steps: 4, per_device_train_batch_size: 2, learning_rate: 0.01, bf16: false, "
            "gradient_checkpointing: false, use_cpu: true, disable_tqdm: true}",
        ],
    )
    adapter = run_sft(raw).final_dir
    merged_dir = export_model(adapter, tmp_path / "merged", dtype="fp32")
    assert not (merged_dir / "adapter_config.json").exists()
    with safe_open(merged_dir / "model.safetensors", framework="pt") as f:
        assert not [k for k in f.keys() if "lora_" in k or "base_layer" in k]

    ids = torch.tensor([[5, 20, 40, 60, 80, 100]])
    base = AutoModelForImageTextToText.from_pretrained(tiny_agent_dir, local_files_only=True)
    plain = base(input_ids=ids).logits
    peft_logits = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, local_files_only=True)(
        input_ids=ids
    ).logits
    assert not torch.allclose(plain, peft_logits, atol=1e-4)  # the adapter changes the model...
    assert torch.allclose(merged, peft_logits, atol=1e-4)  # ...and the merged folder carries that change


def test_the_command_line_refuses_bad_targets(tmp_path, tiny_agent_dir, capsys):
    root = comfyui(tmp_path)
    assert main(["--model", str(tiny_agent_dir), "--comfyui", str(root), "--name", "../elsewhere"]) == 2
    assert "invalid model name" in capsys.readouterr().err
    assert main(["--model", str(tiny_agent_dir), "--comfyui", str(tmp_path / "nothing"), "--name", "x"]) == 2
    assert "does not look like a ComfyUI folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["--model", str(tiny_agent_dir), "--comfyui", str(root), "--name", "tiny"]) == 0
    assert (root / "models" / "LLM" / "tiny" / METADATA).is_file()
