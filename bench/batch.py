"""What ``batch --concurrency`` buys, against the bound set by the models' own costs.

    python bench/batch.py [--stories 16] [--steps 3] [--agent-seconds 0.2] [--generator-seconds 0.2]
                          [--slots 4] [--concurrency 1 2 4 8]

Stand-ins whose costs are known, driven through the real command (``batch``, storyboards saved):

- the agents: a loopback OpenAI-compatible server that answers every call after ``--agent-seconds`` and works
  on at most ``--slots`` (k) calls at once, the rest waiting their turn (a vLLM server with k sequences);
- the generator: ``--generator-seconds`` a picture, one picture at a time (one GPU), so the batch runs it
  behind its lock.

Each story is one Planner call, then per step one picture and one Critic call (every picture accepted). A
batch can finish no sooner than its busiest resource allows: the bound is max(generator time summed,
agent time summed / k), from the calls actually made. A sequential batch pays every call in turn; the goal
is that at concurrency 4 the wall time is within 15% of the bound. The "lanes bound" beside it adds what c
stories in flight cannot beat either, each one's calls being in turn: all the calls' time over c. Where it
exceeds the bound, more concurrency is what is missing, not a faster batch.

What the bound leaves out is the batch's own work, on the CPU: saving each storyboard (pictures, printable
pages, the PDF) and rewriting index.html after it.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOAL = 1.15  # wall time at most 15% over the bound, at concurrency 4


class SlowAgents:
    """An OpenAI-compatible chat server on loopback: each answer takes ``seconds``; ``slots`` at once."""

    def __init__(self, seconds: float, slots: int, steps: int):
        self.seconds, self.calls, self.busy = seconds, 0, 0.0
        self.slots = threading.Semaphore(slots)
        self.lock = threading.Lock()
        plan = {
            "execution_plan": [
                {
                    "step_number": i + 1,
                    "step_name": f"Stage {i + 1}",
                    "instruction": f"Stage {i + 1}.",
                    "prompt": f"stage {i + 1}",
                    "auxiliary_text": None,
                }
                for i in range(steps)
            ]
        }
        self.plan = f"<think>stages</think><answer>{json.dumps(plan)}</answer>"
        self.verdict = (
            "<think>fine</think><answer>{'previous_step_success': True, 'refine_prompt': ''}</answer>"
        )
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = body["messages"][0]["content"]
                images = sum(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)
                with outer.slots:  # a server that works on k calls at once; the others wait
                    time.sleep(outer.seconds)
                with outer.lock:
                    outer.calls += 1
                    outer.busy += outer.seconds
                text = outer.verdict if images == 2 else outer.plan
                answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 64
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.calls, self.busy = 0, 0.0


class FixedCostGenerator:
    """A picture every ``seconds``, one at a time (it does not say it is concurrent-safe: the batch locks
    it). The colour comes from the prompt and seed, so storyboards are real and repeatable."""

    name = "fixed-cost"
    edit_route = "img2img"

    def __init__(self, seconds: float):
        self.seconds, self.calls, self.busy = seconds, 0, 0.0

    def _picture(self, prompt: str, seed: int, size):
        import hashlib

        from PIL import Image

        time.sleep(self.seconds)
        self.calls += 1
        self.busy += self.seconds
        digest = hashlib.sha256(f"{prompt}{seed}".encode()).digest()
        return Image.new("RGB", size, tuple(digest[:3]))

    def text_to_image(self, prompt, *, width, height, seed):
        return self._picture(prompt, seed, (width, height))

    def edit(self, before, prompt, *, seed):
        return self._picture(prompt, seed, before.size)

    def reset(self) -> None:
        self.calls, self.busy = 0, 0.0


def run_batch(stories: Path, out: Path, agents: SlowAgents, generator: FixedCostGenerator, concurrency: int):
    from interleave_thinker.core import cli

    commands = cli.engine_commands({"fixed-cost": lambda args: generator})
    argv = [
        "batch", str(stories), "--out", str(out), "--planner", agents.url, "--planner-model", "agent",
        "--generator", "fixed-cost", "--width", "64", "--height", "64", "--concurrency", str(concurrency),
        "--quiet",
    ]  # fmt: skip
    agents.reset()
    generator.reset()
    start = time.perf_counter()
    code = cli.main(argv, commands)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the batch at concurrency {concurrency} exited with {code}")
    return wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stories", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="pictures per story")
    parser.add_argument("--agent-seconds", type=float, default=0.2, help="one agent answer")
    parser.add_argument("--generator-seconds", type=float, default=0.2, help="one picture")
    parser.add_argument("--slots", type=int, default=4, help="agent calls the server works on at once (k)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args(argv)

    from interleave_thinker.core.cli import quiet_libraries

    quiet_libraries()  # imports transformers and diffusers now, so that no run pays for it
    agents = SlowAgents(args.agent_seconds, args.slots, args.steps)
    generator = FixedCostGenerator(args.generator_seconds)
    header = "concurrency|generator time|agent time / k|bound|lanes bound|wall|wall / bound|speed-up"
    rows = [header.split("|")]
    results: dict[int, float] = {}
    calls = ""
    with tempfile.TemporaryDirectory() as tmp:
        stories = Path(tmp) / "stories.txt"
        stories.write_text("".join(f"story number {i}\n" for i in range(args.stories)))
        sequential = None
        for concurrency in args.concurrency:
            wall = run_batch(stories, Path(tmp) / f"out-{concurrency}", agents, generator, concurrency)
            bound = max(generator.busy, agents.busy / args.slots)
            # c stories in flight, each one call after another: no faster than the calls summed over c.
            lanes = max(bound, (generator.busy + agents.busy) / concurrency)
            if concurrency == 1:
                sequential = wall
            results[concurrency] = wall / bound
            calls = f"{agents.calls} agent calls and {generator.calls} pictures a run"
            rows.append(
                [
                    str(concurrency),
                    f"{generator.busy:.2f} s",
                    f"{agents.busy / args.slots:.2f} s",
                    f"{bound:.2f} s",
                    f"{lanes:.2f} s",
                    f"{wall:.2f} s",
                    f"{wall / bound:.2f}x",
                    f"{sequential / wall:.2f}x" if sequential else "",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(
        f"{args.stories} stories x {args.steps} pictures ({calls}); agents {args.agent_seconds:g} s a call, "
        f"{args.slots} at once; generator {args.generator_seconds:g} s a picture, one at a time"
    )
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    if 4 in results:
        met = "met" if results[4] <= GOAL else "not met"
        print(f"goal: wall within {GOAL - 1:.0%} of the bound at concurrency 4: {results[4]:.2f}x, {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
