"""The shipped profiles and launcher configs, and how a config file is read and overridden."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

import interleave_thinker.training as training
from interleave_thinker.training import config
from interleave_thinker.training.grpo import GRPOSettings

CONFIGS = Path(training.__file__).resolve().parent / "configs"
GENERATED = {"format": "generated", "target": "interleave_thinker.sandbox.teacher:write_sets"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_profile_is_a_valid_run(path):
    from trl import GRPOConfig, SFTConfig

    grpo = path.name.startswith("grpo")
    settings = (GRPOSettings if grpo else config.RunSettings).from_dict(config.load(path))
    known = {f.name for f in fields(GRPOConfig if grpo else SFTConfig)}
    assert set(settings.trainer) <= known


def test_the_paper_settings_are_the_papers():
    planner = config.load(CONFIGS / "sft_planner_paper.yaml")["trainer"]
    critic = config.load(CONFIGS / "sft_critic_paper.yaml")["trainer"]
    for trainer in (planner, critic):
        assert trainer["learning_rate"] == 2e-5
        assert (trainer["lr_scheduler_type"], trainer["warmup_steps"]) == ("cosine", 0.1)
        assert trainer["bf16"] is True
    assert (planner["num_train_epochs"], critic["num_train_epochs"]) == (3, 2)
    grpo = config.load(CONFIGS / "grpo_critic_paper.yaml")
    assert grpo["reward"]["weights"] == {"format": 0.5, "accuracy": 0.1, "semantics": 0.3, "quality": 0.1}
    assert (
        grpo["trainer"]["num_generations"],
        grpo["trainer"]["learning_rate"],
        grpo["trainer"]["beta"],
    ) == (8, 2e-6, 0.0)


@pytest.mark.parametrize(
    "name, kind", [("single_gpu", "NO"), ("ddp", "MULTI_GPU"), ("zero3", "DEEPSPEED"), ("fsdp2", "FSDP")]
)
def test_launcher_configs(name, kind):
    data = yaml.safe_load((CONFIGS / "accelerate" / f"{name}.yaml").read_text())
    assert data["distributed_type"] == kind
    if kind == "DEEPSPEED":
        assert (
            data["deepspeed_config"]["zero_stage"] == 3 and data["deepspeed_config"]["zero3_save_16bit_model"]
        )
    if kind == "FSDP":
        assert data["fsdp_config"]["fsdp_version"] == 2
        assert data["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_overrides_reach_nested_keys_and_read_values_as_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("role: critic\ntrainer: {max_steps: 5}\n", encoding="utf-8")
    raw = config.load(
        path,
        [
            "trainer.max_steps=10",
            "trainer.report_to=[]",
            "trainer.learning_rate=2e-5",
            "data.limit=4",
            "model=folder",
        ],
    )
    assert raw == {
        "role": "critic",
        "trainer": {"max_steps": 10, "report_to": [], "learning_rate": 2e-5},
        "data": {"limit": 4},
        "model": "folder",
    }
    with pytest.raises(config.ConfigError, match="key=value"):
        config.load(path, ["trainer.max_steps"])
    with pytest.raises(config.ConfigError, match="not a section"):
        config.load(path, ["role.name=x"])
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "absent.yaml")


def test_settings_name_what_is_wrong():
    base = {
        "role": "critic",
        "model": "m",
        "output_dir": "o",
        "data": {"train": [{"format": "sharegpt", "path": "x"}]},
    }
    assert config.RunSettings.from_dict(base).data.train[0].path == "x"
    for change, message in [
        ({"role": "painter"}, "role must be planner or critic"),
        ({"colour": 1}, "unknown key"),
        ({"data": {"train": []}}, "lists no source"),
        ({"data": {"train": [{"format": "parquet", "path": "x"}]}}, "data format must be one of"),
        ({"data": {"train": [{"format": "sharegpt"}]}}, "needs a path"),
        ({"data": {"train": [{"format": "generated"}]}}, "needs target: 'package.module:function'"),
        ({"data": {"train": [{"format": "generated", "target": "teacher"}]}}, "must look like"),
        ({"data": {"train": [{**GENERATED, "path": "x"}]}}, "leave out path and image_dir"),
        ({"data": {"train": [{**GENERATED, "options": [8]}]}}, "mapping of keyword arguments"),
        ({"data": {"train": [{"format": "sharegpt", "path": "x", "options": {"count": 8}}]}}, "belong to"),
        ({"data": {"train": [{"format": "sharegpt", "path": "x"}], "on_bad_row": "ignore"}}, "skip or error"),
        ({"lora": {"rank": 4}}, "unknown key"),
    ]:
        with pytest.raises(config.ConfigError, match=message):
            config.RunSettings.from_dict({**base, **change})


def test_the_tiny_model_is_built_once_into_the_run_folder(tmp_path):
    from interleave_thinker.training.runs import model_folder

    base = {
        "role": "critic",
        "model": "tiny",
        "output_dir": str(tmp_path),
        "data": {"train": [GENERATED]},
    }
    folder = model_folder(config.RunSettings.from_dict(base))
    assert folder == tmp_path / "tiny-base" and (folder / "config.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_folder(config.RunSettings.from_dict(base)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
