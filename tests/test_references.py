"""References that hold the cast and anchoring against drift: what reaches the generator, what the storyboard
records, and what the sandbox measures."""

import json

import pytest
from helpers import PaintGenerator, ScriptedAgent, pixels, plan_text, verdict_text
from PIL import Image

from interleave_thinker.core.loop import LoopConfig, resume, run_story
from interleave_thinker.core.messages import message_images
from interleave_thinker.core.settings import MAX_REFERENCES, BadSetting
from interleave_thinker.core.storyboard import Storyboard, StoryboardError


class ReferencePaint(PaintGenerator):
    """A PaintGenerator that takes up to ``capacity`` references and records them with each call."""

    def __init__(self, capacity: int = 4):
        super().__init__("reference")
        self.max_references = capacity
        self.references: list[list[bytes]] = []

    def text_to_image(self, prompt, *, width, height, seed, references=()):
        self.references.append([pixels(image) for image in references])
        return super().text_to_image(prompt, width=width, height=height, seed=seed)

    def edit(self, before, prompt, *, seed, references=()):
        self.references.append([pixels(image) for image in references])
        return super().edit(before, prompt, seed=seed)


CAST = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]


def tell(generator, steps=3, critic=None, **config):
    return run_story(
        "a tale",
        ScriptedAgent([plan_text(*[f"step {n}" for n in range(1, steps + 1)])]),
        generator,
        critic,
        references=config.pop("references", ()),
        config=LoopConfig(width=64, height=64, **config),
    )


def test_every_generator_call_carries_the_references_and_every_attempt_records_them(tmp_path):
    generator = ReferencePaint()
    critic = ScriptedAgent([verdict_text(True), verdict_text(False, "step 2 again"), verdict_text(True)])
    board = tell(generator, critic=critic, references=CAST)
    assert len(generator.references) == 4  # three steps, one retry
    assert all(sent == [pixels(image) for image in CAST] for sent in generator.references)
    assert all(a.references == ("reference 1", "reference 2") for a in board.attempts)
    # The Critic still sees before and after only: its weights were trained on two pictures.
    assert all(len(message_images(call.messages)) == 2 for call in critic.calls)
    folder = board.save(tmp_path / "s")
    data = json.loads((folder / "storyboard.json").read_text())
    assert data["references"] == ["references/reference-01.png", "references/reference-02.png"]
    assert data["steps"][1]["attempts"][0]["references"] == ["reference 1", "reference 2"]
    assert "with reference 1, reference 2" in (folder / "index.html").read_text()
    loaded = Storyboard.load(folder)
    assert [pixels(i) for i in loaded.reference_images] == [pixels(i) for i in CAST]
    assert loaded == board


def test_anchoring_gives_each_later_edit_the_first_picture_and_not_twice():
    generator = ReferencePaint()
    board = tell(generator, steps=4, anchor="first")
    first = pixels(board.steps[0].image)
    # Step 1 is drawn from text, step 2 edits step 1 itself; steps 3 and 4 carry it as an anchor.
    assert generator.references == [[], [], [first], [first]]
    assert [a.references for a in board.attempts] == [(), (), ("step 1",), ("step 1",)]
    assert board.settings["references"] == {"given": 0, "anchor": "first", "generator_takes": 4}


def test_a_generator_that_takes_no_references_is_never_handed_them_and_the_storyboard_says_so(tmp_path):
    generator = PaintGenerator()  # img2img, no max_references: its edit() has no references keyword
    board = tell(generator, references=CAST, anchor="first")
    assert all(a.references == () for a in board.attempts)
    note = board.settings["references"]["note"]
    assert "takes no reference pictures" in note and "2 reference pictures and the anchor" in note
    assert note in (board.save(tmp_path / "s") / "index.html").read_text()


def test_a_generator_that_takes_fewer_gets_the_first_ones_and_a_note():
    generator = ReferencePaint(capacity=1)
    board = tell(generator, steps=3, references=CAST, anchor="first")
    assert all(sent == [pixels(CAST[0])] for sent in generator.references)
    assert "takes 1 reference picture(s) a call" in board.settings["references"]["note"]


def test_a_story_without_references_or_anchor_saves_as_before(tmp_path):
    board = tell(ReferencePaint())
    data = json.loads((board.save(tmp_path / "s") / "storyboard.json").read_text())
    assert "references" not in data and "references" not in data["settings"]
    assert all("references" not in a for step in data["steps"] for a in step["attempts"])
    assert not (tmp_path / "s" / "references").exists()


def test_too_many_references_are_refused_before_the_planner_is_asked():
    planner = ScriptedAgent([plan_text("a")])
    with pytest.raises(BadSetting, match=f"at most {MAX_REFERENCES} reference pictures"):
        run_story("a tale", planner, ReferencePaint(), references=CAST * MAX_REFERENCES)
    assert planner.calls == []


def test_an_unknown_anchor_is_refused():
    with pytest.raises(BadSetting, match="anchor must be one of none, first"):
        LoopConfig(anchor="last")


def test_a_resumed_story_keeps_its_references_and_anchor(tmp_path):
    board = tell(ReferencePaint(), steps=3, references=CAST, anchor="first")
    loaded = Storyboard.load(board.save(tmp_path / "s"))
    generator = ReferencePaint()
    resumed = resume(loaded, 3, generator, config=LoopConfig(width=64, height=64, anchor="first"))
    assert generator.references == [[pixels(CAST[0]), pixels(CAST[1]), pixels(board.steps[0].image)]]
    assert resumed.steps[:2] == board.steps[:2] and resumed.reference_images == board.reference_images


def test_a_storyboard_json_cannot_name_a_picture_outside_its_folder(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    folder = tell(ReferencePaint(), references=CAST[:1]).save(tmp_path / "s")
    data = json.loads((folder / "storyboard.json").read_text())
    for key, value in (("references", ["../secret.png"]), ("inputs", [str(outside)])):
        (folder / "storyboard.json").write_text(json.dumps(data | {key: value}))
        with pytest.raises(StoryboardError, match="damaged"):
            Storyboard.load(folder)


# -- the sandbox: drift, references that hold, and the cast suite's measurement --------------------------


def test_sandbox_references_hold_what_they_show_against_drift():
    from interleave_thinker.sandbox.generator import FailureModel, SandboxGenerator
    from interleave_thinker.sandbox.world import Obj, Scene, read, render

    cast = Obj("circle", "red", "large")
    scene = Scene.of({"left": cast, "right": Obj("square", "blue", "small")})
    before = render(scene)
    generator = SandboxGenerator(FailureModel(0, 0, 0, 0, 0, drift=1.0))
    prompt = "add a small green triangle at the top. keep everything else unchanged"
    drifted = [read(generator.edit(before, prompt, seed=s)) for s in range(20)]
    assert any(after[3] != cast for after in drifted)  # the cast member drifts without a reference
    reference = render(Scene.of({"centre": cast}))
    held = [read(generator.edit(before, prompt, seed=s, references=[reference])) for s in range(20)]
    assert all(after[3] == cast for after in held)
    # Where the reference held nothing, the two runs drew the same picture: one random stream.
    assert all(a == b for a, b in zip(drifted, held) if a[3] == cast)


def test_drift_that_does_not_fire_changes_no_picture():
    """Drift draws after every other fault, so turning it on changes only the pictures it drifts."""
    from interleave_thinker.sandbox.generator import FailureModel, SandboxGenerator
    from interleave_thinker.sandbox.tasks import make_tasks

    plain, rare = SandboxGenerator(), SandboxGenerator(FailureModel(drift=1e-12))
    for task in make_tasks("test", 6, kinds=("build",)):
        for seed in range(3):
            first = plain.text_to_image(task.steps[0], width=96, height=96, seed=seed)
            assert pixels(rare.edit(first, task.steps[1], seed=seed)) == pixels(
                plain.edit(first, task.steps[1], seed=seed)
            )


def test_references_cut_identity_errors_in_the_cast_suite():
    from interleave_thinker.sandbox.evaluate import evaluate
    from interleave_thinker.sandbox.generator import FailureModel, SandboxGenerator
    from interleave_thinker.sandbox.oracle import OraclePlanner
    from interleave_thinker.sandbox.tasks import CAST_DRIFT, CAST_STEPS, cast_tasks

    tasks = cast_tasks(8)
    assert all(len(t.steps) == CAST_STEPS and len(t.cast) == 2 for t in tasks)
    generator = SandboxGenerator(FailureModel(drift=CAST_DRIFT))
    without = evaluate(tasks, OraclePlanner(), None, generator=generator)
    held = evaluate(tasks, OraclePlanner(), None, generator=generator, references=True)
    assert without.identity_errors > 0
    assert held.identity_errors < without.identity_errors
    assert held.identity_error_steps < without.identity_error_steps


def test_a_longer_busier_split_is_made_the_same_way_and_bad_shapes_are_refused(capsys):
    from interleave_thinker import cli as program
    from interleave_thinker.sandbox.tasks import DEFAULT_SHAPE, StoryShape, TaskError, make_tasks

    busy = make_tasks("test", 60, seed=1, shape=StoryShape((5, 6), 6))
    whole = [len(t.given) + len(t.steps) if t.kind == "continue" else len(t.steps) for t in busy]
    assert set(whole) == {5, 6}
    assert max(len(list(scene.objects())) for t in busy for scene in t.scenes) == 6
    assert {t.split for t in busy} == {"test"}
    assert not {t.instruction for t in busy} & {t.instruction for t in make_tasks("test", 60)}
    assert DEFAULT_SHAPE == StoryShape((2, 4), 5)
    with pytest.raises(TaskError, match="steps must be 2-12"):
        StoryShape((6, 5), 6)
    argv = ["eval", "--steps", "five", "--tasks", "1", "--planner", "oracle", "--critic", "none", "--quiet"]
    assert program.main(argv) == 2
    assert "--steps takes a count or a range such as 5-6" in capsys.readouterr().err
