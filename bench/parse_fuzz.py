"""Fuzzing the agent-output parser: no crash, and a bounded time per call, whatever a model writes.

    python bench/parse_fuzz.py [--cases 10000] [--seed 0]

Every case goes through both ``parse_plan`` and ``parse_verdict``. A call may return a Plan or a Verdict or
raise ``ProtocolError``; any other exception is a crash, and the script exits 1 if there is one.

1. Fuzz cases: half random text (fragments of the wire format, tags, brackets, quotes, random code points),
   half mutations of valid plans and verdicts in every accepted dialect (truncation, duplicated slices,
   inserted brackets, repeated tags, deleted slices, unicode). Reported: crashes, median / p99 / max ms.
2. Looping outputs, the shapes a small model produces when it repeats itself until the token limit (200,000
   ``{``, 200 kB of ``<answer>``, deep ``[[[[``, strings never closed, ...). Reported: ms per call, as a ratio
   against the baseline measured in the same run: parsing one valid 2048-token answer (a reasoning block and
   a plan, about 4 characters a token).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import traceback

from interleave_thinker.core.protocol import MAX_PARSE_CHARS, ProtocolError, parse_plan, parse_verdict

PARSERS = (parse_plan, parse_verdict)
CHARS_PER_TOKEN = 4

STEP = {
    "step_number": 1,
    "step_name": "Kitchen",
    "instruction": "A cat walks into a sunny kitchen.",
    "prompt": "a ginger cat walking into a sunny kitchen, watercolour, soft morning light",
    "auxiliary_text": None,
}


def plan_data(steps: int, words: int = 0) -> dict:
    filler = " ".join(["with a red hat and a blue scarf"] * words)
    return {
        "execution_plan": [
            dict(STEP, step_number=n + 1, step_name=f"Step {n + 1}", auxiliary_text=filler or None)
            for n in range(steps)
        ]
    }


VERDICT = {"previous_step_success": False, "refine_prompt": "a ginger cat wearing a red hat, watercolour"}


def valid_answers() -> list[str]:
    plan, small = plan_data(3), plan_data(1)
    return [
        "<think>three scenes</think><answer>" + repr(plan) + "</answer>",
        "<think>x</think>\n<answer>" + json.dumps(plan) + "</answer>",
        json.dumps(plan),
        "Here is the plan:\n```json\n" + json.dumps(plan, indent=2) + "\n```",
        "Sure! " + json.dumps(small) + " Hope that helps.",
        "<answer>" + repr(plan).replace("}", ",}").replace("]", ",]") + "</answer>",
        "<think>t</think><answer>" + json.dumps(plan)[:-2],
        "the template opened the think block</think>" + repr(small),
        "<answer>" + json.dumps(plan["execution_plan"]) + "</answer>",
        "<answer>" + repr(VERDICT) + "</answer>",
        "<think>the hat is missing</think><answer>" + json.dumps(VERDICT) + "</answer>",
        '{"success": false, "refined_prompt": "add a red hat"}',
        "<answer>{'previous_step_success': True}</answer>",
        "<answer>{'previous_step_success': 'false', 'refine_prompt': 'add a red hat',}",
    ]


FRAGMENTS = [
    "{", "}", "[", "]", "(", ")", "'", '"', ":", ",", "\\", "\n", " ", "\t", "None", "True", "null", "true",
    "<answer>", "</answer>", "<ANSWER>", "<think>", "</think>", "```", "```json\n", "```python", "#", "//",
    "/*",
    "execution_plan", "step_number", "prompt", "auxiliary_text", "previous_step_success", "refine_prompt",
    "success", "1", "-", "1e999", "a cat", "é", "\u0130", "\U0001f600", "\u200b", "\x00", "\ud800",
]  # fmt: skip
BRACKETS = "{}[]()"
TAGS = ["<answer>", "</answer>", "<think>", "</think>", "```", "```json\n"]


def random_code_points(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x30000)))) for _ in range(n))


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return random_code_points(rng, rng.randrange(0, 400))
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(0, 300)))


def mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(text))
        op = rng.randrange(7)
        if op == 0:  # truncation, as by a token limit
            text = text[:at]
        elif op == 1:  # a duplicated slice, repeated as a looping model does
            end = rng.randint(at, min(len(text), at + 200))
            text = text[:at] + text[at:end] * rng.randint(2, 30) + text[end:]
        elif op == 2:  # inserted brackets
            text = text[:at] + "".join(rng.choice(BRACKETS) for _ in range(rng.randint(1, 60))) + text[at:]
        elif op == 3:  # a repeated tag
            text = text[:at] + rng.choice(TAGS) * rng.randint(1, 40) + text[at:]
        elif op == 4:  # a deleted slice
            text = text[:at] + text[rng.randint(at, len(text)) :]
        elif op == 5:  # unicode
            text = text[:at] + random_code_points(rng, rng.randint(1, 20)) + text[at:]
        else:  # a quote flipped or dropped
            quotes = [i for i, c in enumerate(text) if c in "'\""]
            if quotes:
                i = rng.choice(quotes)
                text = text[:i] + rng.choice(["", "'", '"', '\\"']) + text[i + 1 :]
    return text


def fill(unit: str, chars: int = 200_000) -> str:
    return unit * (chars // len(unit))


def looping_outputs() -> dict[str, str]:
    plan_answer = "<answer>" + repr(plan_data(3)) + "</answer>"
    verdict_open = "<answer>{'previous_step_success': False, 'refine_prompt': 'add a red hat"
    step = repr(STEP) + ", "
    return {
        "200,000 {": fill("{"),
        "200,000 [": fill("["),
        "[[[[ ]]]] 100,000 deep": "[" * 100_000 + "]" * 100_000,
        "200 kB of <answer>": fill("<answer>"),
        "200 kB of <think>": fill("<think>"),
        "200 kB of answers never closed": fill(verdict_open),
        "200 kB of closed answers": fill(plan_answer),
        '200 kB of {"a': fill('{"a'),
        '200 kB of ["a': fill('["a'),
        "200 kB of one step repeated": "<answer>{'execution_plan': [" + fill(step),
        "string never closed, 200 kB": "<answer>{'execution_plan': [{'prompt': '" + fill("a cat "),
        "fence then 200 kB of spaces": "```json" + fill(" "),
        "200 kB of ```": fill("```"),
        "200 kB of '1, ' in braces": "{" + fill("1, ") + "}",
        "200 kB of {'a': None},": "{" + fill("{'a': None}, ") + "}",
        "200 kB of unary minus": "{'a': " + fill("-") + "1}",
        "30 kB of garbage to repair": "{" + fill('"a":"b" c, ', 30_000) + "}",
        "1 MB of { (past the cap)": "{" * 1_000_000,
        "150 kB <answer> then a plan": fill("<answer>", 150_000) + plan_answer,
        "long reasoning then a plan": "<think>" + fill("hmm, ", 150_000) + "</think>" + plan_answer,
    }


def call(parse, text: str) -> tuple[float, str, BaseException | None]:
    """Seconds, outcome ('parsed' or the error's reason), and the exception if it was a crash."""
    start = time.perf_counter()
    try:
        parse(text)
        outcome, crash = "parsed", None
    except ProtocolError as error:
        outcome, crash = error.reason, None
    except Exception as error:  # a crash: what this script is looking for
        outcome, crash = f"CRASH {type(error).__name__}", error
    return time.perf_counter() - start, outcome, crash


def baseline_answer() -> str:
    target = 2048 * CHARS_PER_TOKEN
    reasoning = "The story needs a cat, a kitchen and a hat; each scene edits the last one. "
    text = ""
    for steps in range(1, 40):
        plan = repr(plan_data(steps, words=4))
        text = "<think>" + fill(reasoning, target // 3) + "</think><answer>" + plan + "</answer>"
        if len(text) >= target:
            break
    parse_plan(text)  # valid, or the baseline means nothing
    return text


def median_seconds(parse, text: str, repeats: int) -> float:
    return statistics.median(call(parse, text)[0] for _ in range(repeats))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", type=int, default=10_000, help="random and mutated outputs (default 10000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    for parse in PARSERS:  # warm up: the first repair imports its library
        call(parse, "<answer>{'previous_step_success': tru")
    base_text = baseline_answer()
    base = median_seconds(parse_plan, base_text, 51)
    tokens = len(base_text) // CHARS_PER_TOKEN
    print(
        f"baseline: one valid {tokens}-token answer ({len(base_text):,} characters), "
        f"parse_plan {ms(base)} ms (median of 51)"
    )

    answers = valid_answers()
    times, crashes, slowest = [], [], (0.0, "")
    for index in range(args.cases):
        text = random_text(rng) if index % 2 else mutate(rng, rng.choice(answers))
        for parse in PARSERS:
            seconds, outcome, crash = call(parse, text)
            times.append(seconds)
            if crash is not None:
                crashes.append((parse.__name__, text, crash))
            if seconds > slowest[0]:
                slowest = (seconds, f"{parse.__name__} on {len(text):,} characters: {outcome}")
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print()
    print(f"{'fuzz cases':>10} {'calls':>7} {'crashes':>8} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    print(
        f"{args.cases:>10} {len(times):>7} {len(crashes):>8} {ms(statistics.median(times)):>10} "
        f"{ms(p99):>8} {ms(times[-1]):>8}"
    )
    print(f"slowest: {slowest[1]}")

    print()
    print(f"looping outputs (parse cap {MAX_PARSE_CHARS:,} characters), median of 3 calls each")
    print(f"{'output':<32} {'chars':>9} {'plan ms':>9} {'verdict ms':>10} {'x baseline':>10}  outcome (plan)")
    for name, text in looping_outputs().items():
        row = []
        for parse in PARSERS:
            runs = [call(parse, text) for _ in range(3)]
            row.append(statistics.median(run[0] for run in runs))
            crashes += [(parse.__name__, text, run[2]) for run in runs[:1] if run[2] is not None]
            if parse is parse_plan:
                outcome = runs[0][1]
        ratio = max(row) / base
        short = outcome if len(outcome) <= 60 else outcome[:59] + "…"
        print(f"{name:<32} {len(text):>9,} {ms(row[0]):>9} {ms(row[1]):>10} {ratio:>10.1f}  {short}")

    if crashes:
        print(f"\n{len(crashes)} crash(es); the first:")
        name, text, error = crashes[0]
        print(f"{name} on {text[:200]!r}")
        traceback.print_exception(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
