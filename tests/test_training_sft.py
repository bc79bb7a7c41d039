"""SFT on the tiny model: the answer format is learned, the vision tower stays frozen, the curves are kept."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import interleave_thinker.training as training
from interleave_thinker.training.curves import read_metrics
from interleave_thinker.training.runs import RUN_INFO

PROFILES = Path(training.__file__).resolve().parent / "configs"
TEACHER = "interleave_thinker.sandbox.teacher:write_sets"  # the sandbox teacher's data, written for the run


def weights(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def check_run_folder(result, role):
    out, final = result.output_dir, result.final_dir
    assert (final / "config.json").is_file() and (final / "chat_template.jinja").is_file()
    assert not (final / "training_args.bin").exists()  # a pickle: never shipped
    for path in final.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    info = json.loads((final / RUN_INFO).read_text())
    assert info["role"] == role and info["stage"] == "sft"
    assert info["history"][0]["rows"] == result.data.kept
    losses = [row["loss"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert len(losses) >= 10 and losses[-1] < losses[0] / 5
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "data_report.json").read_text())["bad"] == []


@pytest.mark.slow
def test_sft_teaches_the_critic_its_answer_format(trained_critic, tiny_agent_dir):
    # Held-out rows: the share of greedy answers that parse as verdicts.
    assert trained_critic.format_before <= 0.1
    assert trained_critic.format_after >= 0.9
    check_run_folder(trained_critic, "critic")
    base, trained = weights(tiny_agent_dir), weights(trained_critic.final_dir)
    visual = [name for name in base if ".visual." in name]
    assert visual and all((base[name] == trained[name]).all() for name in visual)  # frozen by default
    language = [name for name in base if ".language_model." in name]
    assert sum(not (base[name] == trained[name]).all() for name in language) >= len(language) // 2


@pytest.mark.slow
def test_sft_teaches_the_planner_its_answer_format(trained_planner):
    assert trained_planner.format_before <= 0.1
    assert trained_planner.format_after >= 0.9
    check_run_folder(trained_planner, "planner")


@pytest.mark.slow
def test_the_command_line_trains_with_lora_and_reports_bad_config(tmp_path, tiny_agent_dir, capsys):
    from interleave_thinker.training.sft import main

    config = tmp_path / "lora.yaml"
    config.write_text(
        f"""
role: critic
model: {tiny_agent_dir}
output_dir: {tmp_path / "run"}
finetune: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
data:
  train: [{{format: generated, target: "{TEACHER}", options: {{count: 8, size: 64}}}}]
trainer: {{max_steps: 3, per_device_train_batch_size: 2, learning_rate: 1.0e-3, bf16: false,
          gradient_checkpointing: false, use_cpu: true, disable_tqdm: true}}
""",
        encoding="utf-8",
    )
    assert main(["--config", str(config)]) == 0
    final = tmp_path / "run" / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert "language_model" in str(adapter["target_modules"])  # LoRA stays out of the vision tower
    assert all(".visual." not in name for name in weights(final))
    assert main(["--config", str(config), "--set", "trainer.max_step=3"]) == 2
    assert "unknown key(s) in 'trainer': max_step" in capsys.readouterr().err
    assert main(["--config", str(config), "--set", "finetune=qlora"]) == 2
    assert "finetune must be full or lora" in capsys.readouterr().err
    missing = f"data.train=[{{format: sharegpt, path: {tmp_path}/no.json}}]"
    assert main(["--config", str(config), "--set", missing]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_the_format_check_reports_the_share_of_answers_that_parse(
    tmp_path, tiny_agent_dir, sandbox_examples, capsys
):
    from interleave_thinker.training.data import write_critic_sft
    from interleave_thinker.training.format_rate import is_valid, main

    data = write_critic_sft(tmp_path / "critic.json", sandbox_examples.critic[:3])
    assert (
        main(
            ["--model", str(tiny_agent_dir), "--role", "critic", "--data", str(data), "--max-new-tokens", "8"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == {"valid": 0, "total": 3, "rate": 0.0}  # an untrained model does not answer in the format
    assert is_valid("<answer>{'previous_step_success': True, 'refine_prompt': ''}</answer>", "critic") is None
    assert "invalid plan" in is_valid("<answer>{'previous_step_success': True}</answer>", "planner")


@pytest.mark.slow
def test_the_same_script_runs_data_parallel_under_torchrun(tmp_path, tiny_agent_dir):
    """Two CPU processes (gloo): the launcher changes, the script and its config do not."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "ddp"
    from helpers import free_port

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "interleave_thinker.training.sft",
        "--config",
        str(PROFILES / "sft_critic_tiny_cpu.yaml"),
        "--set",
        f"model={tiny_agent_dir}",
        "--set",
        f"output_dir={out}",
        "--set",
        "eval.samples=0",
        "--set",
        f"data.train=[{{format: generated, target: '{TEACHER}', options: {{count: 16, size: 64}}}}]",
        "--set",
        "trainer.max_steps=4",
        "--set",
        "trainer.logging_steps=1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # A process group of its own, so that a timeout ends the worker processes along with the launcher.
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = launcher.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    assert launcher.returncode == 0, err[-3000:]
    rows = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[1]["epoch"] == 1.0  # 16 rows = 2 steps of 4 rows on each of 2 processes
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / RUN_INFO).is_file()


def test_only_the_answer_is_supervised(tmp_path, tiny_agent_dir, sandbox_examples):
    from trl import SFTConfig, SFTTrainer

    from interleave_thinker.training.data import SFTRows, Templates
    from interleave_thinker.training.models import load_model, load_processor
    from interleave_thinker.training.sft import SFT_DEFAULTS

    rows = SFTRows(sandbox_examples.critic[:2], Templates.load(), max_pixels=64 * 64)
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False, **SFT_DEFAULTS
    )
    processor = load_processor(tiny_agent_dir)
    trainer = SFTTrainer(
        model=load_model(tiny_agent_dir),
        args=args,
        train_dataset=rows.as_dataset(),
        processing_class=processor,
    )
    batch = trainer.data_collator([rows[0], rows[1]])
    for index in range(2):
        supervised = batch["labels"][index][batch["labels"][index] != -100]
        answer = rows[index]["completion"][0]["content"][0]["text"]
        assert processor.tokenizer.decode(supervised).strip() == answer + "<|im_end|>"
    image_token = trainer.model.config.image_token_id
    assert (batch["input_ids"] == image_token).sum() == batch["image_grid_thw"].prod(-1).sum() // 4
