"""What a local agent takes in memory in each weight format, and what a story takes on a GPU.

    python bench/memory.py [--agent DIR] [--hidden 1024] [--layers 8] [--pipeline DIR]

Three parts:

1. Qwen3-VL-8B on paper: its parameters counted from its configuration (built on PyTorch's meta device, so
   nothing is allocated or downloaded), split into what bitsandbytes quantizes (the linear layers but the
   output layer) and what stays in bf16, and the resident size that gives in each format.
2. Measured on this machine, for each weight format (fp32, bf16, fp16, int8 and nf4, the rest in bf16): the
   agent's resident bytes and the peak memory of the process during one Critic call (two pictures and the
   Critic's prompt), each format in a fresh process, with ratios against bf16 measured in the same run. The
   agent is a random-weight Qwen3-VL built here (about 83 M parameters by default, nearly all in linear
   layers as in the 8B), or ``--agent DIR``. Memory freed after loading is handed back to the system first
   (malloc_trim), so the process's size is what it uses. The same estimate as in part 1 is printed beside
   each measured size: that is what checks the 8B's numbers.
3. With a CUDA GPU only: peak VRAM of one story (Planner + Critic + a diffusion pipeline, the tiny one built
   here or ``--pipeline DIR``) under each memory policy, against the largest single model. Goal with
   "offload": peak at most the largest model + 10%. Without a GPU it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMATS = {  # name: (dtype, quantize)
    "fp32": ("fp32", "none"),
    "bf16": ("bf16", "none"),
    "fp16": ("fp16", "none"),
    "int8": ("bf16", "int8"),
    "nf4": ("bf16", "nf4"),
}
BASELINE = "bf16"
# Bytes per weight of a quantized linear layer: int8 keeps one fp32 scale per output row (counted apart);
# nf4 with double quantization keeps one 8-bit scale per 64 weights and one fp32 per 256 of those.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
MiB = 2**20


# ---------------------------------------------------------------------------------------------------------
# Part 1: counting


def split_parameters(model) -> dict[str, int]:
    """Parameters bitsandbytes quantizes (linear weights but the output layer), their rows, and the rest."""
    import torch

    head = model.get_output_embeddings()
    quantized = rows = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            quantized += module.weight.numel()
            rows += module.weight.shape[0]
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "quantized": quantized, "rows": rows, "rest": total - quantized}


def estimate_bytes(counts: dict[str, int], fmt: str) -> int:
    """Resident bytes in ``fmt``: quantized weights as bitsandbytes stores them, the rest in bf16."""
    if fmt in ("fp32", "bf16", "fp16"):
        return counts["total"] * (4 if fmt == "fp32" else 2)
    rest = counts["rest"] * 2
    if fmt == "int8":
        return int(counts["quantized"] * 1 + counts["rows"] * 4 + rest)
    return int(counts["quantized"] * NF4_BYTES + rest)


def qwen3_vl_8b_counts() -> dict[str, int]:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_train_check import TEXT_8B, VISION_8B

    config = Qwen3VLConfig(text_config=TEXT_8B, vision_config=VISION_8B, tie_word_embeddings=False)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    return split_parameters(model)


def print_8b() -> None:
    counts = qwen3_vl_8b_counts()
    print("1. Qwen3-VL-8B (the Planner's and the Critic's base), counted from its configuration")
    print(
        f"   {counts['total'] / 1e9:.2f} B parameters: {counts['quantized'] / 1e9:.2f} B in linear layers "
        f"that int8/nf4 quantize, {counts['rest'] / 1e9:.2f} B kept in bf16 (embeddings, output layer, norms)"
    )
    print(f"   {'format':<8}{'resident GB':>12}{'GiB':>8}{'vs bf16':>9}")
    base = estimate_bytes(counts, BASELINE)
    for fmt in FORMATS:
        size = estimate_bytes(counts, fmt)
        print(f"   {fmt:<8}{size / 1e9:>12.2f}{size / 2**30:>8.2f}{size / base:>9.2f}")
    print("   (weights only; one generation adds its activations and KV cache: about 0.15 MB per token)\n")


# ---------------------------------------------------------------------------------------------------------
# Part 2: measuring, one format per process


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def release_freed_memory() -> None:
    """Hand memory freed since loading back to the system, so the process's size is what is in use: glibc
    keeps freed blocks (the unquantized weights a quantized load went through) and would count them."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the numbers include what the allocator kept
        pass


def import_libraries() -> None:
    """Import what loading and running an agent imports, in every format alike (bitsandbytes too), so the
    process's size after this is the libraries' share."""
    import importlib
    import importlib.util

    import torch  # noqa: F401
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

    for name in (
        "transformers.models.qwen3_vl.modeling_qwen3_vl",
        "transformers.models.qwen3_vl.processing_qwen3_vl",
    ):
        importlib.import_module(name)
    if importlib.util.find_spec("bitsandbytes") is not None:
        importlib.import_module("bitsandbytes")


def child_agent(folder: str, fmt: str, tokens: int) -> dict:
    from PIL import Image

    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.agents.transformers_agent import resident_bytes
    from interleave_thinker.core.messages import critic_messages

    dtype, quantize = FORMATS[fmt]
    import_libraries()
    libraries = rss()
    start = time.perf_counter()
    agent = load_agent(
        folder, device="cpu", dtype=dtype, quantize=quantize, decoding=Decoding(max_new_tokens=tokens)
    )
    load_seconds = time.perf_counter() - start
    before, after = Image.new("RGB", (256, 256), "white"), Image.new("RGB", (256, 256), (200, 40, 40))
    messages = critic_messages(before, after, "draw a red square", "a red square")
    agent.complete(messages, seed=0)  # warm: first-call allocations are not the call's own
    release_freed_memory()
    idle = rss()
    peak, running = idle, True

    def sample():
        nonlocal peak
        while running:
            peak = max(peak, rss())
            time.sleep(0.002)

    watcher = threading.Thread(target=sample)
    watcher.start()
    start = time.perf_counter()
    agent.complete(messages, seed=0)
    seconds = time.perf_counter() - start
    running = False
    watcher.join()
    return {
        "resident": agent.size_bytes,
        "check": resident_bytes(agent.model),
        "libraries": libraries,
        "idle": idle,
        "peak": max(peak, rss()),
        "load_seconds": load_seconds,
        "call_seconds": seconds,
    }


def build_agent(folder: Path, hidden: int, layers: int) -> Path:
    from interleave_thinker.training.tiny import build_tiny_agent

    return build_tiny_agent(
        folder,
        hidden_size=hidden,
        layers=layers,
        heads=max(4, hidden // 64),
        vision_hidden_size=256,
        vision_depth=2,
        tie_embeddings=False,
    )


def agent_counts(folder: Path) -> dict[str, int]:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return split_parameters(model)


def print_measured(folder: Path, tokens: int) -> None:
    counts = agent_counts(folder)
    print(
        f"2. Measured here: {folder.name}, {counts['total'] / 1e6:.1f} M parameters "
        f"({counts['quantized'] / counts['total']:.0%} in quantized linear layers); one Critic call, "
        f"{tokens} new tokens, CPU"
    )
    results = {}
    for fmt in FORMATS:
        done = subprocess.run(
            [sys.executable, __file__, "--child-agent", str(folder), fmt, str(tokens)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            results[fmt] = None
            reason = (
                done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            )
            print(f"   {fmt}: failed: {reason}")
            continue
        results[fmt] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results.get(BASELINE)
    columns = [("format", 7), ("resident MiB", 13), ("estimate", 10), ("vs bf16", 9), ("call peak MiB", 15)]
    columns += [("vs bf16", 9), ("over libs MiB", 15), ("vs bf16", 9), ("load s", 8), ("call s", 8)]
    print(
        "   "
        + "".join(
            f"{name:<{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(columns)
        )
    )

    def ratio(result, key) -> str:
        value = lambda r: r["peak"] - r["libraries"] if key == "own" else r[key]  # noqa: E731
        return f"{value(result) / value(base):.2f}" if base else "-"

    for fmt, result in results.items():
        if result is None:
            continue
        cells = [
            f"{result['resident'] / MiB:>13.1f}",
            f"{estimate_bytes(counts, fmt) / MiB:>10.1f}",
            f"{ratio(result, 'resident'):>9}",
            f"{result['peak'] / MiB:>15.1f}",
            f"{ratio(result, 'peak'):>9}",
            f"{(result['peak'] - result['libraries']) / MiB:>15.1f}",
            f"{ratio(result, 'own'):>9}",
            f"{result['load_seconds']:>8.1f}{result['call_seconds']:>8.2f}",
        ]
        print(f"   {fmt:<7}" + "".join(cells))
    print(
        "   resident: the agent's weights and quantization scales (its state, each tensor once);\n"
        "   estimate: part 1's formula for this model; call peak: the process's resident memory at its\n"
        "   highest during one call; over libs: that peak less the process once torch, transformers, the\n"
        "   model's code and bitsandbytes were imported: the weights, the call's working memory, what\n"
        "   loading left behind.\n"
        "   bitsandbytes on the CPU is slow: its times here say nothing of a GPU's.\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Part 3: one story on a GPU


def child_story(agent: str, pipeline: str, policy: str) -> dict:
    import torch

    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator
    from interleave_thinker.core.loop import LoopConfig, run_story

    decoding = Decoding(max_new_tokens=32)
    planner = load_agent(agent, device="cuda", dtype="bf16", memory=policy, decoding=decoding)
    critic = load_agent(agent, device="cuda", dtype="bf16", memory=policy, decoding=decoding)
    generator = DiffusersGenerator(pipeline, device="cuda", steps=4, cpu_offload=policy == "offload")
    pipeline_bytes = sum(
        p.numel() * p.element_size()
        for part in generator.pipeline.components.values()
        if isinstance(part, torch.nn.Module)
        for p in part.parameters()
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    # Random weights never plan: the one-step fallback keeps the story going, and every model is called.
    config = LoopConfig(width=256, height=256, fallback_single_step=True, planner_tries=1, critic_tries=1)
    run_story("a fox finds a lantern", planner, generator, critic, config=config)
    torch.cuda.synchronize()
    return {
        "peak": torch.cuda.max_memory_allocated(),
        "largest": max(planner.size_bytes, critic.size_bytes, pipeline_bytes),
        "models": planner.size_bytes + critic.size_bytes + pipeline_bytes,
    }


def print_gpu(agent: Path, pipeline: Path | None, work: Path) -> None:
    import torch

    print("3. One story on a GPU (Planner + Critic + diffusion pipeline), peak VRAM per memory policy")
    if not torch.cuda.is_available():
        print("   skipped: no CUDA GPU on this machine (run this script on one to fill this part in)")
        return
    if pipeline is None:
        from interleave_thinker.training.tiny import build_tiny_pipeline

        pipeline = build_tiny_pipeline(work / "tiny-sd")
    columns = ("peak MiB", 10), ("largest model MiB", 19), ("peak / largest", 16), ("all models MiB", 16)
    print(f"   {'policy':<9}" + "".join(f"{name:>{width}}" for name, width in columns))
    for policy in ("keep", "offload"):
        done = subprocess.run(
            [sys.executable, __file__, "--child-story", str(agent), str(pipeline), policy],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"   {policy}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"   {policy:<9}{result['peak'] / MiB:>10.1f}{result['largest'] / MiB:>19.1f}"
            f"{result['peak'] / result['largest']:>16.2f}{result['models'] / MiB:>16.1f}"
        )
    print("   goal with offload: peak / largest <= 1.10 (only one model on the GPU at a time)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-agent"]:
        print(json.dumps(child_agent(argv[1], argv[2], int(argv[3]))))
        return 0
    if argv[:1] == ["--child-story"]:
        print(json.dumps(child_story(argv[1], argv[2], argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", type=Path, help="an agent folder (default: a random Qwen3-VL built here)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the agent built here")
    parser.add_argument("--layers", type=int, default=8, help="text layers of the agent built here")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per Critic call")
    parser.add_argument("--pipeline", type=Path, help="a diffusers pipeline for part 3 (default: a tiny one)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print_8b()
    with tempfile.TemporaryDirectory() as work:
        agent = args.agent or build_agent(Path(work) / "agent", args.hidden, args.layers)
        print_measured(Path(agent), args.tokens)
        print_gpu(Path(agent), args.pipeline, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
