"""The command line end to end on tiny models: run, batch (resumable) and the errors a user sees."""

import json
import subprocess
import sys

import pytest
from helpers import ChatServer, free_port, pixels, plan_text, quick, verdict_text
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
    assert not (out / "batch.lock").exists()  # Ctrl-C let the lock go
    boat = next(r["id"] for r in json.loads((out / "batch.json").read_text()) if "boat" in r["instruction"])
    (out / f".{boat}.tmp-deadbeef").mkdir()  # what a hard kill would leave behind
    (out / ".notes.tmp-cafef00d").write_text("mine")  # hidden, but not the batch's: it stays
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
    assert (out / ".notes.tmp-cafef00d").read_text() == "mine" and not (out / "batch.lock").exists()


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
    assert code == cli.EXIT_PLAN and "no valid plan after 3 tries" in err
    assert err.count("I would rather not") == 1  # the answer is quoted once


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


# ---------------------------------------------------------------------------------------------------------
# Hostile and unlucky inputs: each ends in one clear line and an exit code of the README's, nothing lost.
# These draw with the sandbox generator (sandbox sentences as prompts): no pipeline to load.

SANDBOX_PLAN = plan_text("draw a large red circle at the centre", "make the red circle blue")


def sandbox_reply(body, n):
    """The Planner's plan, or (for a call with two images, the Critic's) an acceptance."""
    parts = body["messages"][0]["content"]
    if sum(isinstance(p, dict) and p.get("type") == "image_url" for p in parts) == 2:
        return verdict_text(True)
    return SANDBOX_PLAN


@pytest.fixture
def sandbox_server():
    with ChatServer(sandbox_reply) as running:
        yield running


def test_a_second_batch_on_the_same_out_is_refused_and_a_killed_runs_lock_does_not_block(tmp_path, capsys):
    """Two real processes: the first holds --out while its Planner is slow; the second is refused at once.
    Killed hard, the first leaves its lock file behind, and the next run goes ahead all the same."""
    import signal
    import time

    stories = tmp_path / "stories.txt"
    stories.write_text("a red circle\n")
    out = tmp_path / "batch"

    def reply(body, n):
        return ("sleep", 60) if n == 0 else sandbox_reply(body, n)

    with ChatServer(reply) as server:
        argv = ["batch", str(stories), "--out", str(out), *quick(server, "--critic", "none")]
        first = subprocess.Popen(
            [sys.executable, "-m", "interleave_thinker", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(600):  # wait (at most a minute) until the first run is asking its Planner
                if server.requests or first.poll() is not None:
                    break
                time.sleep(0.1)
            assert server.requests, first.communicate()[1]

            code, err = _error(capsys, argv)
            assert (
                code == cli.EXIT_BAD_INPUT
                and f"--out {out} is in use by another run (pid {first.pid})" in err
            )
            assert len(server.requests) == 1 and [p.name for p in out.iterdir()] == ["batch.lock"]

            first.send_signal(signal.SIGKILL)  # no clean-up runs: the lock file stays
            first.communicate(timeout=30)
        finally:
            first.kill()
        assert (out / "batch.lock").read_text().strip() == str(first.pid)
        assert program.main(argv) == cli.EXIT_OK
    assert "1 of 1 stories done" in capsys.readouterr().out
    assert not (out / "batch.lock").exists() and len(Storyboard.find(out)) == 1


def test_a_batch_story_that_lost_its_storyboard_json_is_redone(sandbox_server, tmp_path, capsys):
    stories = tmp_path / "stories.jsonl"
    rows = [{"id": "one", "instruction": "a circle"}, {"id": "two", "instruction": "another circle"}]
    stories.write_text("\n".join(json.dumps(row) for row in rows + [{"id": "mine", "instruction": "x"}]))
    out = tmp_path / "batch"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("not a storyboard")  # a folder the batch did not make
    argv = ["batch", str(stories), "--out", str(out), *quick(sandbox_server)]
    assert program.main(argv) == cli.EXIT_BATCH
    assert "not a storyboard" in capsys.readouterr().err

    (out / "two" / "storyboard.json").unlink()  # what is left is pictures and pages, no storyboard
    finished = (out / "one" / "storyboard.json").stat().st_mtime_ns
    assert program.main(argv) == cli.EXIT_BATCH
    records = {r["id"]: r["status"] for r in json.loads((out / "batch.json").read_text())}
    assert records == {"one": "done", "two": "done", "mine": "failed"}
    assert (
        Storyboard.load(out / "two").steps
        and (out / "one" / "storyboard.json").stat().st_mtime_ns == finished
    )
    assert (out / "mine" / "notes.txt").read_text() == "not a storyboard"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _png_header(width, height):
    """The start of a PNG that says it is ``width`` x ``height``: enough for a reader to learn its size."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # a few rows; the rest would be decompressed from almost nothing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 10000, 20000])
def test_a_huge_input_image_or_a_decompression_bomb_is_refused(sandbox_server, tmp_path, capsys, side):
    # 9000: above the project's cap only; 10000: where Pillow warns; 20000: where Pillow refuses.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    argv = ["run", "continue <image>", "--image", str(bomb), "--out", str(tmp_path / "s")]
    code, err = _error(capsys, argv + quick(sandbox_server))
    assert code == cli.EXIT_BAD_INPUT and str(bomb) in err and "megapixels" in err and "downscale" in err
    assert sandbox_server.requests == [] and not (tmp_path / "s").exists()


def test_a_large_input_image_is_fitted_to_the_story_size(sandbox_server, tmp_path):
    big = tmp_path / "wide.png"
    Image.new("RGB", (1280, 640), "white").save(big)
    out = tmp_path / "s"
    argv = ["run", "<image> continue", "--image", str(big), "--out", str(out)]
    assert program.main(argv + quick(sandbox_server)) == 0
    story = Storyboard.load(out)
    assert story.mode == "guidance" and story.images
    for image in [*story.input_images, *story.images]:  # --width x --height in area, the photo's shape
        assert image.width * image.height <= 64 * 64 and image.size == (90, 45)


def test_an_out_that_cannot_be_written_fails_before_any_model_loads(
    sandbox_server, tmp_path, capsys, monkeypatch
):
    import os

    from interleave_thinker.core import files

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if getattr(os, "geteuid", lambda: 1)() == 0:
        # Root writes through permission bits: stand in the refusal every other user gets from this folder.
        real = files._can_create_in

        def refuse(folder):
            if folder == locked:
                raise PermissionError(13, "Permission denied")
            real(folder)

        monkeypatch.setattr(files, "_can_create_in", refuse)
    try:
        stories = tmp_path / "stories.txt"
        stories.write_text("a circle\n")
        for argv in (
            ["run", "a circle", "--out", str(locked / "story")],
            ["run", "a circle", "--out", str(locked / "deeper" / "story")],
            ["batch", str(stories), "--out", str(locked / "batch")],
        ):
            code, err = _error(capsys, argv + quick(sandbox_server))
            assert code == cli.EXIT_BAD_INPUT and f"{locked} is not writable" in err, err
        assert sandbox_server.requests == [] and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


class _Unpickled:
    """Pickled, it is a call that leaves a file behind: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_model_folder_of_pickled_weights_is_refused_and_never_unpickled(
    sandbox_server, tiny_agent_dir, tmp_path, capsys
):
    import pickle
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_agent_dir, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Unpickled(marker)))
    argv = ["run", "a circle", "--out", str(tmp_path / "s"), "--critic", str(folder), "--device", "cpu"]
    code, err = _error(capsys, argv + quick(sandbox_server))
    assert code == cli.EXIT_BAD_INPUT and "holds only pickled weights (pytorch_model.bin)" in err
    assert "safetensors are required" in err and sandbox_server.requests == []

    # A stray .safetensors file passes the folder check; the loader still reads safetensors only.
    (folder / "adapter_model.safetensors").write_bytes(b"")
    code, err = _error(capsys, argv + quick(sandbox_server))
    assert code == cli.EXIT_BACKEND and "cannot load the model" in err
    assert not marker.exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "foreign", "file"])
def test_overwrite_replaces_only_a_storyboard_or_an_empty_folder(
    sandbox_server, tmp_path, capsys, monkeypatch, where
):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("keep me")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(work)
    out, said = {
        "cwd": (".", "the current folder"),
        "parent": ("..", "a folder above the current one"),
        "home": (str(home), "your home folder"),
        "foreign": (str(tmp_path / "work"), "not a storyboard"),
        "file": ("precious.txt", "is a file"),
    }[where]
    if where == "foreign":
        monkeypatch.chdir(tmp_path)
    code, err = _error(capsys, ["run", "a circle", "--out", out, "--overwrite", *quick(sandbox_server)])
    assert code == cli.EXIT_BAD_INPUT and said in err and "choose a new folder" in err
    assert (work / "precious.txt").read_text() == "keep me" and sandbox_server.requests == []


def test_overwrite_replaces_a_storyboard_and_an_empty_folder_leaving_no_copy(sandbox_server, tmp_path):
    out = tmp_path / "story"
    out.mkdir()  # empty
    argv = ["run", "a circle", "--out", str(out), "--overwrite", *quick(sandbox_server)]
    assert program.main(argv) == 0 and Storyboard.is_saved(out)
    assert program.main(argv) == 0 and Storyboard.is_saved(out)  # a storyboard, replaced
    assert [p.name for p in tmp_path.iterdir()] == ["story"]  # no hidden .old- or .tmp- copy


def test_a_critic_that_fails_keeps_the_pictures_unchecked_and_says_so(tmp_path, capsys):
    def reply(body, n):
        critic = sum(
            isinstance(p, dict) and p.get("type") == "image_url" for p in body["messages"][0]["content"]
        )
        return (500, {"error": "the Critic is down"}) if critic == 2 else SANDBOX_PLAN

    out = tmp_path / "s"
    with ChatServer(reply) as server:
        assert program.main(["run", "a circle", "--out", str(out), *quick(server)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "2 of 2 pictures are unchecked: the Critic could not be used" in printed and "HTTP 500" in printed
    story = Storyboard.load(out)
    assert len(story.images) == 2 and [a.status for a in story.attempts] == ["unchecked", "unchecked"]
    assert all(a.critic_failed and "HTTP 500" in a.critic_error for a in story.attempts)
    assert "The Critic could not be used for 2 of 2 pictures" in (out / "index.html").read_text()

    with ChatServer(lambda body, n: (500, {"error": "the Planner is down"})) as server:
        code, err = _error(capsys, ["run", "a circle", "--out", str(tmp_path / "p"), *quick(server)])
    assert code == cli.EXIT_BACKEND and "HTTP 500" in err and not (tmp_path / "p").exists()


def test_run_and_batch_give_reference_pictures_to_the_generator(sandbox_server, tmp_path):
    cast = tmp_path / "cast.png"
    Image.new("RGB", (64, 64), "white").save(cast)
    out = tmp_path / "s"
    argv = ["run", "a red circle", "--reference", str(cast), "--anchor", "first", "--out", str(out)]
    assert program.main(argv + quick(sandbox_server)) == 0
    story = Storyboard.load(out)
    assert len(story.reference_images) == 1 and story.settings["loop"]["anchor"] == "first"
    assert all(a.references[:1] == ("reference 1",) for a in story.attempts)

    stories = tmp_path / "stories.jsonl"
    rows = [
        {"id": "cast", "instruction": "a circle", "references": ["cast.png"]},
        {"id": "bare", "instruction": "x"},
    ]
    stories.write_text("\n".join(json.dumps(row) for row in rows))
    assert program.main(["batch", str(stories), "--out", str(tmp_path / "b"), *quick(sandbox_server)]) == 0
    assert len(Storyboard.load(tmp_path / "b" / "cast").reference_images) == 1
    assert Storyboard.load(tmp_path / "b" / "bare").reference_images == []


def test_a_stories_row_cannot_reach_a_reference_outside_its_folder(sandbox_server, tmp_path, capsys):
    stories = tmp_path / "in" / "stories.jsonl"
    stories.parent.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    stories.write_text(json.dumps({"id": "x", "instruction": "a circle", "references": ["../secret.png"]}))
    assert (
        program.main(["batch", str(stories), "--out", str(tmp_path / "b"), *quick(sandbox_server)])
        == cli.EXIT_BATCH
    )
    records = json.loads((tmp_path / "b" / "batch.json").read_text())
    assert records[0]["status"] == "failed" and "leaves the folder" in records[0]["error"]
    assert sandbox_server.requests == []


def test_too_many_references_or_a_reference_on_resume_is_bad_input(sandbox_server, tmp_path, capsys):
    from interleave_thinker.core.settings import MAX_REFERENCES

    cast = tmp_path / "cast.png"
    Image.new("RGB", (8, 8)).save(cast)
    argv = ["run", "x", "--out", str(tmp_path / "s")] + ["--reference", str(cast)] * (MAX_REFERENCES + 1)
    code, err = _error(capsys, argv + quick(sandbox_server))
    assert code == cli.EXIT_BAD_INPUT and f"at most {MAX_REFERENCES}" in err
    assert sandbox_server.requests == []
    argv = [
        "resume",
        str(tmp_path),
        "--from-step",
        "1",
        "--reference",
        str(cast),
        "--out",
        str(tmp_path / "r"),
    ]
    code, err = _error(capsys, argv + quick(sandbox_server))
    assert code == cli.EXIT_BAD_INPUT and "leave out --reference" in err
