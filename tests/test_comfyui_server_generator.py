"""The ComfyUI-server generator's templates and failure modes; tests/comfyui runs it against a real server."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from helpers import free_port

from interleave_thinker.core.generators import GeneratorError
from interleave_thinker.core.generators.comfyui_server import (
    ComfyUIServerGenerator,
    checkpoint_graphs,
    fill,
    load_graph,
    placeholders,
)

TEXT, EDIT = checkpoint_graphs("model.safetensors", steps=4, cfg=5.0, denoise=0.5, negative_prompt="blurry")


def test_stock_graphs_carry_the_placeholders():
    assert placeholders(TEXT) == {"prompt", "seed", "width", "height"}
    assert placeholders(EDIT) == {"prompt", "seed", "image"}
    assert EDIT["5"]["inputs"]["denoise"] == 0.5 and TEXT["3"]["inputs"]["text"] == "blurry"


def test_fill_puts_numbers_where_numbers_go():
    graph = {
        "1": {
            "class_type": "X",
            "inputs": {
                "text": "photo of {{prompt}}, {{seed}}",
                "seed": "{{seed}}",
                "width": "{{width}}",
                "link": ["2", 0],
            },
        }
    }
    filled = fill(graph, {"prompt": "a {{cat}}", "seed": 7, "width": 64})
    assert filled["1"]["inputs"] == {
        "text": "photo of a {{cat}}, 7",
        "seed": 7,
        "width": 64,
        "link": ["2", 0],
    }
    assert graph["1"]["inputs"]["seed"] == "{{seed}}"  # the template is not touched


def test_templates_are_checked_when_the_generator_is_made(tmp_path):
    url = "http://127.0.0.1:8188"
    generator = ComfyUIServerGenerator(url, TEXT, EDIT)
    assert generator.edit_route == "img2img" and generator.text_output == "7"
    assert ComfyUIServerGenerator(url, TEXT).edit_route == "text-to-image"
    reference = json.loads(json.dumps(EDIT))
    reference["9"] = {
        "class_type": "ReferenceLatent",
        "inputs": {"conditioning": ["2", 0], "latent": ["4", 0]},
    }
    assert ComfyUIServerGenerator(url, TEXT, reference).edit_route == "reference"

    broken = json.loads(json.dumps(TEXT))
    broken["4"]["inputs"]["width"] = 512
    with pytest.raises(GeneratorError, match=r"text-to-image graph lacks the placeholders: \{\{width\}\}"):
        ComfyUIServerGenerator(url, broken)
    broken["4"]["inputs"]["width"] = "{{wdith}}"
    with pytest.raises(GeneratorError, match=r"unknown placeholders: \{\{wdith\}\}"):
        ComfyUIServerGenerator(url, broken)
    two_outputs = dict(TEXT, **{"8": {"class_type": "SaveImage", "inputs": {"images": ["6", 0]}}})
    with pytest.raises(GeneratorError, match="exactly one SaveImage or PreviewImage"):
        ComfyUIServerGenerator(url, two_outputs)
    assert ComfyUIServerGenerator(url, two_outputs, output_node="8").text_output == "8"
    with pytest.raises(GeneratorError, match="needs an edit graph"):
        ComfyUIServerGenerator(url, TEXT, edit_route="img2img")
    with pytest.raises(GeneratorError, match="not an http"):
        ComfyUIServerGenerator("localhost:8188", TEXT)

    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(GeneratorError, match="UI format; save it with Export \\(API\\)"):
        load_graph(ui)
    with pytest.raises(GeneratorError, match="graph file not found"):
        load_graph(tmp_path / "missing.json")
    path = tmp_path / "text.json"
    path.write_text(json.dumps(TEXT))
    assert load_graph(path) == TEXT


def test_an_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    generator = ComfyUIServerGenerator(url, TEXT, EDIT, request_timeout=5)
    with pytest.raises(GeneratorError, match=f"cannot reach ComfyUI at {url}"):
        generator.text_to_image("a cat", width=64, height=64, seed=1)


class FakeComfyHTTP:
    """A loopback HTTP server that answers /prompt and /history the way a stuck or strict ComfyUI would."""

    def __init__(self, prompt_status=200, prompt_body=None):
        self.requests: list[tuple[str, str, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(("GET", self.path, b""))
                self._send(200, {})  # the history never shows the prompt: it never finishes

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(("POST", self.path, body))
                if self.path == "/prompt":
                    self._send(prompt_status, prompt_body or {"prompt_id": "p1", "number": 0})
                else:
                    self._send(200, {})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_prompt_that_never_finishes_times_out_and_is_cancelled():
    with FakeComfyHTTP() as server:
        generator = ComfyUIServerGenerator(server.url, TEXT, timeout=0.5, poll_interval=0.05)
        with pytest.raises(GeneratorError, match=r"did not finish prompt p1 within 0.5 s"):
            generator.text_to_image("a cat", width=64, height=64, seed=1)
    paths = [path for method, path, _ in server.requests if method == "POST"]
    assert paths == ["/prompt", "/queue", "/interrupt"]
    sent = json.loads(server.requests[0][2])["prompt"]
    assert sent["2"]["inputs"]["text"] == "a cat" and sent["5"]["inputs"]["seed"] == 1
    assert sent["4"]["inputs"]["width"] == 64


def test_a_rejected_graph_says_which_node_and_why():
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": {
            "1": {
                "class_type": "CheckpointLoaderSimple",
                "errors": [
                    {"message": "Value not in list", "details": "ckpt_name: 'model.safetensors' not in []"}
                ],
            }
        },
    }
    with FakeComfyHTTP(prompt_status=400, prompt_body=body) as server:
        generator = ComfyUIServerGenerator(server.url, TEXT)
        with pytest.raises(GeneratorError) as error:
            generator.text_to_image("a cat", width=64, height=64, seed=1)
    message = str(error.value)
    assert f"{server.url}/prompt answered HTTP 400" in message
    assert (
        "node 1 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'model.safetensors' not in []"
        in message
    )
