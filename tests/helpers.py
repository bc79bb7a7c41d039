"""Test stand-ins: scripted agents and a procedural generator that record every call."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class Call:
    messages: list
    seed: int
    temperature: float | None


class ScriptedAgent:
    """Answers from a list (the last answer repeats) or from a function of (messages, call number)."""

    def __init__(self, replies: Sequence[str] | Callable[[list, int], str], name: str = "scripted"):
        self.replies = replies
        self.name = name
        self.calls: list[Call] = []

    def complete(self, messages, *, seed, temperature=None, cancel=None):
        self.calls.append(Call(list(messages), seed, temperature))
        n = len(self.calls) - 1
        if callable(self.replies):
            return self.replies(messages, n)
        return self.replies[min(n, len(self.replies) - 1)]


def colour_of(*parts) -> tuple[int, int, int]:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return digest[0], digest[1], digest[2]


class PaintGenerator:
    """Deterministic pictures: a colour from (prompt, seed); an edit paints a band of it over the before
    image."""

    name = "paint"

    def __init__(self, edit_route: str = "img2img"):
        self.edit_route = edit_route
        self.calls: list[tuple] = []

    def text_to_image(self, prompt, *, width, height, seed):
        self.calls.append(("text_to_image", prompt, seed, None))
        return Image.new("RGB", (width, height), colour_of(prompt, seed))

    def edit(self, before, prompt, *, seed):
        self.calls.append(("edit", prompt, seed, before.copy()))
        pixels = np.asarray(before.convert("RGB")).copy()
        h = pixels.shape[0]
        pixels[h // 3 : 2 * h // 3] = colour_of(prompt, seed)
        return Image.fromarray(pixels)


def plan_text(*prompts, literal: bool = True, think: str = "planning") -> str:
    steps = [
        {
            "step_number": i + 1,
            "step_name": f"Step {i + 1}",
            "instruction": f"do {p}",
            "prompt": p,
            "auxiliary_text": None,
        }
        for i, p in enumerate(prompts)
    ]
    body = repr({"execution_plan": steps}) if literal else json.dumps({"execution_plan": steps})
    return f"<think>{think}</think>\n<answer>{body}</answer>"


def verdict_text(accepted: bool, prompt: str = "", think: str = "looked") -> str:
    return (
        f"<think>{think}</think><answer>{{'previous_step_success': {accepted}, "
        f"'refine_prompt': {prompt!r}}}</answer>"
    )


def pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


class ChatServer:
    """A real OpenAI-compatible chat-completions server on loopback, answering from a script.

    ``reply(request_json, n)`` returns text (a 200 answer), or ``(status, body)``, or ``("sleep", seconds)``
    to stall before answering. Every request body is kept in ``requests``.
    """

    def __init__(self, reply):
        import http.server
        import threading

        self.reply = reply
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                import time

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_headers"] = dict(self.headers)
                server.requests.append(body)
                answer = server.reply(body, len(server.requests) - 1)
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = "late"
                if isinstance(answer, tuple):
                    self._send(answer[0], answer[1])
                    return
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick(server, *extra):
    """CLI options for a quick offline run: the Planner at ``server``, the sandbox generator, 64x64."""
    return [
        "--planner", server.url, "--planner-model", "m", "--generator", "sandbox",
        "--width", "64", "--height", "64", "--retries", "0", "--quiet", *extra,
    ]  # fmt: skip
