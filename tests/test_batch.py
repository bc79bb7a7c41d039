"""``batch --concurrency``: overlapping stories give the storyboards of a sequential run, and a batch stopped
at any moment finishes every story exactly once when it is run again."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from helpers import ChatServer, colour_of, plan_text, verdict_text
from PIL import Image

from interleave_thinker import cli as program
from interleave_thinker.core import cli
from interleave_thinker.core.generators.base import GeneratorPool
from interleave_thinker.core.storyboard import Storyboard

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "blue", "green", "yellow")
NOTHING_ELSE, KEEP = "nothing else", "keep everything else unchanged"


class InFlight:
    """How many calls are inside a block at once, and the most there ever were."""

    def __init__(self):
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def story_lines(count: int) -> list[str]:
    return [f"a {COLOURS[i % 4]} {SHAPES[i % 3]} story number {i}" for i in range(count)]


def _text(body) -> tuple[str, int]:
    parts = body["messages"][0]["content"]
    images = sum(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict)), images


def agents(delay: float = 0.0, in_flight: InFlight | None = None):
    """A Planner and Critic behind one endpoint whose answers depend only on what they are asked, never on
    the order of the calls. Each call waits up to ``delay`` seconds (fixed by its content), so stories
    running together finish in a shuffled order. The Critic rejects a picture drawn from a prompt without
    its closing clause and asks for the clause."""

    def reply(body, n):
        text, images = _text(body)
        if in_flight is not None:
            with in_flight:
                time.sleep(delay * (hashlib.sha1(text.encode()).digest()[0] / 255))
        if images == 2:
            if NOTHING_ELSE in text or KEEP in text:
                return verdict_text(True)
            prompt = re.search(r'original instruction: "(.*?)"', text).group(1)
            return verdict_text(False, f"{prompt}, {NOTHING_ELSE if prompt.startswith('draw') else KEEP}")
        colour = next(c for c in COLOURS if c in text)
        shape = next(s for s in SHAPES if s in text)
        other = COLOURS[(COLOURS.index(colour) + 1) % 4]
        return plan_text(f"draw a large {colour} {shape} at the centre", f"make the {colour} {shape} {other}")

    return reply


def batch_args(stories, out, server, *extra) -> list[str]:
    return [
        "batch", str(stories), "--out", str(out), "--planner", server.url, "--planner-model", "m",
        "--width", "64", "--height", "64", "--retries", "0", "--quiet", *extra,
    ]  # fmt: skip


def comparable(folder) -> dict:
    """storyboard.json with what depends on the clock taken out."""
    data = json.loads((folder / "storyboard.json").read_text())
    data.pop("created"), data.pop("timings")
    for step in data["steps"]:
        for attempt in step["attempts"]:
            attempt.pop("generate_seconds"), attempt.pop("critic_seconds")
    return data


def pngs(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def assert_same_storyboards(first, second) -> None:
    stories = sorted(p.name for p in first.iterdir() if Storyboard.is_saved(p))
    assert stories and stories == sorted(p.name for p in second.iterdir() if Storyboard.is_saved(p))
    for name in stories:
        assert comparable(first / name) == comparable(second / name), name
        assert pngs(first / name) == pngs(second / name), name
    assert json.loads((first / "batch.json").read_text()) == json.loads((second / "batch.json").read_text())


def test_a_concurrent_batch_gives_the_storyboards_of_a_sequential_one(tmp_path, monkeypatch, capsys):
    from interleave_thinker.sandbox.generator import SandboxGenerator

    stories = tmp_path / "stories.txt"
    stories.write_text("\n".join(story_lines(6)) + "\n")
    drawing, asking = InFlight(), InFlight()
    real_text, real_edit = SandboxGenerator.text_to_image, SandboxGenerator.edit

    def text_to_image(self, *args, **kwargs):
        with drawing:
            return real_text(self, *args, **kwargs)

    def edit(self, *args, **kwargs):
        with drawing:
            return real_edit(self, *args, **kwargs)

    monkeypatch.setattr(SandboxGenerator, "text_to_image", text_to_image)
    monkeypatch.setattr(SandboxGenerator, "edit", edit)
    with ChatServer(agents(0.05, asking)) as server:
        sequential, concurrent = tmp_path / "one-by-one", tmp_path / "four-at-once"
        assert program.main(batch_args(stories, sequential, server, "--generator", "sandbox")) == 0
        assert asking.most == 1
        assert program.main(batch_args(stories, concurrent, server, "--generator", "sandbox",
                                       "--concurrency", "4")) == 0  # fmt: skip
    assert "6 of 6 stories done" in capsys.readouterr().out
    assert asking.most >= 2  # the agents were asked for several stories at once...
    assert drawing.most == 1  # ...and the in-process generator drew one picture at a time
    statuses = [a["status"] for s in comparable(sequential / Storyboard.find(sequential)[0].name)["steps"]
                for a in s["attempts"]]  # fmt: skip
    assert "rejected" in statuses and "accepted" in statuses  # retries happened, and they agree too
    assert_same_storyboards(sequential, concurrent)


def test_a_local_agent_shared_by_concurrent_stories_answers_one_call_at_a_time(
    tmp_path, tiny_agent_dir, monkeypatch
):
    from interleave_thinker.core.agents.transformers_agent import TransformersAgent

    stories = tmp_path / "stories.txt"
    stories.write_text("\n".join(story_lines(3)) + "\n")
    answering = InFlight()
    real = TransformersAgent.complete

    def complete(self, *args, **kwargs):
        with answering:
            return real(self, *args, **kwargs)

    monkeypatch.setattr(TransformersAgent, "complete", complete)
    local = ["--generator", "sandbox", "--critic", str(tiny_agent_dir), "--max-new-tokens", "6",
             "--device", "cpu"]  # fmt: skip
    with ChatServer(agents()) as server:
        assert program.main(batch_args(stories, tmp_path / "a", server, *local)) == 0
        assert program.main(batch_args(stories, tmp_path / "b", server, *local, "--concurrency", "3")) == 0
    assert answering.most == 1
    board = Storyboard.load(Storyboard.find(tmp_path / "b")[0])
    assert board.settings["critic"] == tiny_agent_dir.name and board.attempts[0].critic_output
    assert_same_storyboards(tmp_path / "a", tmp_path / "b")


def test_a_concurrent_batch_interrupted_then_rerun_finishes_every_story_once(tmp_path, monkeypatch, capsys):
    from interleave_thinker.sandbox.generator import SandboxGenerator

    stories = tmp_path / "stories.txt"
    stories.write_text("\n".join(story_lines(6)) + "\n")
    out = tmp_path / "batch"
    real = SandboxGenerator.edit

    def interrupted(self, *args, **kwargs):
        if saved(out):  # the first edit after a story was saved: Ctrl-C, with other stories in flight
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SandboxGenerator, "edit", interrupted)
    with ChatServer(agents(0.02, InFlight())) as server:
        argv = batch_args(stories, out, server, "--generator", "sandbox", "--concurrency", "3")
        assert program.main(argv) == cli.EXIT_INTERRUPTED
        # Every worker has stopped: nothing is written once the command has returned and let the lock go.
        assert not [t for t in threading.enumerate() if t.name.startswith("story")]
        assert not (out / "batch.lock").exists()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
        finished = {p.name: _identity(p) for p in saved(out)}
        assert 0 < len(finished) < 6
        records = {r["id"]: r["status"] for r in json.loads((out / "batch.json").read_text())}
        assert {name for name, status in records.items() if status == "done"} == set(finished)

        monkeypatch.setattr(SandboxGenerator, "edit", real)
        planned = len(server.requests)
        assert program.main(argv) == 0
        asked = [_text(body) for body in server.requests[planned:]]
    assert "6 of 6 stories done" in capsys.readouterr().out
    assert {p.name: _identity(p) for p in out.iterdir() if p.name in finished} == finished
    assert sum(images == 0 for _, images in asked) == 6 - len(finished)  # one plan per unfinished story
    assert len(saved(out)) == 6


def saved(out) -> list:
    """The finished story folders of a batch (a hidden folder is one still being written)."""
    return [p for p in out.iterdir() if not p.name.startswith(".") and Storyboard.is_saved(p)]


def _identity(folder):
    """What changes if a storyboard folder is rewritten: its inode, and its JSON's inode and mtime."""
    json_file = folder / "storyboard.json"
    return folder.stat().st_ino, json_file.stat().st_ino, json_file.stat().st_mtime_ns


def test_a_concurrent_batch_killed_part_way_then_rerun_finishes_every_story_once(tmp_path):
    """A real process, killed hard (SIGKILL: no clean-up runs) while several stories are in flight."""
    import signal

    count = 8
    stories = tmp_path / "stories.txt"
    stories.write_text("\n".join(story_lines(count)) + "\n")
    out = tmp_path / "batch"
    with ChatServer(agents(0.3, InFlight())) as server:
        argv = batch_args(stories, out, server, "--generator", "sandbox", "--concurrency", "3")
        process = subprocess.Popen(
            [sys.executable, "-m", "interleave_thinker", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(1200):  # at most two minutes, until the first story is saved
                if (out.is_dir() and saved(out)) or process.poll() is not None:
                    break
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            _, err = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode == -signal.SIGKILL, err
        finished = {p.name: _identity(p) for p in saved(out)}
        assert 0 < len(finished) < count, err
        planned = len(server.requests)
        assert program.main(argv) == 0
        asked = [_text(body) for body in server.requests[planned:]]
    assert {p.name: _identity(p) for p in out.iterdir() if p.name in finished} == finished
    assert sum(images == 0 for _, images in asked) == count - len(finished)  # one plan per unfinished story
    assert len(saved(out)) == count and not (out / "batch.lock").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the kill's leftovers are gone
    assert [r["status"] for r in json.loads((out / "batch.json").read_text())] == ["done"] * count


# ---------------------------------------------------------------------------------------------------------
# Several ComfyUI servers


class PaintingComfyUI:
    """A loopback stand-in for a ComfyUI server: it paints a picture from the graph's prompt and seed (an edit
    paints a band over the uploaded image), and records how many pictures it had in hand at once (from the
    prompt until its picture is fetched)."""

    def __init__(self):
        self.images: dict[str, bytes] = {}
        self.history: dict[str, dict] = {}
        self.prompts: list[dict] = []
        self.drawing = InFlight()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path, _, query = self.path.partition("?")
                if path.startswith("/history/"):
                    prompt_id = path.rsplit("/", 1)[1]
                    entry = outer.history.get(prompt_id)
                    self._send({prompt_id: entry} if entry else {})
                elif path == "/view":
                    name = urllib.parse.parse_qs(query)["filename"][0]
                    self._send(outer.images[name], "image/png")
                    outer.drawing.__exit__()  # the picture is delivered: the server is free again
                else:
                    self._send({})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/upload/image":
                    data = body.split(b"\r\n\r\n", 2)[2].rsplit(b"\r\n--", 1)[0]
                    name = hashlib.sha256(data).hexdigest()[:16] + ".png"
                    outer.images[name] = data
                    self._send({"name": name, "subfolder": ""})
                elif self.path == "/prompt":
                    outer.drawing.__enter__()
                    self._send({"prompt_id": outer.paint(json.loads(body)["prompt"])})
                else:
                    self._send({})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def paint(self, graph: dict) -> str:
        with self.lock:
            self.prompts.append(graph)
            number = len(self.prompts)
        nodes = {node["class_type"]: node["inputs"] for node in graph.values()}
        prompt = graph["2"]["inputs"]["text"]
        seed = nodes["KSampler"]["seed"]
        if "LoadImage" in nodes:
            picture = Image.open(io.BytesIO(self.images[nodes["LoadImage"]["image"]])).convert("RGB")
            band = Image.new("RGB", (picture.width, picture.height // 3), colour_of(prompt, seed))
            picture.paste(band, (0, picture.height // 3))
        else:
            size = (nodes["EmptyLatentImage"]["width"], nodes["EmptyLatentImage"]["height"])
            picture = Image.new("RGB", size, colour_of(prompt, seed))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        name = f"out-{number}.png"
        self.images[name] = buffer.getvalue()
        prompt_id = f"p{number}"
        self.history[prompt_id] = {
            "status": {"status_str": "success"},
            "outputs": {"7": {"images": [{"filename": name, "subfolder": "", "type": "temp"}]}},
        }
        return prompt_id

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def comfyui_servers():
    servers = [PaintingComfyUI() for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


def test_several_comfyui_servers_share_a_batch_and_draw_what_one_would(tmp_path, comfyui_servers, capsys):
    one, *more = comfyui_servers
    stories = tmp_path / "stories.txt"
    stories.write_text("\n".join(story_lines(6)) + "\n")
    generator = ["--checkpoint", "model.safetensors", "--steps", "4"]
    with ChatServer(agents(0.02, InFlight())) as server:
        alone = batch_args(stories, tmp_path / "one", server, "--comfyui", one.url, *generator)
        assert program.main(alone) == 0
        pooled = [arg for url in (s.url for s in more) for arg in ("--comfyui", url)]
        argv = batch_args(stories, tmp_path / "two", server, *pooled, *generator, "--concurrency", "4")
        assert program.main(argv) == 0
    assert "6 of 6 stories done" in capsys.readouterr().out
    assert_same_storyboards(tmp_path / "one", tmp_path / "two")
    board = Storyboard.load(Storyboard.find(tmp_path / "two")[0])
    assert (
        board.settings["generator"] == "ComfyUI model.safetensors"
        and board.settings["edit_route"] == "img2img"
    )
    assert all(server.prompts for server in more)  # both servers drew
    assert all(server.drawing.most == 1 for server in more)  # each was sent one picture at a time
    assert sum(len(s.prompts) for s in more) == len(one.prompts)
    assert one.prompts[0]["1"]["inputs"]["ckpt_name"] == "model.safetensors"
    assert one.prompts[0]["5"]["inputs"]["steps"] == 4


def test_a_pool_hands_calls_to_its_members_in_turn():
    class Member:
        name, edit_route = "m", "img2img"

        def __init__(self):
            self.calls = 0

        def text_to_image(self, prompt, *, width, height, seed):
            self.calls += 1
            return Image.new("RGB", (width, height))

    members = [Member(), Member(), Member()]
    pool = GeneratorPool(members)
    for seed in range(7):
        pool.text_to_image("x", width=8, height=8, seed=seed)
    assert [m.calls for m in members] == [3, 2, 2] and pool.name == "m" and pool.edit_route == "img2img"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--generator", "sandbox", "--concurrency", "0"], "--concurrency must be between 1 and 64"),
        (["--comfyui", "localhost:8188", "--checkpoint", "m"], "--comfyui: not an http(s) URL"),
        (["--comfyui", "http://127.0.0.1:1"], "--comfyui needs one of --checkpoint NAME"),
        (["--comfyui", "http://127.0.0.1:1", "--comfyui", "http://127.0.0.1:1/", "--checkpoint", "m"],
         "is given twice"),
        (["--comfyui", "http://127.0.0.1:1", "--comfyui-graph", "missing.json"],
         "--comfyui-graph: graph file not found"),
        (["--comfyui", "http://127.0.0.1:1", "--generator", "sandbox", "--checkpoint", "m"],
         "--generator or --comfyui, not both"),
        (["--generator", "sandbox", "--checkpoint", "m"], "--checkpoint goes with --comfyui"),
        ([], "name the generator: --generator DIR"),
    ],
)  # fmt: skip
def test_bad_concurrency_and_comfyui_options_are_one_clear_line(tmp_path, capsys, extra, message):
    stories = tmp_path / "stories.txt"
    stories.write_text("a red circle\n")
    with ChatServer(agents()) as server:
        code = program.main(batch_args(stories, tmp_path / "out", server, *extra))
        assert server.requests == []
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: ") and "\n" not in err
    assert message in err, err
