"""The command line end to end on tiny models: run, batch (resumable) and the errors a user sees."""

import json
import subprocess
import sys

import pytest
from helpers import ChatServer, free_port, pixels, plan_text, verdict_text
from PIL import Image

from interleave_thinker import cli as program
from interleave_thinker.core import cli
from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator
from interleave_thinker.core.storyboard import Storyboard


def agent_reply(body, n):
    """A scripted Planner and Critic behind one endpoint: Critic calls carry two images."""
    parts = body["messages"][0]["content"]
    images = [p for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
    if len(images) == 2:  # rejects the first try of an edit step, accepts everything else
        first_edit_try = "give the" in text and "a sharper picture" not in text
        return verdict_text(not first_edit_try, "a sharper picture")
    subject = "boat" if "boat" in text else "cat"
    return plan_text(f"a {subject}", f"give the {subject} a hat")


@pytest.fixture
def server():
    with ChatServer(agent_reply) as running:
        yield running


def common(server, generator_dir, *extra):
    return [
        "--planner",
        server.url,
        "--planner-model",
        "agent",
        "--generator",
        str(generator_dir),
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--quiet",
        *extra,
    ]


def comparable(story):
    data = story.to_dict()
    data.pop("created"), data.pop("timings")
    for step in data["steps"]:
        for attempt in step["attempts"]:
            attempt.pop("generate_seconds"), attempt.pop("critic_seconds")
    return data


def test_run_writes_a_storyboard_that_loads_back_and_repeats(server, tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "story"
    assert program.main(["run", "a cat story", "--out", str(out), *common(server, tiny_pipeline_dir)]) == 0
    assert "index.html" in capsys.readouterr().out
    story = Storyboard.load(out)
    assert [step.plan_step.prompt for step in story.steps] == ["a cat", "give the cat a hat"]
    assert all(image.size == (64, 64) for image in story.images) and len(story.images) == 2
    assert story.settings["edit_route"] == "img2img"
    assert [a.status for a in story.attempts] == ["accepted", "rejected", "accepted"]
    assert story.steps[1].attempts[1].prompt == "a sharper picture"  # the Critic's prompt was used
    assert pixels(Image.open(out / "steps" / "step-02.png")) == pixels(story.steps[1].image)
    for name in ("storyboard.json", "index.html", "story.md"):
        assert (out / name).is_file()

    again = tmp_path / "again"
    assert program.main(["run", "a cat story", "--out", str(again), *common(server, tiny_pipeline_dir)]) == 0
    assert comparable(Storyboard.load(again)) == comparable(story)
    assert [pixels(i) for i in Storyboard.load(again).images] == [pixels(i) for i in story.images]


def test_run_with_a_real_transformers_critic(server, tiny_pipeline_dir, tiny_agent_dir, tmp_path):
    out = tmp_path / "story"
    code = program.main(
        [
            "run",
            "a cat story",
            "--out",
            str(out),
            "--critic",
            str(tiny_agent_dir),
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            *common(server, tiny_pipeline_dir),
        ]
    )
    assert code == 0
    story = Storyboard.load(out)
    # An untrained model never writes a verdict: every first image is kept, marked unchecked.
    assert [step.status for step in story.steps] == ["unchecked", "unchecked"]
    assert story.settings["critic"] == tiny_agent_dir.name


def test_run_refuses_to_overwrite(server, tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "story"
    out.mkdir()
    assert (
        program.main(["run", "a cat", "--out", str(out), *common(server, tiny_pipeline_dir)])
        == cli.EXIT_BAD_INPUT
    )
    assert "already exists" in capsys.readouterr().err and server.requests == []


# ---------------------------------------------------------------------------------------------------------
# batch


def test_batch_interrupted_then_rerun_finishes_without_touching_finished_stories(
    server, tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    stories = tmp_path / "stories.txt"
    stories.write_text("a cat story\n# a comment\n\na boat story\nanother cat story\n")
    out = tmp_path / "batch"
    real = DiffusersGenerator._run
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # in the middle of the second story
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DiffusersGenerator, "_run", interrupted)
    args = ["batch", str(stories), "--out", str(out), *common(server, tiny_pipeline_dir)]
    assert program.main(args) == cli.EXIT_INTERRUPTED
    done = [p for p in out.iterdir() if (p / "storyboard.json").is_file()]
    assert len(done) == 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.is_dir()] == []
    (out / ".a-boat-story-0000.tmp-dead").mkdir()  # what a hard kill would leave behind
    finished = {p: p.joinpath("storyboard.json").stat().st_mtime_ns for p in done}

    monkeypatch.setattr(DiffusersGenerator, "_run", real)
    assert program.main(args) == 0
    assert "3 of 3 stories done" in capsys.readouterr().out
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 3 and not any(p.name.startswith(".") for p in folders)
    assert {p: p.joinpath("storyboard.json").stat().st_mtime_ns for p in done} == finished
    index = (out / "index.html").read_text()
    assert all(f"{p.name}/index.html" in index for p in folders)
    records = json.loads((out / "batch.json").read_text())
    assert [r["status"] for r in records] == ["done"] * 3


def test_one_bad_story_is_reported_and_the_batch_goes_on(server, tiny_pipeline_dir, tmp_path, capsys):
    stories = tmp_path / "stories.jsonl"
    stories.write_text(
        "\n".join(
            [
                json.dumps({"id": "cat", "instruction": "a cat story", "seed": 3}),
                json.dumps({"id": "broken", "instruction": "<image> continue", "images": ["missing.png"]}),
                "{not json",
                json.dumps({"id": "boat", "instruction": "a boat story"}),
            ]
        )
    )
    out = tmp_path / "batch"
    assert (
        program.main(["batch", str(stories), "--out", str(out), *common(server, tiny_pipeline_dir)])
        == cli.EXIT_BATCH
    )
    err = capsys.readouterr().err
    assert f"{stories}:2: image not found" in err and f"{stories}:3:" in err
    assert Storyboard.load(out / "cat").seed == 3 and Storyboard.load(out / "boat").steps
    records = {r["id"]: r["status"] for r in json.loads((out / "batch.json").read_text())}
    assert records["cat"] == records["boat"] == "done" and records["broken"] == "failed"


# ---------------------------------------------------------------------------------------------------------
# bad input: one clear line, a nonzero exit


def _error(capsys, argv):
    code = program.main(argv)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return code, err


def test_empty_instruction(server, tiny_pipeline_dir, tmp_path, capsys):
    code, err = _error(
        capsys, ["run", "  ", "--out", str(tmp_path / "s"), *common(server, tiny_pipeline_dir)]
    )
    assert code == cli.EXIT_BAD_INPUT and "instruction is empty" in err


def test_missing_model_folders(tiny_pipeline_dir, tmp_path, capsys):
    missing = tmp_path / "no-planner"
    code, err = _error(
        capsys,
        [
            "run",
            "a cat",
            "--out",
            str(tmp_path / "s"),
            "--planner",
            str(missing),
            "--generator",
            str(tiny_pipeline_dir),
        ],
    )
    assert code == cli.EXIT_BAD_INPUT and f"--planner: model folder not found: {missing}" in err
    code, err = _error(
        capsys,
        [
            "run",
            "a cat",
            "--out",
            str(tmp_path / "s"),
            "--planner",
            "http://x/v1",
            "--planner-model",
            "m",
            "--generator",
            str(tmp_path / "no-sd"),
        ],
    )
    assert code == cli.EXIT_BAD_INPUT and "--generator: folder not found" in err


def test_unreadable_image(server, tiny_pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    code, err = _error(
        capsys,
        [
            "run",
            "continue <image>",
            "--image",
            str(bad),
            "--out",
            str(tmp_path / "s"),
            *common(server, tiny_pipeline_dir),
        ],
    )
    assert code == cli.EXIT_BAD_INPUT and f"cannot read image {bad}" in err and "PNG" in err


@pytest.mark.parametrize(
    "option,value",
    [("--max-steps", "0"), ("--max-steps", "1000"), ("--max-attempts", "0"), ("--max-attempts", "99")],
)
def test_zero_or_huge_bounds(server, tiny_pipeline_dir, tmp_path, capsys, option, value):
    code, err = _error(
        capsys,
        ["run", "a cat", "--out", str(tmp_path / "s"), option, value, *common(server, tiny_pipeline_dir)],
    )
    # The message names the option as typed, not the engine's field.
    assert code == cli.EXIT_BAD_INPUT and f"error: {option} must be between" in err


def test_unreachable_url(tiny_pipeline_dir, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, err = _error(
        capsys,
        [
            "run",
            "a cat",
            "--out",
            str(tmp_path / "s"),
            "--planner",
            url,
            "--planner-model",
            "m",
            "--retries",
            "0",
            "--generator",
            str(tiny_pipeline_dir),
            "--quiet",
        ],
    )
    assert code == cli.EXIT_BACKEND and url in err and "unreachable" in err
    assert not (tmp_path / "s").exists()


def test_a_planner_that_never_plans(tiny_pipeline_dir, tmp_path, capsys):
    with ChatServer(lambda body, n: "I would rather not.") as server:
        code, err = _error(
            capsys, ["run", "a cat", "--out", str(tmp_path / "s"), *common(server, tiny_pipeline_dir)]
        )
    assert code == cli.EXIT_PLAN and "no valid plan after 3 tries" in err and "I would rather not" in err


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "interleave_thinker", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "run" in result.stdout and "batch" in result.stdout


def test_ctrl_c_while_an_agent_is_answering_stops_the_run_and_writes_nothing(tmp_path):
    """A real SIGINT to a real process, while it waits on a Planner that takes long to answer."""
    import signal
    import time

    asked = []

    def slow(body, n):
        asked.append(n)
        return ("sleep", 60)  # far longer than the run may wait after Ctrl-C

    out = tmp_path / "story"
    with ChatServer(slow) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "interleave_thinker", "run", "a cat", "--out", str(out),
             "--planner", server.url, "--planner-model", "m", "--generator", "sandbox", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(600):  # wait (at most a minute) until the Planner has been asked
                if asked or process.poll() is not None:
                    break
                time.sleep(0.1)
            assert asked, process.communicate()[1]
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)  # a hang guard, not a speed claim
        finally:
            process.kill()
    assert process.returncode == cli.EXIT_INTERRUPTED and "interrupted" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written
