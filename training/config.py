"""Run configuration: a YAML file, ``--set key=value`` overrides, checked before anything heavy starts.

Sections shared by ``sft`` and ``grpo``::

    role: critic                 # planner | critic (GRPO trains the Critic only)
    model: models/LLM/base       # a local model folder, a LoRA adapter folder, or "tiny" (built here)
    base_model: null             # the base folder of an adapter, when its adapter_config.json has none
    output_dir: runs/critic-sft
    seed: 0
    dtype: auto                  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    finetune: full               # full | lora
    freeze_vision: true          # the vision tower and its projector stay as they are
    lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: null}
    templates: {}                # own template files by role: narrative, guidance, critic
    source_templates: []         # [{role: critic, path: ...}] templates old data was written with
    data:
      train: [{format: sharegpt, path: data/critic_sft.json, image_dir: data}]
      eval: []                   # same form; empty: hold out eval.samples rows of train
      max_pixels: 1048576        # per image; larger images are shrunk
      on_bad_row: skip           # skip | error
      keep_reasoning: true       # keep the <think> block of the answers
      verify_images: true
      limit: null                # use at most this many rows
    eval: {samples: 0, max_new_tokens: 512}
    trainer: {}                  # any field of trl.SFTConfig / trl.GRPOConfig

Data source formats: ``sharegpt`` (Planner or Critic SFT, by role), ``critic_rl`` (GRPO), ``storyboard``
(a saved storyboard or a folder of them) and ``generated``: data written for the run by a function,
``{format: generated, target: "package.module:function", options: {...}}``. Training calls
``function(folder, files, **options)``, which writes at least the official files named in ``files``
(``planner_sft.json``, ``critic_sft.json``, ``critic_rl.jsonl``, pictures beside them) into ``folder``, a
fresh folder under ``<output_dir>/data``; ``interleave_thinker.sandbox.teacher:write_sets`` writes the
sandbox teacher's data this way (the tiny profiles use it). Relative paths are relative to the working
directory.
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import BadInput
from ..core.settings import DTYPES

FORMATS = ("sharegpt", "critic_rl", "storyboard", "generated")
_SOURCE_KEYS = {"format", "path", "image_dir", "raw_instructions", "target", "options"}


class ConfigError(BadInput):
    """A configuration that cannot run; the message names the key and what to write instead."""


class _Loader(yaml.SafeLoader):
    """YAML as people write it: ``2e-5`` is a number (YAML 1.1 would read a string without a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only, never Python objects


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = _yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs onto a copy of ``config``; values are read as YAML (numbers, true, lists)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.max_steps=10)")
        try:
            value = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: cannot read the value: {error}") from None
        node = config
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return config


def load(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    return apply_overrides(read_yaml(path) if path else {}, list(overrides))


def _check_keys(section: str, data: Any, allowed) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{section}' must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in '{section}': {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return data


def _build(cls, section: str, data: Any):
    data = _check_keys(section, data, [f.name for f in fields(cls)])
    try:
        return cls(**data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"'{section}': {error}") from None


def check_target(target: Any, what: str = "Class") -> str:
    """A ``package.module:name`` string, or a ConfigError that shows the form."""
    module, _, name = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not module or not name:
        raise ConfigError(f"target {target!r} must look like 'package.module:{what}'")
    return target


def import_object(target: str, what: str = "Class"):
    """The object a ``package.module:name`` target names (a generator, a judge, a data function)."""
    module, _, name = check_target(target, what).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import {target}: {error}") from None


@dataclass
class Source:
    format: str
    path: str | None = None
    image_dir: str | None = None
    raw_instructions: bool = True
    target: str | None = None  # generated: "package.module:function"
    options: dict[str, Any] = field(default_factory=dict)  # generated: the function's keyword arguments

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format != "generated":
            if self.target is not None or self.options:
                raise ValueError(f"target and options belong to generated sources, not to {self.format}")
            if not self.path:
                raise ValueError(f"a {self.format} source needs a path")
            return
        if not self.target:
            raise ValueError("a generated source needs target: 'package.module:function'")
        if self.path or self.image_dir:
            raise ValueError(
                "a generated source is written for the run into <output_dir>/data; leave out path and "
                "image_dir"
            )
        if self.options is None:
            self.options = {}
        if not isinstance(self.options, dict) or not all(isinstance(key, str) for key in self.options):
            raise ValueError("options of a generated source must be a mapping of keyword arguments")
        check_target(self.target, "function")


@dataclass
class DataSettings:
    train: list[Source] = field(default_factory=list)
    eval: list[Source] = field(default_factory=list)
    max_pixels: int = 1024 * 1024
    on_bad_row: str = "skip"
    keep_reasoning: bool = True
    verify_images: bool = True
    limit: int | None = None

    def __post_init__(self) -> None:
        self.train = [self._source(s, "data.train") for s in self.train or []]
        self.eval = [self._source(s, "data.eval") for s in self.eval or []]
        if not self.train:
            raise ValueError(
                "data.train lists no source; add e.g. {format: sharegpt, path: data/critic_sft.json}"
            )
        if self.on_bad_row not in ("skip", "error"):
            raise ValueError(f"on_bad_row must be skip or error, got {self.on_bad_row!r}")
        if self.max_pixels < 32 * 32:
            raise ValueError(f"max_pixels must be at least 1024, got {self.max_pixels}")

    @staticmethod
    def _source(data: Any, section: str) -> Source:
        if isinstance(data, Source):
            return data
        return Source(**_check_keys(section, data, _SOURCE_KEYS))


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = None


@dataclass
class EvalSettings:
    samples: int = 0
    max_new_tokens: int = 512
    batch_size: int = 8


@dataclass
class RunSettings:
    """What ``sft`` and ``grpo`` share; each script adds its own sections."""

    role: str
    model: str
    output_dir: str
    base_model: str | None = None
    seed: int = 0
    dtype: str = "auto"
    finetune: str = "full"
    freeze_vision: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)
    templates: dict[str, str] = field(default_factory=dict)
    source_templates: list[dict[str, str]] = field(default_factory=list)
    data: DataSettings | None = None
    eval: EvalSettings = field(default_factory=EvalSettings)
    trainer: dict[str, Any] = field(default_factory=dict)

    SECTIONS = {"lora": LoraSettings, "eval": EvalSettings, "data": DataSettings}

    @classmethod
    def from_dict(cls, data: dict[str, Any], extra: dict[str, type] | None = None):
        data = dict(data)
        sections = {**cls.SECTIONS, **(extra or {})}
        missing = [k for k in ("role", "model", "output_dir") if not data.get(k)]
        if missing:
            raise ConfigError(f"the config needs {', '.join(missing)}")
        if "data" not in data:
            raise ConfigError("the config needs a 'data' section with a 'train' list")
        _check_keys("config", data, [f.name for f in fields(cls)])
        for name, kind in sections.items():
            if name in data and not isinstance(data[name], kind):
                data[name] = _build(kind, name, data[name])
        try:
            settings = cls(**data)
        except TypeError as error:
            raise ConfigError(str(error)) from None
        settings.check()
        return settings

    def check(self) -> None:
        if self.role not in ("planner", "critic"):
            raise ConfigError(f"role must be planner or critic, got {self.role!r}")
        if self.finetune not in ("full", "lora"):
            raise ConfigError(f"finetune must be full or lora, got {self.finetune!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be auto, bf16, fp16 or fp32, got {self.dtype!r}")
        if not isinstance(self.trainer, dict):
            raise ConfigError("'trainer' must be a mapping of trl config fields")
        for item in self.source_templates:
            if not isinstance(item, dict) or set(item) != {"role", "path"}:
                raise ConfigError("each source_templates entry needs exactly 'role' and 'path'")

    def source_template_pairs(self) -> list[tuple[str, str]]:
        return [(item["role"], item["path"]) for item in self.source_templates]


def trainer_args(config_class, settings: RunSettings, defaults: dict[str, Any]):
    """A TRL config from the defaults and the ``trainer`` section (which wins); a clear error for typos."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(settings.trainer) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in 'trainer': {', '.join(unknown)} (not fields of {config_class.__name__})"
        )
    values = {**defaults, **settings.trainer, "output_dir": settings.output_dir}
    values.setdefault("seed", settings.seed)
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"'trainer': {error}") from None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The package version and, in a git checkout, the commit: recorded with every run and export."""
    from importlib import metadata

    # The distribution that installed this package, whatever it is called (it was renamed once).
    names = metadata.packages_distributions().get("interleave_thinker") or ["interleave-thinker"]
    try:
        version = metadata.version(names[0])
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0:
            commit = result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": version, "git": commit}


__all__ = [
    "ConfigError",
    "DataSettings",
    "EvalSettings",
    "LoraSettings",
    "RunSettings",
    "Source",
    "apply_overrides",
    "check_target",
    "code_version",
    "import_object",
    "load",
    "read_yaml",
    "trainer_args",
]
