"""Training the sandbox agents end to end with the project's own SFT and GRPO scripts (short version)."""

import json

import pytest


@pytest.mark.slow
def test_the_short_recipe_trains_every_agent_with_the_project_scripts(tmp_path):
    from interleave_thinker.sandbox.train import train

    tables = train(tmp_path / "work", short=True)
    work = tmp_path / "work"
    for name in ("planner-sft", "critic-sft", "critic-grpo"):
        final = work / name / "final"
        assert (final / "model.safetensors").is_file() and (final / "run.json").is_file()
        assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))  # safetensors and JSON only
        assert (final / "model.safetensors").stat().st_size < 8 * 2**20  # small enough to ship
    for name in ("planner-sft", "critic-sft"):
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        assert any("train_loss" in row for row in rows)
    assert "| metric | no critic | critic-sft | critic-grpo |" in tables["critic"]
    assert "valid-plan rate" in tables["planner"]
    results = json.loads((work / "eval-critic" / "results.json").read_text())
    assert [r["name"] for r in results] == ["no critic", "critic-sft", "critic-grpo"]
