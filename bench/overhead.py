"""How much time the engine adds on top of the models it drives.

    python bench/overhead.py [--stories 3] [--repeats 7]

Two measurements, each against a baseline taken in the same run on the same tiny models (a random-weight
Qwen3-VL agent and a random-weight Stable Diffusion pipeline, built offline into a temporary folder):

1. The refine loop: wall time of whole stories against the sum of the model calls inside them (Planner,
   Critic, generator). What is left is the loop's own work: messages, parsing, seeds, events, bookkeeping.
   Goal: under 1% of wall time.
2. One agent call (chat template, image processing, generate, decode) against the same work written by hand
   with transformers, and against a bare ``model.generate`` on inputs prepared beforehand, all producing the
   same tokens. Goal: within 5%. The gap to bare ``generate`` is the processor's own time (template,
   tokenizer, image resizing), which every caller pays; it is a visible share only for a model this small.

Random weights cannot write plans or verdicts, so the agents here run the real model for every call and then
answer with scripted text (a 3-step plan; the Critic rejects each step's first image once): model time is
real, and the loop takes its real paths, retries included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PLAN = (
    "<think>three stages</think><answer>{'execution_plan': ["
    "{'step_number': 1, 'step_name': 'Cat', 'instruction': 'A cat.', 'prompt': 'a cat on a sofa', "
    "'auxiliary_text': None}, "
    "{'step_number': 2, 'step_name': 'Hat', 'instruction': 'It wears a hat.', 'prompt': 'add a red hat', "
    "'auxiliary_text': None}, "
    "{'step_number': 3, 'step_name': 'Scarf', 'instruction': 'And a scarf.', 'prompt': 'add a blue scarf', "
    "'auxiliary_text': None}]}</answer>"
)


class Timed:
    """Wraps an agent or a generator; adds the time of every model call to ``seconds``."""

    def __init__(self, inner, answer=None):
        self.inner, self.answer, self.seconds, self.calls = inner, answer, 0.0, 0
        self.name = getattr(inner, "name", "model")
        self.edit_route = getattr(inner, "edit_route", None)

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def complete(self, messages, *, seed, temperature=None, cancel=None):
        text = self._timed(self.inner.complete, messages, seed=seed, temperature=temperature)
        return self.answer(messages, self.calls) if self.answer else text

    def text_to_image(self, prompt, **kwargs):
        return self._timed(self.inner.text_to_image, prompt, **kwargs)

    def edit(self, before, prompt, **kwargs):
        return self._timed(self.inner.edit, before, prompt, **kwargs)


def critic_answer(messages, call):
    from interleave_thinker.core.messages import message_text

    retried = "a sharper picture" in message_text(messages)
    accepted = "True" if retried else "False"
    return (
        f"<think>checked</think><answer>{{'previous_step_success': {accepted}, "
        f"'refine_prompt': 'a sharper picture'}}</answer>"
    )


def bench_loop(agent_dir: Path, pipeline_dir: Path, stories: int, new_tokens: int) -> dict:
    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator
    from interleave_thinker.core.loop import LoopConfig, run_story

    agent = load_agent(str(agent_dir), decoding=Decoding(max_new_tokens=new_tokens), device="cpu")
    generator = DiffusersGenerator(str(pipeline_dir), steps=3, device="cpu")
    config = LoopConfig(width=64, height=64, max_attempts=3)
    run_story("warm-up", Timed(agent, lambda m, n: PLAN), Timed(generator), None, config=config)
    walls, models, calls = [], [], 0
    for index in range(stories):
        planner, critic, painter = (
            Timed(agent, lambda m, n: PLAN),
            Timed(agent, critic_answer),
            Timed(generator),
        )
        start = time.perf_counter()
        run_story(
            f"a cat story {index}",
            planner,
            painter,
            critic,
            config=LoopConfig(width=64, height=64, max_attempts=3, seed=index),
        )
        walls.append(time.perf_counter() - start)
        models.append(planner.seconds + critic.seconds + painter.seconds)
        calls += planner.calls + critic.calls + painter.calls
    wall, model = sum(walls), sum(models)
    return {"wall": wall, "model": model, "calls": calls, "stories": stories}


def bench_agent_call(agent_dir: Path, repeats: int, new_tokens: int) -> dict:
    import torch
    from PIL import Image

    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.messages import critic_messages

    agent = load_agent(str(agent_dir), decoding=Decoding(max_new_tokens=new_tokens), device="cpu")
    messages = critic_messages(
        Image.new("RGB", (128, 128), "white"),
        Image.new("RGB", (128, 128), "red"),
        "a red square",
        "a red square",
    )
    inputs = agent.prepare(messages)
    kwargs = agent.generation_kwargs(None)
    # Force the same number of new tokens on both sides, whatever the random weights pick.
    kwargs.update(min_new_tokens=new_tokens, eos_token_id=None)
    agent.generation_kwargs = lambda temperature: kwargs

    def bare():
        with torch.inference_mode():
            agent.model.generate(**inputs, **kwargs)

    def by_hand():  # what a caller writes with transformers alone: template, processor, generate, decode
        prepared = agent.processor.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.inference_mode():
            output = agent.model.generate(**prepared, **kwargs)
        agent.tokenizer.decode(output[0, prepared["input_ids"].shape[1] :], skip_special_tokens=True)

    def full():
        agent.complete(messages, seed=0)

    sides = {"bare": (bare, []), "by_hand": (by_hand, []), "agent": (full, [])}
    for fn, _ in sides.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so drift hits every side alike
        for fn, times in sides.values():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    result = {name: statistics.median(times) for name, (_, times) in sides.items()}
    return result | {"repeats": repeats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stories", type=int, default=3, help="stories for the loop measurement")
    parser.add_argument("--repeats", type=int, default=7, help="repeats for the agent-call measurement")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens each agent call generates")
    args = parser.parse_args(argv)

    import diffusers
    import torch
    import transformers

    from interleave_thinker.training.tiny import build_tiny_agent, build_tiny_pipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        agent_dir = build_tiny_agent(Path(tmp) / "agent")
        pipeline_dir = build_tiny_pipeline(Path(tmp) / "sd")
        loop = bench_loop(agent_dir, pipeline_dir, args.stories, args.new_tokens)
        call = bench_agent_call(agent_dir, args.repeats, args.new_tokens)

    overhead = loop["wall"] - loop["model"]
    rows = [
        (
            "refine loop",
            f"{loop['stories']} stories, {loop['calls']} model calls",
            f"{loop['model']:.3f} s models",
            f"{loop['wall']:.3f} s wall",
            f"{overhead / loop['wall']:.2%} overhead",
            "< 1%",
            overhead / loop["wall"] < 0.01,
        ),
        (
            "agent call",
            f"median of {call['repeats']}, {args.new_tokens} new tokens",
            f"{call['by_hand']:.4f} s by hand",
            f"{call['agent']:.4f} s agent",
            f"{call['agent'] / call['by_hand']:.3f}x",
            "<= 1.05x",
            call["agent"] / call["by_hand"] <= 1.05,
        ),
        (
            "agent call",
            "same, against generate alone",
            f"{call['bare']:.4f} s generate",
            f"{call['agent']:.4f} s agent",
            f"{call['agent'] / call['bare']:.3f}x",
            "<= 1.05x",
            call["agent"] / call["bare"] <= 1.05,
        ),
    ]
    header = ("measurement", "what", "baseline", "measured", "ratio", "goal", "met")
    table = [header] + [row[:-1] + ("yes" if row[-1] else "NO",) for row in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(
        f"\ntorch {torch.__version__}, transformers {transformers.__version__}, "
        f"diffusers {diffusers.__version__}, "
        f"{torch.get_num_threads()} threads, python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
