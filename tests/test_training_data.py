"""Training data: the official formats written and read back, rendering through the engine, bad rows named by
file and line, storyboards as training data, and data generated for a run by a function."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import ScriptedAgent, plan_text, verdict_text
from PIL import Image

from interleave_thinker.core.loop import LoopConfig, run_story
from interleave_thinker.core.messages import critic_messages, planner_messages, white_canvas
from interleave_thinker.core.prompts import load_template
from interleave_thinker.core.protocol import Verdict
from interleave_thinker.sandbox.generator import SandboxGenerator
from interleave_thinker.training.config import ConfigError, RunSettings
from interleave_thinker.training.data import (
    CriticExample,
    CriticRLExample,
    DataError,
    SFTRows,
    Templates,
    read_critic_rl,
    read_critic_sft,
    read_planner_sft,
    read_storyboards,
    write_critic_rl,
    write_critic_sft,
    write_planner_sft,
)
from interleave_thinker.training.runs import read_sources


def pixels(path_or_image):
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(image.convert("RGB"))


def dump_rows(path, rows):
    """A JSON array with one row per line, as the writers make it."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    return path


# -- writers and readers -------------------------------------------------------------------------------------


def test_planner_sft_round_trip(tmp_path, sandbox_examples):
    examples = sandbox_examples.planner[:12]
    path = write_planner_sft(tmp_path / "planner_sft.json", examples)
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    assert all(not image.startswith("/") for row in rows for image in row["images"])  # relative to the file
    read, report = read_planner_sft(path)
    assert report.kept == report.rows == 12 and not report.bad
    for original, back in zip(examples, read):
        assert back.instruction == original.instruction
        assert back.plan == original.plan
        assert back.mode == original.mode
        assert [pixels(p).tolist() for p in back.images] == [pixels(i).tolist() for i in original.images]
    assert {e.mode for e in read} == {"narrative", "guidance"}


def test_critic_sft_round_trip_in_the_official_shape(tmp_path, sandbox_examples):
    examples = sandbox_examples.critic[:6]
    path = write_critic_sft(tmp_path / "critic_sft.json", examples)
    row = json.loads(path.read_text(encoding="utf-8"))[0]
    assert row["messages"][0]["content"].startswith("<image><image>")
    assert len(row["images"]) == 2
    assert row["messages"][1]["content"].startswith("<think>")
    read, report = read_critic_sft(path)
    assert report.kept == 6
    for original, back in zip(examples, read):
        assert (back.original_instruction, back.prompt_used) == (
            original.original_instruction,
            original.prompt_used,
        )
        assert back.verdict == original.verdict
        assert (pixels(back.before) == pixels(original.before)).all()
        assert (pixels(back.after) == pixels(original.after)).all()


def test_critic_rl_round_trip_with_the_official_keys(tmp_path, sandbox_examples):
    examples = sandbox_examples.rl[:5]
    path = write_critic_rl(tmp_path / "critic_rl.jsonl", examples)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    assert set(json.loads(lines[0])) == {
        "origin_prompt",
        "rewritten_prompt",
        "origin_image_path",
        "edited_image_path",
        "evaluation",
    }
    read, _ = read_critic_rl(path)
    for original, back in zip(examples, read):
        assert (back.success, back.semantics, back.quality) == (
            original.success,
            original.semantics,
            original.quality,
        )
        assert back.original_instruction == original.original_instruction


def test_rows_are_rendered_by_the_engine_and_answers_canonicalised(tmp_path):
    before, after = white_canvas(64, 64), Image.new("RGB", (64, 64), "red")
    template = load_template("critic")
    official_answer = (
        "<think>The colour is wrong.</think>\n<answer>{'previous_step_success': False, "
        "'refine_prompt': 'a blue circle'}</answer>"
    )
    before.save(tmp_path / "b.png")
    after.save(tmp_path / "a.png")
    user = "<image><image>" + template.render(
        original_instruction="a blue circle", rewritten_prompt="a red circle"
    )
    path = dump_rows(
        tmp_path / "critic.json",
        [
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": official_answer},
                ],
                "images": ["b.png", "a.png"],
            }
        ],
    )
    examples, _ = read_critic_sft(path)
    row = SFTRows(examples, Templates.load())[0]
    engine = critic_messages(before, after, "a blue circle", "a red circle")
    assert row["prompt"][0]["content"][2]["text"] == engine[0]["content"][2]["text"]
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "image", "text"]
    assert len(row["images"]) == 2
    answer = row["completion"][0]["content"][0]["text"]
    assert answer == (
        '<think>The colour is wrong.</think>\n<answer>{"previous_step_success": false, '
        '"refine_prompt": "a blue circle"}</answer>'
    )


def test_a_planner_turn_without_a_template_is_the_instruction_unless_refused(tmp_path):
    answer = plan_text("a red circle")
    path = dump_rows(
        tmp_path / "planner.json",
        [
            {
                "messages": [
                    {"role": "user", "content": "Draw a red circle."},
                    {"role": "assistant", "content": answer},
                ],
                "images": [],
            }
        ],
    )
    [example], _ = read_planner_sft(path)
    assert example.instruction == "Draw a red circle."
    prompt = SFTRows([example], Templates.load())[0]["prompt"]
    assert prompt[0]["content"][0]["text"] == planner_messages("Draw a red circle.")[0]["content"][0]["text"]
    examples, report = read_planner_sft(path, raw_instructions=False)
    assert not examples and "matches no Planner template" in str(report.bad[0])


def test_data_written_with_another_template_is_recognised_through_source_templates(tmp_path):
    wording = tmp_path / "official_critic.txt"
    wording.write_text(
        "Step instruction: {original_instruction}\nPrompt used: {rewritten_prompt}\nJudge it.",
        encoding="utf-8",
    )
    white_canvas(64, 64).save(tmp_path / "b.png")
    white_canvas(64, 64).save(tmp_path / "a.png")
    user = "<image><image>Step instruction: add a hat\nPrompt used: a hat\nJudge it."
    row = {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": verdict_text(False, "add a red hat")},
        ],
        "images": ["b.png", "a.png"],
    }
    path = dump_rows(tmp_path / "critic.json", [row])
    examples, report = read_critic_sft(path)
    assert not examples and "matches no Critic template" in str(report.bad[0])
    [example], _ = read_critic_sft(path, templates=Templates.load(sources=[("critic", wording)]))
    assert (example.original_instruction, example.prompt_used) == ("add a hat", "a hat")
    text = SFTRows([example], Templates.load())[0]["prompt"][0]["content"][2]["text"]
    assert text.startswith(load_template("critic").text.split("{")[0].strip()[:40])


def test_images_over_the_pixel_budget_are_shrunk(tmp_path):
    example = CriticExample(
        Image.new("RGB", (300, 200), "white"),
        Image.new("RGB", (300, 200), "red"),
        "a red square",
        "a red square",
        Verdict(True, "a red square"),
    )
    path = write_critic_sft(tmp_path / "c.json", [example])
    examples, report = read_critic_sft(path)
    assert report.resized_images == 0  # the default budget is 1024x1024
    rows = SFTRows(examples, Templates.load(), max_pixels=64 * 64)
    assert all(w * h <= 64 * 64 for w, h in (image.size for image in rows[0]["images"]))


# -- bad rows: reported with their file and line, skipped or fatal -------------------------------------------


def test_bad_sharegpt_rows_are_named_by_file_and_line(tmp_path, sandbox_examples):
    good = json.loads(write_critic_sft(tmp_path / "good.json", sandbox_examples.critic[:1]).read_text())[0]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    rows = [
        good,
        {**good, "images": [good["images"][0], "missing.png"]},
        {**good, "images": [good["images"][0], "broken.png"]},
        {**good, "images": good["images"][:1]},
        {**good, "messages": [good["messages"][0], {"role": "assistant", "content": "It looks fine to me."}]},
        {**good, "messages": [good["messages"][1], good["messages"][0]]},
        ["not", "an", "object"],
        good,
    ]
    path = dump_rows(tmp_path / "critic_sft.json", rows)
    examples, report = read_critic_sft(path)
    assert len(examples) == 2 and report.rows == 8
    found = {row.line: row.reason for row in report.bad}
    assert set(found) == {3, 4, 5, 6, 7, 8}
    assert "image not found" in found[3] and "missing.png" in found[3]
    assert "cannot open image" in found[4]
    assert "2 <image> marker(s) but the row lists 1 image(s)" in found[5]
    assert "invalid verdict" in found[6]
    assert "one user turn then one assistant turn" in found[7]
    assert "must be an object" in found[8]
    assert str(report.bad[0]).startswith(f"{path}:3: ")
    with pytest.raises(DataError, match=rf"{path}:3: image not found"):
        read_critic_sft(path, on_bad_row="error")


def test_bad_rl_rows_are_named_by_file_and_line(tmp_path, sandbox_examples):
    path = write_critic_rl(tmp_path / "critic_rl.jsonl", sandbox_examples.rl[:1])
    good = json.loads(path.read_text())
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "evaluation": {"semantics": 3, "quality": 7}}),
        json.dumps({**good, "evaluation": {**good["evaluation"], "semantics": 12}}),
        json.dumps({**good, "evaluation": {**good["evaluation"], "success": "maybe"}}),
        json.dumps({**good, "origin_prompt": "  "}),
        json.dumps({**good, "edited_image_path": "nowhere.png"}),
        "",
        json.dumps(good),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, report = read_critic_rl(path)
    assert len(examples) == 2
    found = {row.line: row.reason for row in report.bad}
    assert found == {
        2: found[2],
        3: "evaluation.success is missing",
        4: "evaluation.semantics must be from 0 to 10, got 12",
        5: "evaluation.success must be true or false, got 'maybe'",
        6: "origin_prompt must be a non-empty string",
        7: found[7],
    }
    assert "not valid JSON" in found[2] and "nowhere.png" in found[7]


def test_a_json_array_that_breaks_mid_file_is_fatal_with_its_line(tmp_path, sandbox_examples):
    good = json.loads(write_critic_sft(tmp_path / "good.json", sandbox_examples.critic[:1]).read_text())[0]
    path = tmp_path / "cut.json"
    path.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(good)[:-30] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        read_critic_sft(path)
    with pytest.raises(DataError, match="data file not found"):
        read_critic_sft(tmp_path / "absent.json")


# -- storyboards: the engine's own runs as training data -----------------------------------------------------


FIRST, SECOND = "draw a large red circle at the centre", "add a small blue square at the top left"
FIXED = "draw a large red circle at the centre; nothing else"


def make_story(folder, *, width=64):
    planner = ScriptedAgent([plan_text(FIRST, SECOND)])
    verdicts = [verdict_text(False, FIXED), verdict_text(True, FIXED), verdict_text(True, SECOND)]
    critic = ScriptedAgent(verdicts)
    story = run_story(
        f"Build a scene in 2 steps: {FIRST}; {SECOND}.",
        planner,
        SandboxGenerator(),
        critic,
        config=LoopConfig(width=width, height=width, max_attempts=3),
    )
    return story, story.save(folder)


def test_every_judged_attempt_of_a_storyboard_is_a_critic_example(tmp_path):
    story, folder = make_story(tmp_path / "stories" / "one")
    examples, report = read_storyboards(tmp_path / "stories", "critic")
    assert report.kept == 3 and not report.bad
    first, retry, second = examples
    assert (pixels(first.before) == 255).all() and first.before.size == (64, 64)
    assert first.verdict.accepted is False and retry.verdict.accepted is True
    assert (first.original_instruction, first.prompt_used) == (FIRST, FIRST)
    assert (retry.original_instruction, retry.prompt_used) == (FIRST, FIXED)
    assert (pixels(second.before) == pixels(story.steps[0].image)).all()  # step 2 edits step 1's kept image
    assert (pixels(second.after) == pixels(story.steps[1].image)).all()
    [plan], _ = read_storyboards(folder, "planner")
    assert plan.plan == story.plan and plan.instruction == story.instruction


def test_unchecked_attempts_are_left_out_and_damaged_storyboards_reported(tmp_path):
    planner = ScriptedAgent([plan_text(FIRST)])
    story = run_story(
        f"Build a scene in 1 step: {FIRST}.",
        planner,
        SandboxGenerator(),
        ScriptedAgent(["no verdict here"]),
        config=LoopConfig(width=64, height=64, max_attempts=2, critic_tries=1),
    )
    story.save(tmp_path / "unchecked")
    _, good = make_story(tmp_path / "good")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "storyboard.json").write_text("{", encoding="utf-8")
    examples, report = read_storyboards(tmp_path, "critic")
    assert len(examples) == 3
    assert len(report.bad) == 1 and "damaged" in report.bad[0].file
    with pytest.raises(DataError, match="damaged"):
        read_storyboards(tmp_path, "critic", on_bad_row="error")


# -- data generated for the run by a function ----------------------------------------------------------------

TEACHER = "interleave_thinker.sandbox.teacher:write_sets"


def generated(tmp_path, role, kind, **source):
    settings = RunSettings.from_dict(
        {
            "role": role,
            "model": "m",
            "output_dir": str(tmp_path),
            "data": {"train": [{"format": "generated", "target": TEACHER, **source}]},
        }
    )
    return read_sources(settings.data.train, role, kind, settings, Templates.load())


def write_nothing(folder, files, **options):
    """A data function that forgets to write."""


def test_a_generated_source_writes_the_file_the_run_reads(tmp_path):
    plans, report = generated(
        tmp_path / "planner", "planner", "sft", options={"count": 12, "size": 64, "max_steps": 2}
    )
    assert report.kept == 12 and not report.bad
    assert all(len(e.plan.steps) <= 2 for e in plans) and {e.mode for e in plans} == {"narrative", "guidance"}
    [folder] = (tmp_path / "planner" / "data").iterdir()
    assert (folder / "planner_sft.json").is_file()
    assert not (folder / "critic_sft.json").exists() and not (folder / "storyboards").exists()  # no rollouts
    verdicts, _ = generated(tmp_path / "critic", "critic", "sft", options={"count": 10, "think_share": 0.0})
    assert len(verdicts) == 10 and not any(e.verdict.reasoning for e in verdicts)
    assert {e.verdict.accepted for e in verdicts} == {True, False}
    rows, _ = generated(tmp_path / "rl", "critic", "rl", options={"count": 7, "seed": 3})
    assert len(rows) == 7 and all(isinstance(e, CriticRLExample) for e in rows)
    again, _ = generated(tmp_path / "rl", "critic", "rl", options={"count": 7, "seed": 3})
    assert [e.original_instruction for e in again] == [e.original_instruction for e in rows]


def test_a_generated_source_that_cannot_write_says_why_and_leaves_nothing(tmp_path):
    for source, message in [
        ({"options": {"cout": 3}}, "options of .*write_sets.*unexpected keyword argument 'cout'"),
        ({"options": {"count": 0}}, "data source .*write_sets: count must be at least 1"),
        ({"options": {"think_share": 2}}, "think_share must be from 0 to 1"),
        ({"target": "interleave_thinker.sandbox.teacher:absent"}, "cannot import"),
        ({"target": f"{__name__}:write_nothing"}, "wrote no critic_sft.json, which this sft run reads"),
    ]:
        with pytest.raises(ConfigError, match=message):
            generated(tmp_path, "critic", "sft", **source)
    assert not list((tmp_path / "data").iterdir())  # no half-written folder is left behind


def test_row_lengths_order_rows_as_their_rendered_text_does_without_rendering_them():
    """What ``train_sampling_strategy: group_by_length`` batches by: long plans with long plans."""
    from interleave_thinker.sandbox.tasks import make_tasks
    from interleave_thinker.sandbox.teacher import LONG_SHAPE, planner_examples

    tasks = make_tasks("train", 12, kinds=("build",)) + make_tasks(
        "train", 12, kinds=("build",), shape=LONG_SHAPE
    )
    rows = SFTRows(planner_examples(tasks), Templates.load())
    lengths = rows.lengths()

    def rendered(index):
        row = rows[index]
        parts = row["prompt"][0]["content"] + row["completion"][0]["content"]
        return sum(len(part.get("text", "")) for part in parts)

    order = sorted(range(len(rows)), key=lambda index: lengths[index])
    texts = [rendered(index) for index in order]
    assert texts == sorted(texts)  # text rows: the measure is the text's length plus a constant
    steps = [len(rows.examples[index].plan.steps) for index in order]
    assert steps[:12] == sorted(steps[:12]) and min(steps[12:]) >= max(steps[:12])
