"""The shipped tiny agents: what they are, what they do, and that the project's scripts reproduce them."""

import json

import pytest


def test_the_shipped_agents_are_small_safetensors_folders_the_engine_loads():
    from interleave_thinker.core.agents import load_agent
    from interleave_thinker.sandbox.shipped import SHIPPED, shipped

    for name in SHIPPED:
        folder = shipped(name)
        assert folder is not None, f"sandbox/agents/{SHIPPED[name]} is missing: run sandbox.train --install"
        assert (folder / "model.safetensors").stat().st_size < 8 * 2**20  # small enough to ship
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # safetensors and JSON only
        run = json.loads((folder / "run.json").read_text())
        assert run["role"] == ("planner" if name == "shipped" else "critic")
        assert load_agent(str(folder)).name


@pytest.mark.slow
def test_the_shipped_planner_gives_a_valid_plan_for_every_test_task():
    from interleave_thinker.sandbox.evaluate import evaluate
    from interleave_thinker.sandbox.shipped import load
    from interleave_thinker.sandbox.tasks import make_tasks

    report = evaluate(make_tasks("test", 40), load("shipped", "planner"), None)
    assert report.valid_plan_rate >= 0.99, [r.error for r in report.results if not r.plan_valid]


@pytest.mark.slow
def test_retraining_the_short_recipe_lands_in_the_recorded_band(tmp_path):
    from interleave_thinker.sandbox.train import compare, comparison_table, recorded, train

    reference = recorded("short")
    assert reference, "sandbox/agents/metrics.json records no short run: run sandbox.train --install"
    work = tmp_path / "work"
    result = train(work, short=True)
    for name in ("planner-sft", "critic-sft", "critic-grpo"):
        final = work / name / "final"
        assert (final / "model.safetensors").is_file() and (final / "run.json").is_file()
    for name in ("planner-sft", "critic-sft"):
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        assert any("train_loss" in row for row in rows)
    assert "| metric | no critic | critic-sft | critic-grpo |" in result["critic"]
    results = json.loads((work / "eval-critic" / "results.json").read_text())
    assert [r["name"] for r in results] == ["no critic", "critic-sft", "critic-grpo"]
    # The headline metrics are the evaluations' own numbers, written next to them.
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics == result["metrics"]
    assert metrics["no critic step success"] == results[0]["step_success"]
    # A few minutes of training already teach the Planner the plan format for some tasks (an untrained one
    # gives none): the band is not a band around nothing. 150 steps on plans of up to 12 steps reach 25%.
    assert metrics["planner valid-plan rate"] >= 0.2
    # ... and the Critic to reject pictures: the band is not one around a Critic that accepts everything.
    assert results[1]["attempts_per_step"] > 1.0
    rows = compare(metrics, reference)
    assert all(ok for *_, ok in rows), "\n" + comparison_table(rows)


def test_the_band_check_names_every_metric_that_left_it():
    from interleave_thinker.sandbox.train import BAND, compare, comparison_table

    reference = {
        "planner valid-plan rate": 1.0,
        "SFT critic verdict accuracy": 0.6,
        "GRPO critic verdict accuracy": None,
    }
    measured = {
        "planner valid-plan rate": 1.0 - BAND,
        "SFT critic verdict accuracy": 0.6 + 2 * BAND,
        "GRPO critic verdict accuracy": 0.5,
    }
    rows = compare(measured, reference)
    assert [ok for *_, ok in rows] == [True, False, False]
    table = comparison_table(rows)
    assert "| SFT critic verdict accuracy | 60.0% | 80.0% | NO |" in table
    assert "| GRPO critic verdict accuracy | – | 50.0% | NO |" in table


def test_a_resumed_run_skips_the_steps_already_done(tmp_path, capsys):
    from interleave_thinker.sandbox.train import _run

    done = tmp_path / "final"
    done.mkdir()
    _run(["false"], tmp_path / "log", done)  # would fail if it ran
    assert f"(done, {done} exists)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="step failed"):
        _run(["false"], tmp_path / "log")


def test_install_refuses_the_short_recipe(capsys):
    from interleave_thinker.sandbox.train import main

    with pytest.raises(SystemExit) as raised:
        main(["--short", "--install"])
    assert raised.value.code == 2 and "leave out --short" in capsys.readouterr().err
