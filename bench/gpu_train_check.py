"""One SFT step and one GRPO step of a real-size Qwen3-VL (random weights) under ZeRO-3 or FSDP2; peak memory.

Nothing is downloaded: the model is built from a config shaped like Qwen3-VL-8B-Instruct (36 layers, hidden
4096, a 27-block vision tower, a 151,936-token embedding) with the tiny local tokenizer; the data are the
sandbox teacher's at full resolution (1024x1024 pictures: about 1,024 image tokens each, two per Critic
prompt), and the GRPO reward redraws with the sandbox generator and scores with its oracle judge.

  accelerate launch --config_file training/configs/accelerate/zero3.yaml bench/gpu_train_check.py --stage sft
  accelerate launch --config_file training/configs/accelerate/fsdp2.yaml bench/gpu_train_check.py --stage grpo

Each process prints its peak GPU memory per stage. ``--layers`` shortens the text model to probe a smaller
GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

# Shaped like Qwen3-VL-8B-Instruct's published configuration.
TEXT_8B = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
    "tie_word_embeddings": False,
}
VISION_8B = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "out_hidden_size": 4096,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
}


def build_processor_and_config(folder: Path, layers: int | None, max_pixels: int):
    """A processor (tiny tokenizer, full-size image budget) saved to ``folder``, and the big model config."""
    import json

    from transformers import AutoProcessor, Qwen3VLConfig

    from interleave_thinker.training.tiny import build_tiny_agent

    build_tiny_agent(folder)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    processor.save_pretrained(folder)
    tiny = json.loads((folder / "config.json").read_text())
    text = dict(TEXT_8B, num_hidden_layers=layers or TEXT_8B["num_hidden_layers"])
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=VISION_8B,
        tie_word_embeddings=False,
        **{
            k: tiny[k]
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        },
    )
    return processor, config


def new_model(config):
    import torch
    from transformers import AutoModelForImageTextToText

    # Under ZeRO-3 (the trainer config already exists) from_config builds the model sharded from the start.
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = [2, 0]
    return model


def report(stage: str, started: float) -> None:
    import torch

    rank = int(os.environ.get("RANK", 0))
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    print(
        f"[rank {rank}] {stage}: one step in {time.perf_counter() - started:.1f} s, "
        f"peak allocated {peak:.1f} GiB, peak reserved {reserved:.1f} GiB",
        flush=True,
    )


def sft_step(config, processor, work: Path, size: int) -> None:
    import torch
    from trl import SFTConfig, SFTTrainer

    from interleave_thinker.sandbox.teacher import write_sets
    from interleave_thinker.training.data import SFTRows, Templates, read_critic_sft
    from interleave_thinker.training.models import freeze_vision

    args = SFTConfig(
        output_dir=str(work / "sft"),
        max_steps=1,
        per_device_train_batch_size=1,
        bf16=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=None,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        learning_rate=2e-5,
    )
    model = new_model(config)
    freeze_vision(model)
    examples, _ = read_critic_sft(
        write_sets(work / "sft-data", ["critic_sft.json"], count=8, size=size)["critic_sft"]
    )
    rows = SFTRows(examples, Templates.load(), max_pixels=size * size)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows.as_dataset(), processing_class=processor)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    report("SFT (full, vision frozen)", started)
    del trainer, model
    gc.collect()
    torch.cuda.empty_cache()


def grpo_step(config, processor, work: Path, size: int, generations: int) -> None:
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from interleave_thinker.sandbox.generator import SandboxGenerator
    from interleave_thinker.sandbox.grading import SandboxJudge
    from interleave_thinker.sandbox.teacher import write_sets
    from interleave_thinker.training.data import CriticRLRows, Templates, read_critic_rl
    from interleave_thinker.training.rewards import CriticReward

    args = GRPOConfig(
        output_dir=str(work / "grpo"),
        max_steps=1,
        per_device_train_batch_size=generations,
        num_generations=generations,
        max_completion_length=256,
        bf16=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        learning_rate=2e-6,
        beta=0.0,
        loss_type="dapo",
    )
    processor.tokenizer.padding_side = "left"
    model = new_model(config)
    reward = CriticReward(SandboxGenerator(), SandboxJudge())
    examples, _ = read_critic_rl(
        write_sets(work / "rl-data", ["critic_rl.jsonl"], count=8, size=size)["critic_rl"]
    )
    rows = CriticRLRows(examples, Templates.load(), max_pixels=size * size)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=rows.as_dataset(),
        processing_class=processor,
    )
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    report(f"GRPO ({generations} completions of up to 256 tokens, vision trained)", started)
    reward.close()


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("sft", "grpo", "both"), default="both")
    parser.add_argument("--layers", type=int, help="text layers (default 36, as in the 8B)")
    parser.add_argument("--size", type=int, default=1024, help="picture side in pixels (default 1024)")
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt (default 4)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a GPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processor, config = build_processor_and_config(work / "processor", args.layers, args.size * args.size)
        if args.stage in ("sft", "both"):
            sft_step(config, processor, work, args.size)
        if args.stage in ("grpo", "both"):
            grpo_step(config, processor, work, args.size, args.generations)


if __name__ == "__main__":
    main()
