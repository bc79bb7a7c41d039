"""``interleave-thinker demo`` and ``eval`` end to end, in temporary folders."""

import html
import json
import re

import pytest
from helpers import ChatServer

from interleave_thinker.cli import main
from interleave_thinker.core.storyboard import UNCHECKED, Storyboard
from interleave_thinker.sandbox.grading import judge_step
from interleave_thinker.sandbox.tasks import load_tasks
from interleave_thinker.sandbox.world import read


def test_demo_writes_browsable_storyboards(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quiet"]) == 0
    out = tmp_path / "interleave-demo"  # the default folder
    summary = json.loads((out / "demo.json").read_text())
    page = (out / "index.html").read_text()
    printed = capsys.readouterr().out
    assert "steps right" in printed
    for role in ("Planner", "Critic"):  # oracle stand-ins are labelled as such, on the page and in the output
        label = summary["agents"][role]
        if "oracle" in label:
            assert "not a trained model" in label and label in html.unescape(page) and label in printed
    assert {s["folder"] for s in summary["stories"]} == {s["task"] for s in summary["stories"]}
    assert {s["kind"] for s in summary["stories"]} == {"build", "continue", "describe"}
    for story in summary["stories"]:
        assert f'href="{story["folder"]}/index.html"' in page
        board = Storyboard.load(out / story["folder"])
        assert (out / story["folder"] / "index.html").is_file()
        if "oracle" in summary["agents"]["Critic"] and "oracle" in summary["agents"]["Planner"]:
            assert story["steps_right"] == story["steps"]  # the oracle agents get every step right
        for step in board.steps:
            for attempt in step.attempts:
                # The Critic saw every attempt: a verdict, or its words kept with why they did not parse.
                if attempt.verdict is None:
                    assert attempt.status == UNCHECKED and attempt.critic_output and attempt.critic_error
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).is_file(), src
    # A second run replaces the first without complaint.
    assert main(["demo", "--quiet", "--tasks", "2"]) == 0


def test_eval_prints_the_table_and_writes_a_plot(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--tasks",
            "40",
            # The oracle's plans: what the loop adds is measured apart from the Planner's own drift.
            "--planner",
            "oracle",
            "--critic",
            "none",
            "--critic",
            "oracle",
            "--out",
            str(out),
            "--quiet",
            "--save-storyboards",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| metric | no critic | oracle critic |" in printed
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in printed.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    none, oracle = (float(v.rstrip("%")) for v in rows["step success"])
    assert oracle - none >= 20
    assert rows["critic verdict accuracy"][0] == "–"
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "table.md").read_text().startswith("| metric |")
    saved = sorted((out / "storyboards" / "oracle-critic").iterdir())
    assert len(saved) == 40  # one storyboard per task


def test_eval_scores_saved_storyboards_with_the_oracle_and_with_an_http_judge(tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            ["eval", "--tasks", "12", "--critic", "none", "--out", str(out), "--quiet", "--save-storyboards"]
        )
        == 0
    )
    boards = out / "storyboards" / "no-critic"
    capsys.readouterr()
    assert main(["eval", "--storyboards", str(boards), "--out", str(tmp_path / "scores"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "image rate" in printed and "judge sandbox-oracle" in printed
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert len(scores) == 12
    # The oracle's intent check agrees with judging the kept picture against the step, story by story.
    for score in scores:
        board = Storyboard.load(score["folder"])
        for index, step in enumerate(board.steps):
            if step.image is None:
                continue
            intent = next(c for c in score["checks"] if c["step"] == step.number and c["kind"] == "intent")
            truth = judge_step(step.plan_step.instruction, read(board.before_image(index)), step.image)
            assert intent["met"] == (truth.intent == 10)

    asked = []

    def reply(request, n):
        asked.append(request)
        return '<answer>{"criteria_met": true}</answer>' if n % 2 == 0 else "not sure at all"

    with ChatServer(reply) as server:
        code = main(
            [
                "eval",
                "--storyboards",
                str(boards),
                "--judge",
                server.url,
                "--judge-model",
                "judge",
                "--out",
                str(tmp_path / "vlm"),
                "--quiet",
            ]
        )
    assert code == 0
    scores = json.loads((tmp_path / "vlm" / "scores.json").read_text())
    checks = [c for s in scores for c in s["checks"]]
    assert len(asked) == len(checks) and sum(c["met"] for c in checks) == (len(checks) + 1) // 2
    first = asked[0]["messages"][0]["content"]
    assert [p["type"] for p in first][:2] == ["image_url", "image_url"] and "Rubric:" in first[-1]["text"]


def test_eval_runs_a_saved_task_file(tmp_path, capsys):
    from interleave_thinker.sandbox.tasks import make_tasks, save_tasks

    path = save_tasks(make_tasks("test", 5), tmp_path / "tasks.jsonl")
    assert (
        main(
            ["eval", "--tasks-file", str(path), "--critic", "oracle", "--out", str(tmp_path / "e"), "--quiet"]
        )
        == 0
    )
    assert "5 tasks" in capsys.readouterr().out
    assert len(load_tasks(path)) == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--tasks", "0"], "--tasks"),
        (["eval", "--critic", "grpo-does-not-exist"], "model folder not found: grpo-does-not-exist"),
        (["eval", "--planner", "none"], "Planner cannot be 'none'"),
        (["eval", "--storyboards", "no/such/folder"], "not found"),
        (["demo", "--max-attempts", "0"], "--max-attempts"),
        (["eval", "--tasks-file", "missing.jsonl"], "cannot read tasks file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_the_engine_run_command_draws_with_the_sandbox_generator(tmp_path):
    """``--generator sandbox`` stands where a pipeline folder would; the Planner here is an HTTP endpoint."""
    from interleave_thinker.core.messages import planner_messages
    from interleave_thinker.sandbox.oracle import OraclePlanner

    request = "Build a scene in 2 steps: draw a large red circle at the centre; remove the red circle."
    plan = OraclePlanner().complete(planner_messages(request, mode="narrative"), seed=0)
    with ChatServer(lambda body, n: plan) as server:
        code = main(
            [
                "run",
                request,
                "--planner",
                server.url,
                "--planner-model",
                "p",
                "--critic",
                "none",
                "--generator",
                "sandbox",
                "--width",
                "96",
                "--height",
                "96",
                "--out",
                str(tmp_path / "s"),
                "--quiet",
            ]
        )
    assert code == 0
    board = Storyboard.load(tmp_path / "s")
    assert board.settings["generator"] == "sandbox" and len(board.steps) == 2
    assert read(board.steps[1].image) == read(board.before_image(0))  # the circle came and went


def test_eval_task_ids_from_a_file_stay_inside_out(tmp_path, capsys):
    """A tasks file is data: an id of ``../../../x`` names a folder under --out, never one outside it."""
    from interleave_thinker.sandbox.tasks import make_tasks

    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    rows = [make_tasks("test", 1)[0].to_dict() | {"id": "../../../x"}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "a" / "b" / "out"
    argv = ["eval", "--tasks-file", str(path), "--planner", "oracle", "--critic", "oracle", "--out", str(out)]
    assert main([*argv, "--save-storyboards", "--quiet"]) == 0
    assert (victim / "precious.txt").read_text() == "keep me" and [p.name for p in victim.iterdir()] == [
        "precious.txt"
    ]
    assert Storyboard.is_saved(out / "storyboards" / "oracle-critic" / "x")
    assert load_tasks(path)[0].id == "x"

    # Ids that clean to the same folder, or to nothing: refused, saying where.
    for bad, says in (("x", "already used on line 1"), ("../..", "no usable characters")):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows + [rows[0] | {"id": bad}]))
        capsys.readouterr()
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{path}:2:" in err and says in err, err


class _WrongFirstPrompt:
    """The oracle Planner, except that step 1's prompt draws something else, exactly."""

    name = "oracle planner with a wrong first prompt"
    prompt = "draw a small green diamond at the bottom right; nothing else"

    def complete(self, messages, *, seed, temperature=None, cancel=None):
        from dataclasses import replace

        from interleave_thinker.core.protocol import Plan, parse_plan
        from interleave_thinker.sandbox.oracle import OraclePlanner, answer

        plan = parse_plan(OraclePlanner().complete(messages, seed=seed))
        steps = (replace(plan.steps[0], prompt=self.prompt), *plan.steps[1:])
        return answer("A plan.", Plan(steps).to_dict())


def test_the_demo_shows_the_oracle_beside_a_critic_that_accepted_a_wrong_step(tmp_path):
    from helpers import ScriptedAgent

    from interleave_thinker.sandbox.demo import demo_tasks, run_demo
    from interleave_thinker.sandbox.grading import scene_summary

    yes_man = ScriptedAgent(['<answer>{"previous_step_success": true, "refine_prompt": ""}</answer>'])
    index, _ = run_demo(
        tmp_path, _WrongFirstPrompt(), yes_man, tasks=demo_tasks(3), labels={"Critic": "accepts everything"}
    )
    summary = json.loads((tmp_path / "demo.json").read_text())
    page = html.unescape(index.read_text())
    figures = dict(re.findall(r'<figure class="step[^"]*" id="([^"]+)">(.*?)</figure>', page, re.DOTALL))
    wrong_steps = 0
    for story in summary["stories"]:
        board = Storyboard.load(tmp_path / story["folder"])
        task = next(t for t in demo_tasks(3) if t.id == story["task"])
        story_page = html.unescape((tmp_path / story["folder"] / "index.html").read_text())
        assert "The oracle's check" in story_page  # the storyboard's own page says what the oracle found
        for truth in story["oracle"]:
            if truth["right"]:
                continue
            wrong_steps += 1
            number = truth["number"]
            # What the oracle expected and saw, in its own words for this picture (a later step may ask for
            # what the wrong step 1 left out: the oracle then says it cannot be carried out here).
            index_ = [step.number for step in board.steps].index(number)  # a continued story starts at 3
            score = judge_step(
                task.steps[index_], read(board.before_image(index_)), board.steps[index_].image
            )
            expected, seen = truth["expected"], truth["seen"]
            assert truth["critic"] == "accepted" and seen == scene_summary(score.seen)
            if score.expected is not None:
                assert expected == scene_summary(score.expected)
            else:
                assert "cannot be carried out" in expected
            # On the demo's index and on the storyboard's page, the step never shows only "accepted".
            figure = figures[f"{story['folder']}-step-{number}"]
            step_section = story_page.split(f'id="step-{number}"', 1)[1].split("</section>", 1)[0]
            for shown in (figure, step_section):
                shown = re.sub(r"<[^>]+>", "", shown)  # the words a reader sees
                assert "Critic: accepted, but the oracle marks the step wrong" in shown
                assert "Oracle: wrong" in shown
                assert f"Expected: {expected}" in shown and f"Saw: {seen}" in shown
    assert wrong_steps >= 3  # the first planned step of each story drew the wrong shape, and was accepted
    assert any(
        truth["number"] > 1 and not truth["right"]
        for story in summary["stories"]
        for truth in story["oracle"]
    )
    assert "the Critic accepted" in page  # the headline says so too
