"""Supervised fine-tuning of the Planner or the Critic with TRL's SFTTrainer.

    python -m interleave_thinker.training.sft --config training/configs/sft_critic_tiny_cpu.yaml
    accelerate launch --config_file training/configs/accelerate/zero3.yaml \\
        -m interleave_thinker.training.sft --config training/configs/sft_critic_paper.yaml

Rows are rendered with the engine's templates and trained prompt-completion style, so the loss falls on the
answer only. The vision tower is frozen unless ``freeze_vision: false``. The run folder gets ``final/`` (the
model or LoRA adapter, the processor and ``run.json``), ``metrics.jsonl``, ``curves.png``,
``data_report.json`` and ``config.yaml``. With ``eval.samples`` set, that many rows are held out and the
share of greedy answers that parse is measured before and after training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfg
from .data import DataError, DataReport, SFTRows, Templates
from .models import ModelError
from .runs import model_folder, read_sources, run_info, save_final, split_eval, start, state, write_json

log = logging.getLogger(__name__)

# Chosen for vision-language rows; the trainer section of the config overrides any of them.
SFT_DEFAULTS: dict[str, Any] = {
    "max_length": None,  # truncating inside an image's tokens breaks the forward pass
    "remove_unused_columns": False,  # rows are rendered lazily from a "row" column
    "report_to": [],
    "save_strategy": "no",
    "logging_steps": 10,
}


@dataclass
class SFTResult:
    output_dir: Path
    final_dir: Path
    data: DataReport
    format_before: float | None = None
    format_after: float | None = None
    train_loss: float | None = None


def run_sft(raw: dict[str, Any]) -> SFTResult:
    """Train as ``raw`` (a config mapping) says and return where the result is."""
    from trl import SFTConfig, SFTTrainer

    from .curves import MetricsRecorder
    from .format_rate import format_rate
    from .models import freeze_vision, load_model, load_processor, lora_config, parameter_counts

    settings = cfg.RunSettings.from_dict(raw)
    # The TRL config comes first: it sets up the distributed state, and under DeepSpeed ZeRO-3 it makes
    # from_pretrained load the model sharded.
    args = cfg.trainer_args(SFTConfig, settings, SFT_DEFAULTS)
    out = start(settings, raw)
    templates = Templates.load(settings.templates, settings.source_template_pairs())
    base = model_folder(settings)
    examples, report = read_sources(settings.data.train, settings.role, "sft", settings, templates)
    if settings.data.eval:
        held, _ = read_sources(settings.data.eval, settings.role, "sft", settings, templates)
        held = held[: settings.eval.samples or len(held)]
    else:
        examples, held = split_eval(examples, settings.eval.samples, settings.seed)
    if state().is_main_process:
        write_json(out / "data_report.json", report.to_dict())
    log.info("training data: %s", report.summary())

    model = load_model(base, dtype=settings.dtype, base=settings.base_model)
    processor = load_processor(base, base=settings.base_model)
    if settings.freeze_vision:
        freeze_vision(model)
    peft_config = None
    if settings.finetune == "lora":
        lora = settings.lora
        peft_config = lora_config(
            lora.r, lora.alpha, lora.dropout, lora.target_modules, vision=not settings.freeze_vision
        )

    evaluate = bool(held) and state().num_processes == 1
    if held and not evaluate:
        log.info("the format check runs in single-process runs only; skipped")

    def measure(trained) -> float:
        return format_rate(
            trained,
            processor,
            held,
            settings.role,
            templates=templates,
            max_pixels=settings.data.max_pixels,
            max_new_tokens=settings.eval.max_new_tokens,
            batch_size=settings.eval.batch_size,
        ).rate

    before = measure(model) if evaluate else None

    rows = SFTRows(
        examples, templates, max_pixels=settings.data.max_pixels, keep_reasoning=settings.data.keep_reasoning
    )

    class Trainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            # Rows render lazily, so the length-grouped sampler gets lengths measured without rendering them
            # (the trainer's own would render every row, pictures included, to measure it).
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            from transformers.trainer_pt_utils import LengthGroupedSampler

            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=rows.lengths())

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows.as_dataset(),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[MetricsRecorder(out, title=f"SFT {settings.role}")],
    )
    log.info("parameters: %s", parameter_counts(trainer.model))
    output = trainer.train()
    after = measure(trainer.model) if evaluate else None
    info = run_info(
        settings,
        "sft",
        base,
        report,
        format_rate={"before": before, "after": after},
        train_loss=output.training_loss,
        train_rows=len(examples),
        eval_rows=len(held),
    )
    final = save_final(trainer, out, info)
    if before is not None:
        log.info("answers that parse: %.0f%% before training, %.0f%% after", 100 * before, 100 * after)
    return SFTResult(out, final, report, before, after, output.training_loss)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, metavar="FILE", help="run configuration (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set trainer.max_steps=10 (repeatable)",
    )
    p.add_argument("--output-dir", help="shorthand for --set output_dir=DIR")
    return p


def read_args(argv: Sequence[str] | None, description: str) -> dict[str, Any]:
    args = parser(description).parse_args(argv)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    return cfg.load(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        raw = read_args(argv, "Supervised fine-tuning of the Planner or the Critic.")
        result = run_sft(raw)
    except (cfg.ConfigError, DataError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved the trained {cfg.RunSettings.from_dict(raw).role} to {result.final_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
