"""GRPO for the Critic with TRL's GRPOTrainer and the reward of ``rewards.py``.

    python -m interleave_thinker.training.grpo --config training/configs/grpo_critic_tiny_cpu.yaml
    accelerate launch --config_file training/configs/accelerate/zero3.yaml \\
        -m interleave_thinker.training.grpo --config training/configs/grpo_critic_paper.yaml

Sections beyond those of ``sft`` (see ``config.py``)::

    reward:
      weights: {format: 0.5, accuracy: 0.1, semantics: 0.3, quality: 0.1}   # the paper's
      seed: 0                 # the first seed of the regenerations
      samples: 4              # draws per tested prompt, seeds seed, seed+1, ...: how well it draws
      baseline: resend        # resend: the failed prompt redrawn under the same seeds | rejected: the label's
      concurrency: 4          # generator and judge calls at once (per training process)
      timeout: 300            # seconds per call; a late call abstains
      cache_dir: null         # keep generations and judge scores across runs
      require_think: false    # format needs a <think> block before the answer
      max_prompt_chars: 1000  # a longer refined prompt fails the format
    generator: {kind: diffusers, path: models/diffusers/flux2-klein, options: {steps: 4}}
              # kind: diffusers (path) | comfyui (url + checkpoint, or text_graph and edit_graph: API-format
              # graph files) | import (target: "package.module:Class"); options: kwargs
    judge: {kind: vlm, spec: http://127.0.0.1:8000/v1, model: judge-model, api_key_env: JUDGE_API_KEY}
              # kind: vlm (model folder or OpenAI-compatible URL) | import (target, options)

Besides TRL's metrics the log has ``critic/flat_groups``: the share of groups whose rewards are all equal
within ``FLAT_GROUP_TOLERANCE``, which carry no signal. TRL's ``frac_reward_zero_std`` compares each group's
float32 std with zero at ``torch.isclose``'s 1e-8 and counts a group of eight equal rewards (std about 6e-8)
as signal, so it overrates the signal.

Both sections are required. The tiny profile imports the sandbox's procedural generator and oracle judge:
``{kind: import, target: "interleave_thinker.sandbox.generator:SandboxGenerator"}``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfg
from .data import CriticRLRows, DataError, DataReport, Templates
from .models import ModelError
from .rewards import DEFAULT_BASELINE, DEFAULT_SAMPLES, CriticReward, RewardWeights, check_draws
from .runs import model_folder, read_sources, run_info, save_final, start, state, write_json
from .sft import read_args

log = logging.getLogger(__name__)

GRPO_DEFAULTS: dict[str, Any] = {
    "remove_unused_columns": False,  # the reward reads the label columns
    "report_to": [],
    "save_strategy": "no",
    "logging_steps": 1,
    "max_completion_length": 512,  # a verdict is short; a runaway answer is cut here
    "beta": 0.0,
}
# A group whose rewards span at most this is flat: its advantages are rounding noise, not a ranking. Float32
# noise on equal rewards is about 1e-7; the smallest real difference the reward makes is about 1e-3 (one
# judge point over 4 draws at weight 0.1): the tolerance is a thousandfold above the one, tenfold below the
# other.
FLAT_GROUP_TOLERANCE = 1e-4
# Tokens a Critic must never write: a generated image placeholder breaks the next forward pass.
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


@dataclass
class RewardSettings:
    weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    samples: int = DEFAULT_SAMPLES
    baseline: str = DEFAULT_BASELINE
    concurrency: int = 4
    timeout: float = 300.0
    cache_dir: str | None = None
    require_think: bool = False
    max_prompt_chars: int = 1000

    def __post_init__(self) -> None:
        check_draws(self.samples, self.baseline)


GENERATOR_KINDS = ("diffusers", "comfyui", "import")
JUDGE_KINDS = ("vlm", "import")


@dataclass
class GeneratorSettings:
    kind: str | None = None
    path: str | None = None
    url: str | None = None
    checkpoint: str | None = None
    text_graph: str | None = None
    edit_graph: str | None = None
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"generator kind must be diffusers, comfyui or import, got {self.kind!r}")
        if self.kind == "diffusers" and not self.path:
            raise ValueError("a diffusers generator needs a path (a local pipeline folder)")
        if self.kind == "comfyui" and not (self.url and (self.checkpoint or self.text_graph)):
            raise ValueError(
                "a comfyui generator needs url and either checkpoint or text_graph (+ edit_graph)"
            )
        if self.kind == "import":
            if not self.target:
                raise ValueError("an imported generator needs target: 'package.module:Class'")
            cfg.check_target(self.target)


@dataclass
class JudgeSettings:
    kind: str | None = None
    spec: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_new_tokens: int = 512
    timeout: float = 120.0
    semantics_prompt: str | None = None
    quality_prompt: str | None = None
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in JUDGE_KINDS:
            raise ValueError(f"judge kind must be vlm or import, got {self.kind!r}")
        if self.kind == "vlm" and not self.spec:
            raise ValueError("a vlm judge needs spec: a model folder or an OpenAI-compatible URL")
        if self.kind == "import":
            if not self.target:
                raise ValueError("an imported judge needs target: 'package.module:Class'")
            cfg.check_target(self.target)


@dataclass
class GRPOSettings(cfg.RunSettings):
    freeze_vision: bool = False  # the paper trains the vision tower in RL
    reward: RewardSettings = field(default_factory=RewardSettings)
    generator: GeneratorSettings | None = None
    judge: JudgeSettings | None = None

    SECTIONS = {
        **cfg.RunSettings.SECTIONS,
        "reward": RewardSettings,
        "generator": GeneratorSettings,
        "judge": JudgeSettings,
    }

    def check(self) -> None:
        super().check()
        if self.role != "critic":
            raise cfg.ConfigError("GRPO trains the Critic: set role: critic")
        if self.generator is None:
            raise cfg.ConfigError(
                "GRPO needs a 'generator' section to redraw rejected steps, e.g. {kind: diffusers, path: "
                "models/diffusers/flux2-klein} or {kind: import, target: 'package.module:Class'}"
            )
        if self.judge is None:
            raise cfg.ConfigError(
                "GRPO needs a 'judge' section to score the redrawn pictures, e.g. {kind: vlm, spec: "
                "http://127.0.0.1:8000/v1} or {kind: import, target: 'package.module:Class'}"
            )


def build_generator(settings: GeneratorSettings):
    if settings.kind == "diffusers":
        from ..core.generators.diffusers_generator import DiffusersGenerator

        return DiffusersGenerator(settings.path, **settings.options)
    if settings.kind == "comfyui":
        from ..core.generators.comfyui_server import ComfyUIServerGenerator

        if settings.checkpoint:
            return ComfyUIServerGenerator.for_checkpoint(
                settings.url, settings.checkpoint, **settings.options
            )
        return ComfyUIServerGenerator(
            settings.url, settings.text_graph, settings.edit_graph, **settings.options
        )
    return cfg.import_object(settings.target)(**settings.options)


def build_judge(settings: JudgeSettings):
    if settings.kind == "vlm":
        from .judge import QUALITY_PROMPT, SEMANTICS_PROMPT, load_judge

        return load_judge(
            settings.spec,
            model=settings.model,
            api_key_env=settings.api_key_env,
            max_new_tokens=settings.max_new_tokens,
            timeout=settings.timeout,
            semantics_prompt=settings.semantics_prompt or SEMANTICS_PROMPT,
            quality_prompt=settings.quality_prompt or QUALITY_PROMPT,
        )
    return cfg.import_object(settings.target)(**settings.options)


def build_reward(settings: GRPOSettings) -> CriticReward:
    r = settings.reward
    try:
        weights = RewardWeights.from_dict(r.weights)
    except ValueError as error:
        raise cfg.ConfigError(f"reward.weights: {error}") from None
    return CriticReward(
        build_generator(settings.generator),
        build_judge(settings.judge),
        weights=weights,
        seed=r.seed,
        samples=r.samples,
        baseline=r.baseline,
        concurrency=r.concurrency,
        timeout=r.timeout,
        cache_dir=r.cache_dir,
        require_think=r.require_think,
        max_prompt_chars=r.max_prompt_chars,
    )


def flat_group_share(
    rewards: Sequence[float | None], group_size: int, tolerance: float = FLAT_GROUP_TOLERANCE
) -> float:
    """The share of the groups (``group_size`` consecutive rewards) whose scored rewards span at most
    ``tolerance``. Abstentions (None, NaN) are left out, as TRL leaves them out of the baseline; a group with
    fewer than two scores is flat."""
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    flat = 0
    for group in groups:
        scored = [r for r in group if r is not None and not math.isnan(r)]
        flat += len(scored) < 2 or max(scored) - min(scored) <= tolerance
    return flat / len(groups) if groups else 0.0


class FlatGroupLogger:
    """The reward as GRPOTrainer calls it, also logging ``critic/flat_groups`` for each batch that holds whole
    groups (one process, or a per-device batch that is a multiple of ``num_generations``)."""

    def __init__(self, reward: CriticReward, group_size: int):
        self.reward = reward
        self.group_size = group_size
        self.__name__ = reward.__name__  # the name TRL logs the reward under

    async def __call__(self, *args: Any, log_metric=None, **kwargs: Any) -> list[float | None]:
        totals = await self.reward(*args, log_metric=log_metric, **kwargs)
        if log_metric is not None and totals and len(totals) % self.group_size == 0:
            log_metric("critic/flat_groups", flat_group_share(totals, self.group_size))
        return totals


@dataclass
class GRPOResult:
    output_dir: Path
    final_dir: Path
    data: DataReport
    reward_stats: dict[str, int]
    history: list[dict[str, Any]]


def run_grpo(raw: dict[str, Any]) -> GRPOResult:
    from trl import GRPOConfig, GRPOTrainer

    from .curves import MetricsRecorder
    from .models import freeze_vision, load_model, load_processor, lora_config, parameter_counts

    settings = GRPOSettings.from_dict(raw)
    args = cfg.trainer_args(GRPOConfig, settings, GRPO_DEFAULTS)  # first, as in sft.py
    out = start(settings, raw)
    templates = Templates.load(settings.templates, settings.source_template_pairs())
    base = model_folder(settings)
    examples, report = read_sources(settings.data.train, settings.role, "rl", settings, templates)
    if state().is_main_process:
        write_json(out / "data_report.json", report.to_dict())
    log.info("RL data: %s", report.summary())

    reward = build_reward(settings)
    model = load_model(base, dtype=settings.dtype, base=settings.base_model)
    processor = load_processor(base, base=settings.base_model, padding_side="left")
    if not args.use_vllm and args.generation_kwargs is None:
        vocab = processor.tokenizer.get_vocab()
        banned = [vocab[t] for t in VISION_TOKENS if t in vocab]
        args.generation_kwargs = {"suppress_tokens": banned} if banned else None
    if settings.freeze_vision:
        freeze_vision(model)
    peft_config = None
    if settings.finetune == "lora":
        lora = settings.lora
        peft_config = lora_config(
            lora.r, lora.alpha, lora.dropout, lora.target_modules, vision=not settings.freeze_vision
        )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[FlatGroupLogger(reward, args.num_generations)],
        args=args,
        train_dataset=CriticRLRows(examples, templates, max_pixels=settings.data.max_pixels).as_dataset(),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[MetricsRecorder(out, title="GRPO critic")],
    )
    log.info("parameters: %s", parameter_counts(trainer.model))
    try:
        trainer.train()
    finally:
        reward.close()
    info = run_info(
        settings,
        "grpo",
        base,
        report,
        reward_stats=dict(reward.stats),
        reward_weights=vars(reward.weights),
        reward_draws={"samples": reward.samples, "baseline": reward.baseline},
        flat_group_tolerance=FLAT_GROUP_TOLERANCE,
    )
    final = save_final(trainer, out, info)
    log.info("reward calls: %s", dict(reward.stats))
    return GRPOResult(out, final, report, dict(reward.stats), list(trainer.state.log_history))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_grpo(read_args(argv, "GRPO for the Critic with a generator-and-judge reward."))
    except (cfg.ConfigError, DataError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved the trained critic to {result.final_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
