"""A client for a ComfyUI server under test: start it headless, submit graphs, follow them, read results."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

PACK_NAME = "interleave_thinker"  # the pack's folder name in custom_nodes
TINY_AGENT = "tiny-agent"  # the tiny transformers agent's folder in models/LLM

# The tiny agent with its end-of-turn tokens held back for ENDLESS_TOKENS tokens: only Cancel ends it early.
ENDLESS_AGENT = "tiny-agent-endless"
ENDLESS_TOKENS = 4096
# Fake secrets in the server's environment: no graph may make them leave it. One sits in the variable the
# machine allows by default, one in a variable a hostile graph names.
SECRETS = {
    "INTERLEAVE_THINKER_API_KEY": "sk-fake-allowed-3f9c1d7e",
    "HF_TOKEN": "hf_fakeSecretValue8a41b2c9",
}

# Lines that mean a model loaded with missing weights or a module failed: a run with them proves nothing.
BAD_LOG_LINES = ("clip missing", "unet missing", "IMPORT FAILED", "Traceback")


class PromptRejected(AssertionError):
    def __init__(self, body: dict):
        self.body = body
        super().__init__(json.dumps(body)[:2000])


@dataclass
class Run:
    """One finished prompt: its history entry and what the websocket said while it ran."""

    prompt_id: str
    history: dict
    events: list[dict] = field(default_factory=list)
    previews: int = 0

    @property
    def status(self) -> str:
        return self.history.get("status", {}).get("status_str", "")

    def messages(self, kind: str) -> list[dict]:
        return [data for name, data in self.history.get("status", {}).get("messages", []) if name == kind]

    def outputs(self, node_id: str) -> dict:
        return self.history.get("outputs", {}).get(node_id, {})

    def progress(self, node_id: str) -> list[tuple[int, int]]:
        return [
            (e["data"]["value"], e["data"]["max"])
            for e in self.events
            if e.get("type") == "progress" and e["data"].get("node") == node_id
        ]


class ComfyServer:
    """ComfyUI started as a subprocess on loopback with its own base directory; stopped by its PID."""

    def __init__(self, comfyui: Path, base: Path, port: int, env: dict[str, str | None] | None = None):
        """``env``: variables set in the server's environment on top of this one's (None removes one)."""
        self.comfyui, self.base, self.port = comfyui, base, port
        self.env = dict(env or {})
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = base / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        command = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--dont-print-server",
            "--base-directory",
            str(self.base),
            "--disable-api-nodes",
            "--database-url",
            "sqlite:///:memory:",
        ]
        # One CPU thread: tiny models gain nothing from a thread team, and a team spinning beside other busy
        # processes on a small machine made every prompt ten times slower.
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
        )
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        started = time.monotonic()
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=self.comfyui,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log.close()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    # -- HTTP ---------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def post(self, path: str, payload: dict, timeout: float = 30):
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return response.status, json.loads(body) if body.strip() else {}
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def submit(self, graph: dict, client_id: str = "tests") -> str:
        status, body = self.post("/prompt", {"prompt": graph, "client_id": client_id})
        if status != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:  # ComfyUI writes the entry when the prompt has finished
                return history[prompt_id]
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, graph: dict, timeout: float = 180.0, on_event=None) -> Run:
        """Submit ``graph`` with a websocket open; return the history and every event until it finished.

        ``on_event(event)`` sees each of the prompt's events as it arrives (to press Cancel mid-run, say).
        """
        return asyncio.run(self._run_ws(graph, timeout, on_event))

    def interrupt(self) -> None:
        """What ComfyUI's Cancel button sends."""
        status, _ = self.post("/interrupt", {})
        assert status == 200, status

    async def _run_ws(self, graph: dict, timeout: float, on_event=None) -> Run:
        import aiohttp

        client_id = uuid.uuid4().hex
        events: list[dict] = []
        previews = 0
        url = f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            prompt_id = await asyncio.to_thread(self.submit, graph, client_id)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")
                message = await ws.receive(timeout=left)
                if message.type == aiohttp.WSMsgType.BINARY:
                    (kind,) = struct.unpack(">I", message.data[:4])
                    previews += kind == 1  # PREVIEW_IMAGE
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"websocket closed: {message.type}")
                event = json.loads(message.data)
                events.append(event)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if on_event is not None:
                    on_event(event)
                if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
        return Run(prompt_id, await asyncio.to_thread(self.wait, prompt_id), events, previews)

    def upload(self, image: Image.Image, name: str) -> str:
        """Put ``image`` in the input folder through /upload/image; returns the name LoadImage takes."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + buffer.getvalue()
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        request = urllib.request.Request(
            self.url + "/upload/image",
            data=b"".join(parts),
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["name"]

    def view(self, image: dict) -> Image.Image:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return Image.open(io.BytesIO(self.get_bytes(f"/view?{query}"))).convert("RGB")


# ComfyUI 0.3.64's init_db leaves its migration connection open; when a garbage collection on the prompt
# thread finds it, SQLAlchemy logs that it could not reset it there (sqlite objects belong to the thread that
# made them). Those tracebacks are ComfyUI's own, come and go with allocation patterns, and say nothing of
# the pack: they are the one kind left out, recognised by their head and by every error in them.
_DB_LEAK_HEADS = ("Exception during reset or similar", "Exception terminating connection <sqlite3.Connection")
_DB_LEAK_ERROR = "sqlite3.ProgrammingError: SQLite objects created in a thread can only be used in that same"
_TRACEBACK_LINES = ("Traceback (most recent call last):", " ", "During handling of the above exception")


def bad_log_lines(text: str) -> list[str]:
    lines = text.splitlines()
    bad, index = [], 0
    while index < len(lines):
        if lines[index].startswith(_DB_LEAK_HEADS):
            end = index + 1  # the traceback chain: its lines, and each error line after a frame's code
            while end < len(lines) and (
                not lines[end] or lines[end].startswith(_TRACEBACK_LINES) or lines[end - 1].startswith(" ")
            ):
                end += 1
            errors = [
                line for line in lines[index + 1 : end] if line and not line.startswith(_TRACEBACK_LINES)
            ]
            if errors and all(line.startswith(_DB_LEAK_ERROR) for line in errors):
                index = end
                continue
        if any(kind in lines[index] for kind in BAD_LOG_LINES):
            bad.append(lines[index])
        index += 1
    return bad
