"""An OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio, hosted APIs) as an agent."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from ..messages import Message
from .base import AgentError, Decoding

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def image_data_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_endpoint(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise AgentError(f"not an http(s) URL: {base_url!r} (expected e.g. http://127.0.0.1:8000/v1)")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def to_openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(part["image"])}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        converted.append({"role": message["role"], "content": parts})
    return converted


class OpenAIAgent:
    """Chat completions over HTTP with timeouts and bounded retries; the key comes from an environment variable."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        decoding: Decoding = Decoding(),
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not model:
            raise AgentError("an OpenAI-compatible endpoint needs a model name")
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.url = chat_endpoint(base_url)
        self.model = model
        self.name = model
        self.decoding = decoding
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._api_key = None
        if api_key_env:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise AgentError(f"environment variable {api_key_env} is not set; export the API key there")

    def complete(self, messages: Sequence[Message], *, seed: int, temperature: float | None = None) -> str:
        temperature = self.decoding.temperature if temperature is None else temperature
        payload = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "max_tokens": self.decoding.max_new_tokens,
            "temperature": temperature,
            "seed": seed % (2**31),
        }
        if temperature > 0:
            payload["top_p"] = self.decoding.top_p
        body = self._post(payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AgentError(f"{self.url} answered without choices[0].message.content") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return (content or "").strip()

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                detail = _read_error(error)
                last = f"HTTP {error.code}{': ' + detail if detail else ''}"
                if error.code in (401, 403):
                    raise AgentError(f"{self.url} refused the request ({last}); check the API key") from None
                if error.code not in RETRY_STATUS:
                    raise AgentError(f"{self.url} answered {last}") from None
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as error:
                reason = error.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"unreachable ({reason}); is the server running at that address?"
            except (ConnectionError, OSError) as error:
                last = f"connection failed ({error})"
            except json.JSONDecodeError:
                last = "the answer is not JSON"
        raise AgentError(f"{self.url}: {last} after {self.retries + 1} attempt(s)")

    def __repr__(self) -> str:
        return f"OpenAIAgent({self.url!r}, model={self.model!r})"


def _read_error(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        message = json.loads(text).get("error", text)
        if isinstance(message, dict):
            message = message.get("message", text)
        text = str(message)
    except (ValueError, AttributeError):
        pass
    return " ".join(text.split())[:200]
