import json

import pytest
from helpers import PaintGenerator, ScriptedAgent, pixels, verdict_text
from PIL import Image

from interleave_thinker.core.loop import LoopConfig, run_story
from interleave_thinker.core.storyboard import SCHEMA_VERSION, Storyboard, StoryboardError


@pytest.fixture
def board():
    plan = (
        "<think>why</think><answer>{'execution_plan': ["
        "{'step_number': 1, 'step_name': 'Cat', 'instruction': 'A cat <sits> & waits', 'prompt': 'a cat'}, "
        "{'step_number': 2, 'step_name': 'Note', 'auxiliary_text': 'Cats nap a lot.'}, "
        "{'step_number': 3, 'step_name': 'Hat', 'instruction': 'It wears a hat', "
        "'prompt': 'add a hat'}]}</answer>"
    )
    critic = ScriptedAgent(
        [verdict_text(True, think="fine"), verdict_text(False, "a red hat", "no hat"), "garbage", "garbage"]
    )
    return run_story(
        "A cat's day",
        ScriptedAgent([plan]),
        PaintGenerator(),
        critic,
        images=[Image.new("RGBA", (40, 30), (10, 20, 30, 255))],
        config=LoopConfig(width=64, height=64, mode="narrative"),
    )


def test_save_and_load_back_equal(board, tmp_path):
    folder = board.save(tmp_path / "story")
    again = Storyboard.load(folder)
    assert again == board
    assert [pixels(a.image) for a in again.attempts] == [pixels(a.image) for a in board.attempts]
    assert (
        again.steps[2].attempts[1].status == "unchecked"
        and again.steps[2].attempts[0].verdict.reasoning == "no hat"
    )


def test_folder_layout_and_pages(board, tmp_path):
    folder = board.save(tmp_path / "story")
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "attempts/step-01-attempt-1.png",
        "attempts/step-03-attempt-1.png",
        "attempts/step-03-attempt-2.png",
        "index.html",
        "inputs/input-01.png",
        "steps/step-01.png",
        "steps/step-03.png",
        "story.md",
        "storyboard.json",
    ]
    data = json.loads((folder / "storyboard.json").read_text())
    assert data["version"] == SCHEMA_VERSION and data["plan"]["execution_plan"][1]["prompt"] is None
    page = (folder / "index.html").read_text()
    # Text and images in order, user text escaped, attempts folded away.
    assert page.index("steps/step-01.png") < page.index("Cats nap a lot.") < page.index("steps/step-03.png")
    assert "A cat &lt;sits&gt; &amp; waits" in page and "<details>" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    md = (folder / "story.md").read_text()
    assert md.startswith("# A cat's day") and "![step 3](steps/step-03.png)" in md


def test_save_is_atomic_and_never_clobbers_by_accident(board, tmp_path):
    folder = board.save(tmp_path / "story")
    with pytest.raises(StoryboardError, match="already exists"):
        board.save(folder)
    board.instruction = "changed"
    board.save(folder, overwrite=True)
    assert Storyboard.load(folder).instruction == "changed"
    assert [p.name for p in tmp_path.iterdir()] == ["story"]  # no temporary or old folders left


def test_a_failed_write_leaves_nothing_behind(board, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("interleave_thinker.core.storyboard.render_markdown", boom)
    with pytest.raises(OSError):
        board.save(tmp_path / "story")
    assert list(tmp_path.iterdir()) == []


def test_loading_damaged_or_foreign_folders_says_what_is_wrong(board, tmp_path):
    with pytest.raises(StoryboardError, match="storyboard.json is missing"):
        Storyboard.load(tmp_path)
    folder = board.save(tmp_path / "story")
    data = json.loads((folder / "storyboard.json").read_text())
    (folder / "storyboard.json").write_text(json.dumps(dict(data, version=99)))
    with pytest.raises(StoryboardError, match="schema version 99"):
        Storyboard.load(folder)
    (folder / "storyboard.json").write_text(json.dumps(data))
    (folder / "attempts" / "step-01-attempt-1.png").unlink()
    with pytest.raises(StoryboardError, match="cannot open image"):
        Storyboard.load(folder)


def test_before_images_follow_the_story(board):
    assert set(board.before_image(0).getdata()) == {(255, 255, 255)}
    assert pixels(board.before_image(2)) == pixels(board.steps[0].image)
