"""How often an agent answers in the contract's format: the share of greedy outputs that parse.

The prompts are the engine's (the same rendering as training and inference); an output counts when
``core/protocol`` parses it as a valid plan (Planner) or verdict (Critic).

    python -m interleave_thinker.training.format_rate --model DIR --role critic --data critic_sft.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.protocol import ProtocolError, parse_plan, parse_verdict
from .data import CRITIC, PLANNER, CriticExample, PlannerExample, SFTRows, Templates


@dataclass
class FormatReport:
    valid: int
    total: int
    outputs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.valid / self.total if self.total else 0.0


def is_valid(text: str, role: str) -> str | None:
    """None when ``text`` parses for ``role``, else the reason it does not."""
    try:
        parse_plan(text) if role == PLANNER else parse_verdict(text)
    except ProtocolError as error:
        return str(error)
    return None


def generate(
    model, processor, conversations: Sequence[list[dict]], *, max_new_tokens: int = 256, batch_size: int = 8
) -> list[str]:
    """Greedy answers to ``conversations`` (engine messages with images inline), a batch at a time."""
    import torch
    import transformers
    from packaging.version import Version

    tokenizer = processor.tokenizer
    eos = model.generation_config.eos_token_id
    left = {"padding": True, "padding_side": "left"}
    # transformers 5.4 moved the processor's own arguments into processor_kwargs.
    padding = {"processor_kwargs": left} if Version(transformers.__version__) >= Version("5.4") else left
    outputs: list[str] = []
    model.eval()
    for start in range(0, len(conversations), batch_size):
        batch = [list(c) for c in conversations[start : start + batch_size]]
        inputs = processor.apply_chat_template(
            batch,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            **padding,
        ).to(model.device)
        with torch.inference_mode():
            ids = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
                use_cache=True,
            )
        new = ids[:, inputs["input_ids"].shape[1] :]
        outputs += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


def format_rate(
    model,
    processor,
    examples: Sequence[PlannerExample | CriticExample],
    role: str,
    *,
    templates: Templates | None = None,
    max_pixels: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> FormatReport:
    rows = SFTRows(
        examples, templates or Templates.load(), **({"max_pixels": max_pixels} if max_pixels else {})
    )
    conversations = [rows.prompt_messages(example) for example in examples]
    outputs = generate(model, processor, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
    errors = [is_valid(text, role) for text in outputs]
    return FormatReport(sum(e is None for e in errors), len(outputs), outputs, [e for e in errors if e])


def main(argv: list[str] | None = None) -> int:
    from .data import read_critic_sft, read_planner_sft, read_storyboards
    from .models import load_model, load_processor

    parser = argparse.ArgumentParser(description="Share of greedy answers that parse as plans or verdicts.")
    parser.add_argument("--model", required=True, help="model folder (or LoRA adapter folder)")
    parser.add_argument("--role", required=True, choices=(PLANNER, CRITIC))
    parser.add_argument("--data", required=True, help="sharegpt SFT file or storyboard folder")
    parser.add_argument("--limit", type=int, default=64, help="rows to try (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    args = parser.parse_args(argv)
    data = Path(args.data)
    if data.is_dir():
        examples, _ = read_storyboards(data, args.role)
    else:
        examples, _ = (read_planner_sft if args.role == PLANNER else read_critic_sft)(data)
    model, processor = load_model(args.model), load_processor(args.model)
    report = format_rate(
        model, processor, examples[: args.limit], args.role, max_new_tokens=args.max_new_tokens
    )
    print(json.dumps({"valid": report.valid, "total": report.total, "rate": report.rate}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FormatReport", "format_rate", "generate", "is_valid"]
