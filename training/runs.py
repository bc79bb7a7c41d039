"""What the SFT and GRPO scripts share: the model folder, the data sources, and the finished run's folder."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..core.files import replace_folder, temporary_name
from .config import ConfigError, RunSettings, Source, code_version, import_object
from .data import (
    CRITIC,
    DataError,
    DataReport,
    ImageChecker,
    Templates,
    read_critic_rl,
    read_critic_sft,
    read_planner_sft,
    read_storyboards,
)

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
FINAL = "final"
# Files a trainer may leave in a model folder that nobody should load: pickles.
UNSAFE_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def state():
    from accelerate import PartialState

    return PartialState()


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def start(settings: RunSettings, raw: dict[str, Any]) -> Path:
    """Create the output folder and keep the resolved config in it."""
    out = Path(settings.output_dir)
    if state().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
        tmp = out / f".config.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / "config.yaml")
    state().wait_for_everyone()
    return out


def model_folder(settings: RunSettings) -> Path:
    """The model to start from; ``tiny`` builds the tiny test model into the output folder once."""
    if settings.model != "tiny":
        return Path(settings.model)
    from .tiny import build_tiny_agent

    folder = Path(settings.output_dir) / "tiny-base"
    with state().main_process_first():
        if state().is_main_process and not (folder / "config.json").is_file():
            build_tiny_agent(folder, seed=settings.seed)
    return folder


def official_file(role: str, kind: str) -> str:
    """The file a run reads: ``critic_rl.jsonl`` (GRPO), ``planner_sft.json`` or ``critic_sft.json`` (SFT)."""
    return "critic_rl.jsonl" if kind == "rl" else f"{role}_sft.json"


def generated_file(source: Source, role: str, kind: str, out: Path) -> Path:
    """Have a generated source's function write the run's data file into ``<out>/data``; return its path.

    The folder is named by the target and its options, so two sources never share one; it is written under
    a temporary name and renamed, so a crash leaves no half-written data where a later run would read it.
    """
    name = official_file(role, kind)
    key = json.dumps([source.target, source.options, name], sort_keys=True, default=str)
    folder = out / "data" / f"generated-{Path(name).stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    with state().main_process_first():
        if state().is_main_process:
            function = import_object(source.target, "function")
            try:
                inspect.signature(function).bind(folder, (name,), **source.options)
            except TypeError as error:
                raise ConfigError(f"options of {source.target}: {error}") from None
            except ValueError:
                pass  # no signature to check (a builtin): the call itself says what is wrong
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(folder)
            tmp.mkdir()
            try:
                try:
                    function(tmp, (name,), **source.options)
                except ValueError as error:
                    raise ConfigError(f"data source {source.target}: {error}") from None
                if not (tmp / name).is_file():
                    raise ConfigError(f"{source.target} wrote no {name}, which this {kind} run reads")
                replace_folder(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return folder / name


def read_sources(
    sources: Sequence[Source], role: str, kind: str, settings: RunSettings, templates: Templates
) -> tuple[list, DataReport]:
    """Examples from every source: SFT examples for ``role`` (kind "sft") or Critic RL rows (kind "rl")."""
    data = settings.data
    checker = ImageChecker(data.max_pixels, verify=data.verify_images)
    examples: list = []
    report = DataReport()
    for source in sources:
        path = (
            generated_file(source, role, kind, Path(settings.output_dir))
            if source.format == "generated"
            else Path(source.path)
        )
        common = {"image_dir": source.image_dir, "on_bad_row": data.on_bad_row, "checker": checker}
        if kind == "rl":
            if source.format not in ("critic_rl", "generated"):
                raise ConfigError(
                    f"GRPO reads critic_rl (or generated) sources, not {source.format}: the RL rows "
                    f"need the judge's scores of the rejected image"
                )
            found, part = read_critic_rl(path, **common)
        elif source.format == "storyboard":
            found, part = read_storyboards(path, role, on_bad_row=data.on_bad_row, checker=checker)
        elif source.format == "critic_rl":
            raise ConfigError(
                "critic_rl rows hold no answer to learn; SFT reads sharegpt or storyboard sources"
            )
        elif role == CRITIC:
            found, part = read_critic_sft(path, templates=templates, **common)
        else:
            found, part = read_planner_sft(
                path, templates=templates, raw_instructions=source.raw_instructions, **common
            )
        log.info("%s: %s", path, part.summary())
        examples += found
        report.merge(part)
    report.resized_images = checker.resized
    if data.limit is not None:
        examples = examples[: data.limit]
    if not examples:
        raise DataError(f"no usable rows in the data sources ({report.summary()})")
    return examples, report


def split_eval(examples: list, held: int, seed: int) -> tuple[list, list]:
    """Hold ``held`` rows out of training (chosen with ``seed``) to measure the format on unseen prompts."""
    if held <= 0:
        return examples, []
    if held >= len(examples):
        raise ConfigError(
            f"eval.samples ({held}) must be smaller than the training set ({len(examples)} rows)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held])
    return [e for i, e in enumerate(examples) if i not in chosen], [examples[i] for i in sorted(chosen)]


def run_info(
    settings: RunSettings, stage: str, model_dir: Path, report: DataReport, **extra: Any
) -> dict[str, Any]:
    """What a finished model folder records of its making (export copies it into its metadata)."""
    parent = {}
    parent_file = model_dir / RUN_INFO
    if parent_file.is_file():
        try:
            parent = json.loads(parent_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            parent = {}
    sources = [{k: v for k, v in vars(s).items() if v is not None} for s in settings.data.train]
    return {
        "role": settings.role,
        "stage": stage,
        # As the config named them: a shipped or shared folder must not carry the paths of the machine it
        # came from.
        "base_model": parent.get("base_model") or str(model_dir),
        "started_from": str(model_dir),
        "history": parent.get("history", []) + [{"stage": stage, "data": sources, "rows": report.kept}],
        "finetune": settings.finetune,
        "code_version": code_version(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def save_final(trainer, out: Path, info: dict[str, Any]) -> Path:
    """Save the trained model (or LoRA adapter) and processor as ``<out>/final``, replaced atomically."""
    final = out / FINAL
    partial = (
        out / ".final.partial"
    )  # one name on every rank: all of them take part in saving sharded weights
    if state().is_main_process and partial.exists():
        shutil.rmtree(partial)
    state().wait_for_everyone()
    trainer.save_model(str(partial))
    state().wait_for_everyone()
    if state().is_main_process:
        for name in UNSAFE_FILES:
            (partial / name).unlink(missing_ok=True)
        write_json(partial / RUN_INFO, info)
        make_readable(partial)
        replace_folder(partial, final)
    state().wait_for_everyone()
    return final


def make_readable(folder: Path) -> None:
    """Files 0644 and folders 0755: safetensors writes 0600, which a server running as another user cannot
    read."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


__all__ = [
    "FINAL",
    "RUN_INFO",
    "UNSAFE_FILES",
    "generated_file",
    "make_readable",
    "model_folder",
    "official_file",
    "read_sources",
    "run_info",
    "save_final",
    "split_eval",
    "start",
    "state",
    "write_json",
]
