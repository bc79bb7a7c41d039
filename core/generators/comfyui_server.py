"""A running ComfyUI server as a generator: API-format graphs with placeholders, driven over HTTP (stdlib
only).

A graph template is ComfyUI's API format (``{node_id: {"class_type", "inputs"}}``, as "Export (API)" saves it)
in which input values name what this generator fills in:

    "{{prompt}}"            the prompt (also inside a longer string: "photo, {{prompt}}")
    "{{seed}}"              the seed (an integer)
    "{{width}}" "{{height}}" the picture size (integers; the edit graph gets the before image's size)
    "{{image}}"             the uploaded before image, for a LoadImage node (edit graph only)

The text-to-image graph needs {{prompt}}, {{seed}}, {{width}} and {{height}}; the edit graph needs {{prompt}},
{{seed}} and {{image}}. The result is the image of the graph's one SaveImage/PreviewImage node (or the node
named by ``output_node``). Without an edit graph, edits are independent text-to-image pictures.

    gen = ComfyUIServerGenerator.for_checkpoint("http://127.0.0.1:8188", "sd_xl_base_1.0.safetensors")
    picture = gen.text_to_image("a red fox", width=1024, height=1024, seed=1)
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from ..messages import to_rgb
from .base import IMG2IMG, REFERENCE, TEXT_TO_IMAGE, GeneratorError, check_route

PLACEHOLDER_RE = re.compile(r"\{\{(\w+)\}\}")
TEXT_PLACEHOLDERS = ("prompt",)
NUMBER_PLACEHOLDERS = ("seed", "width", "height")
KNOWN = set(TEXT_PLACEHOLDERS + NUMBER_PLACEHOLDERS + ("image",))
TEXT_NEEDS = {"prompt", "seed", "width", "height"}
EDIT_NEEDS = {"prompt", "seed", "image"}
OUTPUT_NODES = ("SaveImage", "PreviewImage")


def load_graph(graph: str | Path | Mapping) -> dict:
    """An API-format graph from a dict or a JSON file; the UI format (with "nodes" and "links") is refused."""
    if isinstance(graph, Mapping):
        data = copy.deepcopy(dict(graph))
        where = "the graph"
    else:
        path = Path(graph)
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GeneratorError(f"graph file not found: {path}") from None
        except (OSError, ValueError) as error:
            raise GeneratorError(f"cannot read the graph {path}: {error}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise GeneratorError(f"{where} is in ComfyUI's UI format; save it with Export (API) instead")
    if (
        not isinstance(data, dict)
        or not data
        or not all(
            isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
            for node in data.values()
        )
    ):
        raise GeneratorError(f"{where} is not an API-format graph ({{node_id: {{class_type, inputs}}}})")
    return data


def placeholders(graph: Mapping) -> set[str]:
    found: set[str] = set()
    for node in graph.values():
        for value in node["inputs"].values():
            if isinstance(value, str):
                found.update(PLACEHOLDER_RE.findall(value))
    return found


def fill(graph: Mapping, values: Mapping[str, Any]) -> dict:
    """A copy of ``graph`` with every placeholder replaced; a whole-value number placeholder becomes a
    number."""
    filled = copy.deepcopy(dict(graph))
    for node in filled.values():
        for key, value in node["inputs"].items():
            if not isinstance(value, str):
                continue
            whole = PLACEHOLDER_RE.fullmatch(value)
            if whole:
                node["inputs"][key] = values[whole.group(1)]
            else:
                node["inputs"][key] = PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]), value)
    return filled


def find_output_node(graph: Mapping, chosen: str | None) -> str:
    if chosen is not None:
        if chosen not in graph:
            raise GeneratorError(f"output node {chosen!r} is not in the graph")
        return chosen
    found = [node_id for node_id, node in graph.items() if node["class_type"] in OUTPUT_NODES]
    if len(found) != 1:
        raise GeneratorError(
            f"the graph needs exactly one SaveImage or PreviewImage node (found {len(found)}); "
            f"or name the output node"
        )
    return found[0]


def _check_template(graph: Mapping, needs: set[str], what: str) -> None:
    present = placeholders(graph)
    unknown = present - KNOWN
    if unknown:
        raise GeneratorError(
            f"the {what} graph has unknown placeholders: "
            + ", ".join("{{" + name + "}}" for name in sorted(unknown))
        )
    missing = needs - present
    if missing:
        raise GeneratorError(
            f"the {what} graph lacks the placeholders: "
            + ", ".join("{{" + name + "}}" for name in sorted(missing))
        )


def graph_route(graph: Mapping) -> str:
    """What an edit graph does with the before image: reference when it sets a reference latent."""
    types = {node["class_type"] for node in graph.values()}
    if types & {"ReferenceLatent", "TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus"}:
        return REFERENCE
    return IMG2IMG


class ComfyUIServerGenerator:
    """Pictures from a ComfyUI server: a text-to-image graph, and an edit graph for the before image.

    Each call is its own HTTP exchange, so threads may share one; the server queues what they send. To spread
    a batch over several servers (one per GPU), put one generator per URL in a ``GeneratorPool``.
    """

    concurrent_safe = True

    def __init__(
        self,
        url: str,
        text_graph: str | Path | Mapping,
        edit_graph: str | Path | Mapping | None = None,
        *,
        edit_route: str = "auto",
        output_node: str | None = None,
        timeout: float = 600.0,
        request_timeout: float = 30.0,
        poll_interval: float = 0.2,
        name: str | None = None,
    ):
        self.url = url.strip().rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise GeneratorError(f"not an http(s) URL: {url!r} (expected e.g. http://127.0.0.1:8188)")
        if timeout <= 0 or request_timeout <= 0 or poll_interval <= 0:
            raise ValueError("timeouts and the poll interval must be positive")
        self.text_graph = load_graph(text_graph)
        _check_template(self.text_graph, TEXT_NEEDS, "text-to-image")
        self.text_output = find_output_node(self.text_graph, output_node)
        self.edit_graph = load_graph(edit_graph) if edit_graph is not None else None
        check_route(edit_route)
        if self.edit_graph is None:
            if edit_route not in ("auto", TEXT_TO_IMAGE):
                raise GeneratorError(f"the {edit_route!r} edit route needs an edit graph")
            self.edit_route = TEXT_TO_IMAGE
        else:
            _check_template(self.edit_graph, EDIT_NEEDS, "edit")
            self.edit_output = find_output_node(self.edit_graph, output_node)
            self.edit_route = graph_route(self.edit_graph) if edit_route == "auto" else edit_route
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.client_id = uuid.uuid4().hex
        self.name = name or f"ComfyUI at {self.url}"

    @classmethod
    def for_checkpoint(
        cls,
        url: str,
        checkpoint: str,
        *,
        steps: int = 20,
        cfg: float = 7.0,
        sampler_name: str = "euler",
        scheduler: str = "normal",
        denoise: float = 0.6,
        negative_prompt: str = "",
        **kwargs,
    ) -> ComfyUIServerGenerator:
        """Text-to-image and img2img graphs for one checkpoint file of the server (SD1.5, SDXL and the
        like)."""
        text, edit = checkpoint_graphs(
            checkpoint,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            negative_prompt=negative_prompt,
        )
        kwargs.setdefault("name", f"ComfyUI {checkpoint}")
        return cls(url, text, edit, **kwargs)

    # -- the Generator protocol ---------------------------------------------------------------------------
    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int) -> Image.Image:
        values = {"prompt": prompt, "seed": int(seed), "width": int(width), "height": int(height)}
        return self._fit(self._run(fill(self.text_graph, values), self.text_output), (width, height))

    def edit(self, before: Image.Image, prompt: str, *, seed: int) -> Image.Image:
        before = to_rgb(before)
        if self.edit_graph is None:
            return self.text_to_image(prompt, width=before.width, height=before.height, seed=seed)
        values = {
            "prompt": prompt,
            "seed": int(seed),
            "width": before.width,
            "height": before.height,
            "image": self.upload(before),
        }
        return self._fit(self._run(fill(self.edit_graph, values), self.edit_output), before.size)

    @staticmethod
    def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)

    # -- HTTP ---------------------------------------------------------------------------------------------
    def upload(self, image: Image.Image) -> str:
        """Put the before image in the server's input folder; returns the name a LoadImage node takes."""
        buffer = io.BytesIO()
        to_rgb(image).save(buffer, format="PNG")
        data = buffer.getvalue()
        name = f"interleave-thinker-{hashlib.sha256(data).hexdigest()[:16]}.png"
        boundary = uuid.uuid4().hex
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: image/png\r\n\r\n".encode(),
                data,
                b"\r\n",
                f"--{boundary}--\r\n".encode(),
            ]
        )
        answer = self._request("/upload/image", body, f"multipart/form-data; boundary={boundary}")
        subfolder = answer.get("subfolder") or ""
        return f"{subfolder}/{answer['name']}" if subfolder else answer["name"]

    def _run(self, graph: dict, node_id: str) -> Image.Image:
        payload = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        prompt_id = self._request("/prompt", payload, "application/json")["prompt_id"]
        entry = self._wait(prompt_id)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise GeneratorError(f"ComfyUI at {self.url} did not finish the graph: {_failure(status)}")
        images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
        if not images:
            raise GeneratorError(f"ComfyUI at {self.url} finished, but node {node_id} returned no image")
        first = images[0]
        query = urllib.parse.urlencode({key: first.get(key, "") for key in ("filename", "subfolder", "type")})
        data = self._get(f"/view?{query}", raw=True)
        try:
            with Image.open(io.BytesIO(data)) as picture:
                return to_rgb(picture.copy())
        except (OSError, ValueError) as error:
            raise GeneratorError(f"ComfyUI at {self.url} sent an unreadable image: {error}") from None

    def _wait(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            history = self._get(f"/history/{prompt_id}")
            if prompt_id in history:  # the entry appears when the prompt has finished
                return history[prompt_id]
            time.sleep(self.poll_interval)
        self._cancel(prompt_id)
        raise GeneratorError(
            f"ComfyUI at {self.url} did not finish prompt {prompt_id} within {self.timeout:g} s"
        )

    def _cancel(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the queue, or stop it if it is running."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._request(path, json.dumps(payload).encode(), "application/json")
            except GeneratorError:
                pass

    def _get(self, path: str, raw: bool = False):
        return self._call(urllib.request.Request(self.url + path, method="GET"), raw)

    def _request(self, path: str, data: bytes, content_type: str) -> dict:
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": content_type}
        )
        return self._call(request, raw=False)

    def _call(self, request: urllib.request.Request, raw: bool):
        endpoint = request.full_url.split("?")[0]
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise GeneratorError(
                f"ComfyUI at {endpoint} answered HTTP {error.code}: {_http_detail(error)}"
            ) from None
        except TimeoutError:
            raise GeneratorError(
                f"ComfyUI at {endpoint} did not answer within {self.request_timeout:g} s"
            ) from None
        except urllib.error.URLError as error:
            raise GeneratorError(f"cannot reach ComfyUI at {self.url}: {error.reason}") from None
        except OSError as error:
            raise GeneratorError(f"cannot reach ComfyUI at {self.url}: {error}") from None
        if raw:
            return body
        try:
            return json.loads(body) if body.strip() else {}
        except ValueError:
            raise GeneratorError(f"ComfyUI at {endpoint} did not answer with JSON") from None

    def __repr__(self) -> str:
        return f"ComfyUIServerGenerator({self.url!r}, edit_route={self.edit_route!r})"


def _http_detail(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    parts = []
    if isinstance(body.get("error"), dict):
        parts.append(body["error"].get("message", ""))
    for node_id, node in (body.get("node_errors") or {}).items():
        for problem in node.get("errors", []):
            parts.append(
                f"node {node_id} ({node.get('class_type', '?')}): {problem.get('message', '')}"
                f"{': ' + problem['details'] if problem.get('details') else ''}"
            )
    return "; ".join(part for part in parts if part)[:1000] or " ".join(text.split())[:300]


def _failure(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (
                f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}) raised "
                f"{data.get('exception_type', 'an error')}: {data.get('exception_message', '').strip()}"
            )
        if kind == "execution_interrupted":
            return "the prompt was interrupted"
    return status.get("status_str") or "unknown status"


def checkpoint_graphs(
    checkpoint: str,
    *,
    steps: int = 20,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    denoise: float = 0.6,
    negative_prompt: str = "",
) -> tuple[dict, dict]:
    """Stock text-to-image and img2img graphs (core nodes only) around one checkpoint."""
    sampler = {
        "seed": "{{seed}}",
        "steps": steps,
        "cfg": cfg,
        "sampler_name": sampler_name,
        "scheduler": scheduler,
        "model": ["1", 0],
        "positive": ["2", 0],
        "negative": ["3", 0],
    }
    common = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative_prompt, "clip": ["1", 1]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        # PreviewImage writes to the server's temp folder, which it empties on restart.
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    text = copy.deepcopy(common)
    text["4"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
    }
    text["5"] = {"class_type": "KSampler", "inputs": dict(sampler, latent_image=["4", 0], denoise=1.0)}
    edit = copy.deepcopy(common)
    edit["8"] = {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}}
    edit["4"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["1", 2]}}
    edit["5"] = {"class_type": "KSampler", "inputs": dict(sampler, latent_image=["4", 0], denoise=denoise)}
    return text, edit


__all__ = ["ComfyUIServerGenerator", "checkpoint_graphs", "fill", "load_graph", "placeholders"]
