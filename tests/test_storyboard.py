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
        "page-01.png",
        "steps/step-01.png",
        "steps/step-03.png",
        "story.md",
        "storyboard.json",
        "storyboard.pdf",
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


# -- replacing a folder: only a storyboard, what is left of one, or an empty folder --------------------------


def test_overwrite_replaces_only_a_storyboard_what_is_left_of_one_or_an_empty_folder(board, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    board.save(empty, overwrite=True)
    remains = board.save(tmp_path / "remains")
    (remains / "storyboard.json").unlink()
    assert not Storyboard.is_saved(remains) and Storyboard.is_remains(remains)
    board.save(remains, overwrite=True)
    assert Storyboard.load(remains) == board

    mine = tmp_path / "mine"
    (mine / "steps").mkdir(parents=True)
    (mine / "steps" / "notes.txt").write_text("mine")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("mine")  # a storyboard's file name, but no storyboard
    file = tmp_path / "file.txt"
    file.write_text("mine")
    for folder, says in ((mine, "not a storyboard"), (site, "not a storyboard"), (file, "is a file")):
        with pytest.raises(StoryboardError, match=says):
            board.save(folder, overwrite=True)
    assert (mine / "steps" / "notes.txt").read_text() == "mine" and file.read_text() == "mine"
    assert (site / "index.html").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "mine", "remains", "site"]


def test_overwrite_never_replaces_the_current_folder_or_one_above_it(board, tmp_path, monkeypatch):
    inner = board.save(tmp_path / "story")
    monkeypatch.chdir(inner)  # a storyboard, but the folder the user stands in
    with pytest.raises(StoryboardError, match="the current folder"):
        board.save(inner, overwrite=True)
    monkeypatch.chdir(inner / "steps")
    with pytest.raises(StoryboardError, match="a folder above the current one"):
        board.save(inner, overwrite=True)
    assert Storyboard.is_saved(inner)


def test_replacing_a_link_leaves_what_it_points_to(board, tmp_path):
    target = board.save(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    board.instruction = "new"
    board.save(link, overwrite=True)
    assert not link.is_symlink() and Storyboard.load(link).instruction == "new"
    assert Storyboard.load(target).instruction == "A cat's day"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


# -- story.md shows model text as written, and makes nothing of it -------------------------------------------

HOSTILE = (
    "See [the site](https://attacker.example/x) ![pixel](https://attacker.example/p.png) "
    '<img src=x onerror="alert(1)"> <https://attacker.example> &lt;b&gt; *loud* `code`\n'
    "# not a heading\n1. not a list\n> not a quote\n---"
)


def test_story_md_escapes_what_a_model_writes(tmp_path):
    name = "[click](https://attacker.example)\n# h1"
    plan = repr(
        {"execution_plan": [{"step_number": 1, "step_name": name, "instruction": HOSTILE, "prompt": "a"}]}
    )
    board = run_story(
        "A <b>bold</b> [plan](https://attacker.example)",
        ScriptedAgent([f"<answer>{plan}</answer>"]),
        PaintGenerator(),
        None,
        config=LoopConfig(width=64, height=64),
    )
    md = (board.save(tmp_path / "story") / "story.md").read_text()
    assert md.startswith("# A \\<b\\>bold\\</b\\> \\[plan\\](https://attacker.example)\n")
    assert "## 1. \\[click\\](https://attacker.example) # h1\n" in md  # a heading stays one line
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").render(md)
    # The only link or picture is the storyboard's own step image, and no tag comes from the text.
    assert rendered.count("<img") == 1 and '<img src="steps/step-01.png"' in rendered
    assert "<a " not in rendered and "<b>" not in rendered and "&lt;img src=x onerror" in rendered
    assert rendered.count("<h1>") == 1 and rendered.count("<h2>") == 1
    for tag in ("<ol", "<blockquote", "<hr", "<em>", "<code>"):
        assert tag not in rendered, tag
