"""A story you can resume and a plan you can edit: ``resume`` keeps the steps before K byte for byte and
redraws the rest; ``run --plan FILE`` draws exactly the file's steps without asking the Planner."""

import json

import pytest
from helpers import ChatServer, PaintGenerator, ScriptedAgent, pixels, plan_text, quick, verdict_text

from interleave_thinker import cli as program
from interleave_thinker.core import cli
from interleave_thinker.core.loop import LoopConfig, resume, run_story
from interleave_thinker.core.messages import message_text
from interleave_thinker.core.protocol import parse_plan
from interleave_thinker.core.settings import BadSetting
from interleave_thinker.core.storyboard import Storyboard

CONFIG = LoopConfig(width=64, height=64, seed=7)
PROMPTS = ("a cat", "add a hat", "add a scarf", "add a ball")


def judge(messages, n):
    """Rejects the first try of every step, accepts the retry: the same verdicts in any run."""
    return verdict_text("a sharper picture" in message_text(messages), "a sharper picture")


def saved_story(tmp_path, name="first"):
    critic = ScriptedAgent(judge, "critic")
    story = run_story("a tale", ScriptedAgent([plan_text(*PROMPTS)]), PaintGenerator(), critic, config=CONFIG)
    return story.save(tmp_path / name)


def files_of(folder, number):
    """The bytes of step ``number``'s kept picture and of every one of its attempts."""
    paths = sorted(folder.glob(f"attempts/step-{number:02d}-*.png")) + [
        folder / f"steps/step-{number:02d}.png"
    ]
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in paths}


def step_json(folder, number):
    return json.loads((folder / "storyboard.json").read_text())["steps"][number - 1]


def test_resuming_from_step_3_keeps_steps_1_and_2_byte_for_byte_and_redraws_the_rest(tmp_path):
    first = saved_story(tmp_path)
    generator = PaintGenerator()
    story = Storyboard.load(first)
    resumed = resume(
        story, 3, generator, ScriptedAgent([verdict_text(True)]), prompt="add a red scarf", seed=99
    )
    second = resumed.save(tmp_path / "second")

    for number in (1, 2):
        assert files_of(first, number) and files_of(second, number) == files_of(first, number)
        assert step_json(second, number) == step_json(first, number)
    # Step 3 is drawn from the new prompt, edited from step 2's kept picture; step 4 is redrawn too.
    assert [call[1] for call in generator.calls] == ["add a red scarf", "add a ball"]
    assert pixels(generator.calls[0][3]) == pixels(story.steps[1].image)
    for number in (3, 4):
        assert (second / f"steps/step-{number:02d}.png").read_bytes() != (
            first / f"steps/step-{number:02d}.png"
        ).read_bytes()
    assert step_json(second, 3)["attempts"][0]["prompt"] == "add a red scarf"
    data = json.loads((second / "storyboard.json").read_text())
    assert data["plan"]["execution_plan"][2]["prompt"] == "add a red scarf" and data["seed"] == 99
    assert data["settings"]["resumed"] == {"from_step": 3, "seed": 7, "story_id": ""}
    assert Storyboard.load(first) == story  # the saved storyboard is untouched


def test_resuming_with_the_same_seed_and_prompt_redraws_the_same_storyboard(tmp_path):
    first = saved_story(tmp_path)
    again = resume(Storyboard.load(first), 2, PaintGenerator(), ScriptedAgent(judge)).save(tmp_path / "again")
    for number in range(1, 5):
        assert files_of(again, number) == files_of(first, number)


def test_an_edited_plan_redraws_its_own_steps_and_keeps_the_drawn_ones(tmp_path):
    story = Storyboard.load(saved_story(tmp_path))
    edited = parse_plan(plan_text("ignored: step 1 is kept", "add a crown", "add a cape"))
    generator = PaintGenerator()
    resumed = resume(story, 2, generator, None, plan=edited)
    assert [call[1] for call in generator.calls] == ["add a crown", "add a cape"]
    assert [step.plan_step.prompt for step in resumed.steps] == ["a cat", "add a crown", "add a cape"]
    assert resumed.steps[0] is story.steps[0]


@pytest.mark.parametrize("from_step", [0, 5, 9])
def test_a_step_outside_the_story_is_refused(tmp_path, from_step):
    story = Storyboard.load(saved_story(tmp_path))
    with pytest.raises(BadSetting, match="from_step must be between 1 and 4"):
        resume(story, from_step, PaintGenerator())


# ---------------------------------------------------------------------------------------------------------
# The command line, drawing with the sandbox generator


SANDBOX_PROMPTS = (
    "draw a large red circle at the centre",
    "make the red circle blue",
    "make the circle green",
)


def reply(body, n):
    """A plan of the sandbox's sentences, or (a call with two images, the Critic's) an acceptance."""
    parts = body["messages"][0]["content"]
    if sum(isinstance(p, dict) and p.get("type") == "image_url" for p in parts) == 2:
        return verdict_text(True)
    return plan_text(*SANDBOX_PROMPTS)


@pytest.fixture
def server():
    with ChatServer(reply) as running:
        yield running


def planner_calls(server):
    def images(request):
        return sum(
            isinstance(p, dict) and p.get("type") == "image_url" for p in request["messages"][0]["content"]
        )

    return [request for request in server.requests if images(request) != 2]


def test_run_with_a_plan_file_draws_exactly_its_steps_and_never_asks_the_planner(server, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        parse_plan(plan_text("draw a small blue square", "make the blue square red")).to_json()
    )
    out = tmp_path / "s"
    assert program.main(["run", "squares", "--plan", str(plan_file), "--out", str(out), *quick(server)]) == 0
    story = Storyboard.load(out)
    assert [s.plan_step.prompt for s in story.steps] == [
        "draw a small blue square",
        "make the blue square red",
    ]
    assert [a.prompt for a in story.attempts] == ["draw a small blue square", "make the blue square red"]
    assert server.requests and not planner_calls(server)  # the Critic was asked, the Planner never


@pytest.mark.parametrize(
    "text, says",
    [
        ("not a plan", "fix the file"),
        ('{"execution_plan": [{"step_number": 1}]}', "fix the file"),
        (None, "cannot read"),
    ],
)
def test_a_bad_plan_file_is_bad_input_saying_what_to_fix(server, tmp_path, capsys, text, says):
    plan_file = tmp_path / "plan.json"
    if text is not None:
        plan_file.write_text(text)
    out = tmp_path / "s"
    code = program.main(["run", "x", "--plan", str(plan_file), "--out", str(out), *quick(server)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--plan" in err and says in err and str(plan_file) in err
    assert not out.exists() and server.requests == []


def test_the_resume_command_keeps_the_first_steps_and_redraws_from_k(server, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert program.main(["run", "circles", "--out", str(first), *quick(server)]) == 0
    argv = ["resume", str(first), "--from-step", "2", "--prompt", "make the red circle yellow", "--seed", "3"]
    assert program.main([*argv, "--out", str(second), *quick(server)]) == 0
    assert "1 steps kept, 2 redrawn" in capsys.readouterr().out
    assert files_of(second, 1) == files_of(first, 1) and step_json(second, 1) == step_json(first, 1)
    story = Storyboard.load(second)
    assert story.steps[1].kept.prompt == "make the red circle yellow" and story.seed == 3
    assert files_of(second, 2) != files_of(first, 2)


def test_the_resume_command_refuses_a_bad_step_and_its_own_folder_as_out(server, tmp_path, capsys):
    first = tmp_path / "first"
    assert program.main(["run", "circles", "--out", str(first), *quick(server)]) == 0
    capsys.readouterr()
    argv = ["resume", str(first), "--from-step", "7", "--out", str(tmp_path / "r"), *quick(server)]
    assert program.main(argv) == cli.EXIT_BAD_INPUT
    assert "--from-step must be between 1 and 3" in capsys.readouterr().err
    argv = ["resume", str(first), "--from-step", "2", "--out", str(first), "--overwrite", *quick(server)]
    assert program.main(argv) == cli.EXIT_BAD_INPUT and "new folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_resume_command_keeps_the_storys_anchor_unless_told_otherwise(server, tmp_path):
    first = tmp_path / "first"
    assert program.main(["run", "circles", "--anchor", "first", "--out", str(first), *quick(server)]) == 0
    for extra, anchor in (([], "first"), (["--anchor", "none"], "none")):
        out = tmp_path / f"again-{anchor}"
        argv = ["resume", str(first), "--from-step", "3", *extra, "--out", str(out), *quick(server)]
        assert program.main(argv) == 0
        story = Storyboard.load(out)
        assert story.settings["loop"]["anchor"] == anchor
        assert all(("step 1" in a.references) == (anchor == "first") for a in story.steps[2].attempts)
