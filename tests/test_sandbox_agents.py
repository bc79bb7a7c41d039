"""Sandbox tasks, the oracle agents in the engine's loop, the evaluation and the teacher data."""

import json

import pytest
from helpers import ScriptedAgent, verdict_text
from PIL import Image

from interleave_thinker.core.loop import LoopConfig, run_story
from interleave_thinker.core.messages import critic_messages, planner_messages
from interleave_thinker.core.protocol import parse_plan, parse_verdict
from interleave_thinker.sandbox.evaluate import evaluate, format_table, plan_fits, score_story, write_reports
from interleave_thinker.sandbox.generator import SandboxGenerator
from interleave_thinker.sandbox.grading import judge_step, judge_text
from interleave_thinker.sandbox.language import apply, is_precise
from interleave_thinker.sandbox.oracle import (
    TEACHER_STYLES,
    OracleCritic,
    OraclePlanner,
    TeacherCritic,
    teacher_verdict,
    verdict_for,
)
from interleave_thinker.sandbox.tasks import (
    KINDS,
    load_tasks,
    make_tasks,
    read_request,
    save_tasks,
)
from interleave_thinker.sandbox.world import EMPTY, Obj, Scene, read, render


@pytest.fixture(scope="module")
def test_tasks():
    return make_tasks("test", 60)


# ---------------------------------------------------------------------------------------------------------
# Tasks


def test_train_and_test_share_no_instruction_and_are_reproducible():
    train, test = make_tasks("train", 400), make_tasks("test", 60)
    assert not {t.instruction for t in train} & {t.instruction for t in test}
    assert len({t.instruction for t in train}) == 400 and len({t.id for t in test}) == 60
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert [t.to_dict() for t in make_tasks("test", 60)] == [t.to_dict() for t in test]
    assert {t.kind for t in test} == set(KINDS)
    assert make_tasks("test", 5, seed=1)[0].instruction != test[0].instruction


def test_every_task_is_consistent_with_its_ground_truth(test_tasks):
    for task in test_tasks:
        request = read_request(task.instruction)
        assert request is not None and request.kind == task.kind
        assert task.instruction.count("<image>") == len(task.input_images()) == len(task.given)
        before = EMPTY
        shown = task.given if task.kind == "continue" else ()
        sentences = list(shown) + list(task.steps) if task.kind != "describe" else list(task.steps)
        for sentence, scene in zip(sentences, task.scenes):
            assert apply(sentence, before) == scene
            before = scene
        if task.kind == "continue":
            assert read(task.input_images()[-1]) == task.start


def test_tasks_save_and_load(tmp_path, test_tasks):
    path = save_tasks(test_tasks[:10], tmp_path / "tasks.jsonl")
    assert [t.to_dict() for t in load_tasks(path)] == [t.to_dict() for t in test_tasks[:10]]
    path.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="tasks.jsonl:1"):
        load_tasks(path)


# ---------------------------------------------------------------------------------------------------------
# Oracle agents through the engine's own messages


def test_oracle_planner_plans_every_kind_in_the_official_format(test_tasks):
    planner = OraclePlanner()
    for task in test_tasks:
        messages = planner_messages(task.instruction, task.input_images(), task.mode)
        plan = parse_plan(planner.complete(messages, seed=0))
        assert plan_fits(task, plan), task.instruction
        if task.kind == "describe":
            befores = [EMPTY] + list(task.scenes[:-1])
            for step, before, after in zip(plan.steps, befores, task.scenes):
                assert judge_text(step.auxiliary_text, before, after) and step.auxiliary_text.endswith(".")
        else:
            assert [s.prompt for s in plan.steps] == list(task.steps)
            assert plan.steps[0].step_number == task.first_step_number


def test_oracle_critic_accepts_right_pictures_and_rewrites_wrong_ones_precisely():
    critic = OracleCritic()
    before_scene = Scene.of({"centre": Obj("circle", "red", "large")})
    before = render(before_scene)
    step = "add a small blue square to the right of the red circle"
    right = render(before_scene.with_cell(5, Obj("square", "blue", "small")))
    wrong = render(before_scene.with_cell(1, Obj("square", "blue", "small")))
    accepted = parse_verdict(critic.complete(critic_messages(before, right, step, step), seed=0))
    asked = "add a small blue square at the right"
    assert accepted.accepted and accepted.refine_prompt == step
    scene = "a large red circle at the centre; a small blue square at the right"
    marked = "a large red circle at the centre ok; a small blue square at the right ok"
    assert accepted.reasoning == f"Seen: {scene}. Asked: {asked}. Expected: {marked}. Extra: nothing. Done."
    rejected = parse_verdict(critic.complete(critic_messages(before, wrong, step, step), seed=0))
    assert not rejected.accepted
    # The reasoning lists the picture seen and the change asked, marks each expected object found at its place
    # or missing, and lists what was drawn where nothing was expected.
    seen = "a small blue square at the top; a large red circle at the centre"
    marked = "a large red circle at the centre ok; a small blue square at the right missing"
    extra = "a small blue square at the top"
    assert (
        rejected.reasoning == f"Seen: {seen}. Asked: {asked}. Expected: {marked}. Extra: {extra}. Not done."
    )
    assert is_precise(rejected.refine_prompt)
    redrawn = SandboxGenerator().edit(before, rejected.refine_prompt, seed=123)
    assert judge_step(step, before, redrawn).success


def test_the_teacher_critic_judges_as_the_oracle_and_refines_like_a_good_imperfect_model():
    """Its verdicts are the oracle's; half its refined prompts are precise and always draw right, the rest are
    vague in ways the generator punishes, so some of the retries they cause go wrong."""
    generator = SandboxGenerator()
    styles = {"precise": 0, "vague": 0}
    retries_wrong = {"precise": 0, "vague": 0}
    for task in make_tasks("train", 120, kinds=("build",)):
        before = EMPTY
        for step, after in zip(task.steps, task.scenes):
            drawn = read(
                generator.text_to_image(step, width=96, height=96, seed=1)
                if before == EMPTY
                else generator.edit(render(before), step, seed=1)
            )
            oracle, teacher = (
                verdict_for(before, drawn, step, step),
                teacher_verdict(before, drawn, step, step),
            )
            assert (teacher.accepted, teacher.reasoning) == (oracle.accepted, oracle.reasoning)
            assert teacher == teacher_verdict(before, drawn, step, step)  # a relabelled storyboard agrees
            if not oracle.accepted and oracle.refine_prompt != step:
                style = "precise" if teacher.refine_prompt == oracle.refine_prompt else "vague"
                assert (style == "precise") == is_precise(teacher.refine_prompt)
                styles[style] += 1
                retry = read(
                    generator.text_to_image(teacher.refine_prompt, width=96, height=96, seed=2)
                    if before == EMPTY
                    else generator.edit(render(before), teacher.refine_prompt, seed=2)
                )
                retries_wrong[style] += not judge_step(step, before, retry).success
            before = after
    rewrites = sum(styles.values())
    assert rewrites > 100
    assert abs(styles["precise"] / rewrites - TEACHER_STYLES["precise"]) < 0.1
    assert retries_wrong["precise"] == 0 and retries_wrong["vague"] > 0.15 * styles["vague"]
    answer = TeacherCritic().complete(
        critic_messages(render(EMPTY), render(EMPTY), "draw a red circle", ""), seed=0
    )
    assert not parse_verdict(answer).accepted


def test_oracle_agents_refuse_messages_that_are_not_sandbox_calls():
    from interleave_thinker.sandbox.oracle import OracleError

    with pytest.raises(OracleError):
        OracleCritic().complete([{"role": "user", "content": "hello"}], seed=0)
    with pytest.raises(OracleError):
        OraclePlanner().complete([{"role": "user", "content": "hello"}], seed=0)


def test_the_loop_with_oracle_agents_is_deterministic(test_tasks):
    task = next(t for t in test_tasks if t.kind == "build")
    config = LoopConfig(width=96, height=96, seed=5)

    def story():
        return run_story(task.instruction, OraclePlanner(), SandboxGenerator(), OracleCritic(), config=config)

    first, second = story(), story()
    assert [a.image.tobytes() for a in first.attempts] == [a.image.tobytes() for a in second.attempts]
    assert [a.prompt for a in first.attempts] == [a.prompt for a in second.attempts]


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def test_the_refine_loop_raises_step_success_by_twenty_points(test_tasks, tmp_path):
    none = evaluate(test_tasks, OraclePlanner(), None, name="no critic")
    oracle = evaluate(test_tasks, OraclePlanner(), OracleCritic(), name="oracle critic")
    assert none.valid_plan_rate == oracle.valid_plan_rate == 1.0
    assert oracle.step_success - none.step_success >= 0.20
    assert oracle.verdict_accuracy >= 0.99 and oracle.reject_recall >= 0.99
    assert none.attempts_per_step == 1.0 and oracle.attempts_per_step > 1.0
    table = format_table([none, oracle])
    for row in (
        "valid-plan rate",
        "step success",
        "story success",
        "attempts per step",
        "critic verdict accuracy",
        "rejection precision",
        "rejection recall",
    ):
        assert row in table
    paths = write_reports([none, oracle], tmp_path / "eval")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(paths["results"].read_text())
    assert results[0]["name"] == "no critic" and results[0]["verdict_accuracy"] is None


def test_verdict_metrics_count_a_critic_that_accepts_everything(test_tasks):
    lenient = ScriptedAgent([verdict_text(True)], name="lenient")
    report = evaluate(test_tasks[:30], OraclePlanner(), lenient)
    assert report.reject_recall == 0.0 and report.attempts_per_step == 1.0
    wrong = sum(not right for r in report.results for _, right in r.verdicts)
    assert wrong > 0 and report.verdict_accuracy == pytest.approx(1 - wrong / report.judged_attempts)


def test_a_bad_plan_fails_its_task(test_tasks):
    task = next(t for t in test_tasks if t.kind == "build")
    garbage = ScriptedAgent(["I would rather not."], name="garbage")
    report = evaluate([task], garbage, None)
    assert report.valid_plan_rate == 0.0 and report.step_success == 0.0 and report.results[0].error
    short = score_story(task, None, "no plan")
    assert short.steps == [False] * len(task.steps) and not short.success


# ---------------------------------------------------------------------------------------------------------
# Teacher data


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory):
    from interleave_thinker.sandbox.teacher import build

    out = tmp_path_factory.mktemp("teacher")
    return out, build(out, tasks=40)


def test_teacher_data_reads_back_with_the_training_readers(teacher_data):
    from interleave_thinker.training.data import read_critic_rl, read_critic_sft, read_planner_sft

    out, paths = teacher_data
    planner, report = read_planner_sft(paths["planner_sft"], raw_instructions=False, on_bad_row="error")
    assert report.kept == 40 and {e.mode for e in planner} == {"narrative", "guidance"}
    critic, report = read_critic_sft(paths["critic_sft"], on_bad_row="error")
    rl, rl_report = read_critic_rl(paths["critic_rl"], on_bad_row="error")
    assert report.kept == rl_report.kept > 40
    accepted = [e.verdict.accepted for e in critic]
    assert 0.2 < sum(accepted) / len(accepted) < 0.9  # both verdicts are well represented
    retries = {True: 0, False: 0}
    for sft, row in zip(critic, rl):
        assert sft.verdict.accepted == row.success
        assert row.success == (row.semantics == 10 and row.quality == 10)
        if sft.prompt_used != sft.original_instruction:
            retries[row.success] += 1
    # The teacher's refined prompts are not all precise, so its retries go wrong as well as right: a Critic
    # learns to judge a retry against the step.
    assert retries[True] > 0 and retries[False] > 0
    rejected = [e.verdict.refine_prompt for e in critic if not e.verdict.accepted]
    assert 0.3 < sum(map(is_precise, rejected)) / len(rejected) < 0.9


def test_teacher_rows_are_official_sharegpt_with_parseable_answers(teacher_data):
    out, paths = teacher_data
    rows = json.loads(paths["planner_sft"].read_text())
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].count("<image>") == len(row["images"])
        assert assistant["content"].startswith("<think>")
        parse_plan(assistant["content"])
        for image in row["images"]:
            assert (out / image).is_file()
    for row in json.loads(paths["critic_sft"].read_text()):
        assert row["messages"][0]["content"].startswith("<image><image>") and len(row["images"]) == 2
        parse_verdict(row["messages"][1]["content"])
    for line in paths["critic_rl"].read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {
            "origin_prompt",
            "rewritten_prompt",
            "origin_image_path",
            "edited_image_path",
            "evaluation",
        }
        assert set(row["evaluation"]) == {"success", "semantics", "quality"}


def test_the_flywheel_relabels_storyboards_made_by_any_critic(tmp_path):
    """A lenient Critic accepted everything; the oracle's labels say which of those pictures were wrong."""
    from interleave_thinker.sandbox.evaluate import run_task
    from interleave_thinker.sandbox.teacher import relabel_critic
    from interleave_thinker.training.data import read_storyboards

    lenient = ScriptedAgent([verdict_text(True)], name="lenient")
    for task in make_tasks("train", 25, kinds=("build",)):
        story, _ = run_task(task, OraclePlanner(), lenient)
        story.save(tmp_path / task.id)
    judged, _ = read_storyboards(tmp_path, "critic")
    assert judged and all(e.verdict.accepted for e in judged)
    sft, rl = relabel_critic(judged)
    wrong = [e for e in sft if not e.verdict.accepted]
    assert wrong and len(wrong) == sum(not r.success for r in rl)
    fixable = [e for e in wrong if is_precise(e.verdict.refine_prompt)]
    assert fixable  # the rest could not be carried out at all: an earlier accepted picture was wrong
    for example in fixable:
        before = example.before if isinstance(example.before, Image.Image) else Image.open(example.before)
        before = before.convert("RGB")
        prompt = example.verdict.refine_prompt
        redrawn = (
            SandboxGenerator().text_to_image(prompt, width=96, height=96, seed=0)
            if read(before) == EMPTY
            else SandboxGenerator().edit(before, prompt, seed=0)
        )
        assert judge_step(example.original_instruction, before, redrawn).success
