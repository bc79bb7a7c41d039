"""An OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio, hosted APIs) as an agent.

The HTTP client is a small one on a plain socket rather than urllib, so that:
- it connects only to the host the endpoint policy checked, in the spelling it checked (no second URL parser);
- it never follows a redirect (a 3xx is an error naming the target);
- one deadline bounds the whole call: name lookup, connect, TLS, sending, every byte of the answer, retries
  and the waits between them, so a server that trickles bytes cannot stretch it;
- every wait looks at ``cancel`` each :data:`POLL` seconds; a cancelled call closes its socket and returns.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import http.client
import io
import ipaddress
import json
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import settings
from ..endpoints import Endpoint, EndpointPolicy
from ..errors import BadInput, Cancelled
from ..messages import Message
from .base import AgentError, AgentSpecError, Decoding

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
RETRY_AFTER_STATUS = {429, 503}  # where a Retry-After header is honoured
POLL = 0.1  # seconds between looks at cancel and the deadline while waiting
MAX_BACKOFF = 30.0
MAX_ANSWER_BYTES = 32 * 2**20
PROBE_TIMEOUT = 5.0
CHAT_PATH = "/chat/completions"
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", -1)}
_WAITING = (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def image_data_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
    """Chat completions over HTTP, to an endpoint the policy allows, with the key from an allowed variable.

    ``timeout`` bounds one :meth:`complete` call in total, retries and their waits included; ``retries``
    bounds the extra attempts after a failure worth retrying (HTTP 408/409/425/429/5xx, a garbled reply).
    ``policy`` defaults to what the machine allows (:meth:`EndpointPolicy.machine` without a config file).
    """

    concurrent_safe = True  # every call is its own connection: a batch's threads share one agent

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        policy: EndpointPolicy | None = None,
        decoding: Decoding = Decoding(),
        timeout: float = settings.DEFAULT_HTTP_TIMEOUT,
        retries: int = settings.DEFAULT_HTTP_RETRIES,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not model:
            raise AgentSpecError("an OpenAI-compatible endpoint needs a model name")
        if retries < 0 or timeout <= 0:
            raise BadInput("retries must be >= 0 and timeout > 0")
        policy = EndpointPolicy.machine() if policy is None else policy
        self.endpoint = policy.check(base_url)
        path = self.endpoint.path
        self._base_path = path[: -len(CHAT_PATH)] if path.endswith(CHAT_PATH) else path
        self._chat_path = self._base_path + CHAT_PATH
        self.url = f"{self.endpoint.scheme}://{self.endpoint.netloc}{self._chat_path}"
        self.model = model
        self.name = model
        self.decoding = decoding
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._api_key = policy.read_key(api_key_env)
        if self._api_key is not None and not _header_safe(self._api_key):
            raise BadInput(
                f"the API key in {api_key_env.strip()} holds line breaks, control or non-Latin-1 characters "
                "(not shown); check that variable"
            )

    def complete(
        self,
        messages: Sequence[Message],
        *,
        seed: int,
        temperature: float | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> str:
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
        body = self._post(payload, cancel)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AgentError(f"{self.url} answered without choices[0].message.content") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(
                part.get("text") or "" for part in content if isinstance(part, dict) and "text" in part
            )
        if content is not None and not isinstance(content, str):
            raise AgentError(f"{self.url} answered a message content that is not text")
        return (content or "").strip()

    def probe(self, timeout: float = PROBE_TIMEOUT, cancel: Callable[[], bool] | None = None) -> None:
        """Fail in plain words when nothing answers HTTP at the endpoint; any HTTP status will do.

        One GET of ``<base>/models`` without the key; a redirect is not followed.
        """
        clock = _Clock(timeout, cancel)
        base = f"{self.endpoint.scheme}://{self.endpoint.netloc}{self._base_path}"
        try:
            _exchange(self.endpoint, "GET", self._base_path + "/models", None, {}, clock)
        except _OutOfTime:
            raise AgentError(
                f"{base}: no answer within {timeout:g} s; is the server running there?"
            ) from None
        except (_Retry, _Fatal) as failure:
            raise AgentError(f"{base}: {failure}") from None

    def _post(self, payload: dict[str, Any], cancel: Callable[[], bool] | None) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        clock = _Clock(self.timeout, cancel)
        last: _Retry | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._answer(_exchange(self.endpoint, "POST", self._chat_path, data, headers, clock))
            except _OutOfTime:
                before = f"; before that: {self._say(str(last))}" if last else ""
                raise AgentError(
                    f"{self.url}: no complete answer within {self.timeout:g} s (the timeout bounds the whole "
                    f"call, retries included) after {attempt} attempt(s){before}"
                ) from None
            except _Fatal as failure:
                raise AgentError(f"{self.url}: {self._say(str(failure))}") from None
            except _Retry as failure:
                last = failure
            reason = self._say(str(last))
            if attempt > self.retries:
                raise AgentError(f"{self.url}: {reason} after {attempt} attempt(s)")
            wait = last.wait if last.wait is not None else min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
            if wait >= clock.left():
                asked = "the server asked to wait" if last.wait is not None else "the next retry would wait"
                raise AgentError(
                    f"{self.url}: {reason} after {attempt} attempt(s); {asked} {wait:g} s, more than is left "
                    f"of the {self.timeout:g} s timeout"
                )
            self._wait(wait, clock)

    def _answer(self, answer: _Answer) -> dict[str, Any]:
        status = answer.status
        if 200 <= status < 300:
            try:
                text = answer.body.decode("utf-8")
            except UnicodeDecodeError:
                raise _Retry("the answer is not UTF-8 text") from None
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                raise _Retry(f"the answer is not JSON ({_excerpt(text)!r})") from None
        if 300 <= status < 400:
            target = answer.headers.get("Location") or "nowhere given"
            raise _Fatal(
                f"answered HTTP {status}, a redirect to {_excerpt(target)}; redirects are never followed: "
                "use the final URL as the endpoint (its host must be allowed too)"
            )
        detail = _error_detail(answer.body)
        what = f"HTTP {status}{': ' + detail if detail else ''}"
        if status in (401, 403):
            raise _Fatal(f"refused the request ({what}); check the API key")
        if status in RETRY_STATUS:
            wait = _retry_after(answer.headers.get("Retry-After")) if status in RETRY_AFTER_STATUS else None
            raise _Retry(what, wait)
        raise _Fatal(f"answered {what}")

    def _wait(self, seconds: float, clock: _Clock) -> None:
        remaining = seconds
        while remaining > 0:
            clock.check_cancel()
            step = min(POLL, remaining)
            self._sleep(step)
            remaining -= step
        clock.check_cancel()

    def _say(self, text: str) -> str:
        """Server-supplied text for a message, with the key blanked should the server echo it."""
        return text.replace(self._api_key, "[key]") if self._api_key else text

    def __repr__(self) -> str:
        return f"OpenAIAgent({self.url!r}, model={self.model!r})"


# ---------------------------------------------------------------------------------------------------------
# the HTTP exchange


class _OutOfTime(Exception):
    """The call's deadline passed."""


class _Retry(Exception):
    """A failure another attempt may cure; ``wait`` is the server's Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Fatal(Exception):
    """A failure another attempt would repeat."""


class _Clock:
    def __init__(self, seconds: float, cancel: Callable[[], bool] | None):
        self.end = time.monotonic() + seconds
        self.cancel = cancel

    def left(self) -> float:
        return self.end - time.monotonic()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")

    def slice(self) -> float:
        """How long the next blocking step may wait: at most POLL, never past the deadline."""
        self.check_cancel()
        left = self.left()
        if left <= 0:
            raise _OutOfTime()
        return min(POLL, left)


@dataclass
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _exchange(
    endpoint: Endpoint, method: str, target: str, body: bytes | None, headers: dict[str, str], clock: _Clock
) -> _Answer:
    """One request on a fresh connection (``Connection: close``), read to its end within the clock."""
    sock = _open(endpoint, clock)
    try:
        lines = [
            f"{method} {target or '/'} HTTP/1.1",
            f"Host: {endpoint.netloc}",
            "User-Agent: interleave-thinker",
            "Accept-Encoding: identity",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        unsent: OSError | None = None
        try:
            _send_all(sock, request, clock)
        except ssl.SSLError as error:
            raise _Fatal(f"TLS failed ({_excerpt(str(error))})") from None
        except OSError as error:  # a server may answer (413, 400) and close before reading it all
            unsent = error
        try:
            return _receive(sock, method, clock)
        except _Retry:
            if unsent is None:
                raise
            raise _Retry(f"the connection broke while sending ({_excerpt(str(unsent))})") from None
    finally:
        sock.close()


def _receive(sock: socket.socket, method: str, clock: _Clock) -> _Answer:
    try:
        response = http.client.HTTPResponse(_Wire(sock, clock), method=method)
        response.begin()
        return _Answer(response.status, response.headers, _read_all(response))
    except http.client.RemoteDisconnected:
        raise _Retry("the server closed the connection without answering") from None
    except http.client.IncompleteRead as error:
        raise _Retry(f"the server closed the connection mid-reply ({len(error.partial)} bytes in)") from None
    except http.client.HTTPException as error:
        raise _Retry(
            f"the answer is not valid HTTP ({_excerpt(str(error) or type(error).__name__)})"
        ) from None
    except ssl.SSLError as error:
        raise _Fatal(f"TLS failed ({_excerpt(str(error))})") from None
    except OSError as error:
        raise _Retry(f"the connection broke ({_excerpt(str(error) or type(error).__name__)})") from None


def _open(endpoint: Endpoint, clock: _Clock) -> socket.socket:
    sock = _connect(endpoint, clock)
    if endpoint.scheme != "https":
        return sock
    try:
        # The wrapped socket takes over the descriptor: from here on it is the one to close.
        sock = ssl.create_default_context().wrap_socket(
            sock, server_hostname=endpoint.host, do_handshake_on_connect=False
        )
        while True:
            sock.settimeout(clock.slice())
            try:
                sock.do_handshake()
                return sock
            except _WAITING:
                continue
    except ssl.SSLCertVerificationError as error:
        sock.close()
        reason = _excerpt(error.verify_message or str(error))
        raise _Fatal(f"its TLS certificate is not trusted ({reason})") from None
    except ssl.SSLError as error:
        sock.close()
        reason = _excerpt(str(error))
        raise _Fatal(f"TLS failed ({reason}); does the server speak https on that port?") from None
    except OSError as error:
        sock.close()
        raise _Retry(f"the connection broke during TLS ({_excerpt(str(error))})") from None
    except BaseException:
        sock.close()
        raise


def _connect(endpoint: Endpoint, clock: _Clock) -> socket.socket:
    failure: OSError | None = None
    for host in endpoint.connect_hosts():
        try:
            addresses = _resolve(host, endpoint.port, clock)
        except OSError as error:
            failure = failure or error
            continue
        for family, kind, proto, _, address in addresses:
            clock.slice()  # a call cancelled or out of time opens nothing more
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code in _IN_PROGRESS:
                    # A selector, not select(): it takes any descriptor number, and on Windows it reports a
                    # failed connect as ready too.
                    with selectors.DefaultSelector() as selector:
                        selector.register(sock, selectors.EVENT_WRITE)
                        while not selector.select(clock.slice()):
                            pass
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                return sock
            except OSError as error:
                sock.close()
                failure = failure or error  # the first says most ("refused", not "no IPv6 here")
            except BaseException:
                sock.close()
                raise
    reason = _excerpt(str(failure) if failure else "no address")
    raise _Retry(f"unreachable ({reason}); is the server running at that address?")


def _resolve(host: str, port: int, clock: _Clock) -> list:
    """Addresses for ``host``: literals without a resolver, names looked up off-thread within the clock."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    found: dict[str, Any] = {}
    done = threading.Event()

    def look_up() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            found["error"] = error
        finally:
            done.set()

    threading.Thread(target=look_up, name="interleave-thinker-resolve", daemon=True).start()
    while not done.wait(clock.slice()):
        pass
    if "error" in found:
        raise found["error"]
    return found["addresses"]


def _send_all(sock: socket.socket, data: bytes, clock: _Clock) -> None:
    view = memoryview(data)
    while len(view):
        sock.settimeout(clock.slice())
        try:
            sent = sock.send(view)
        except _WAITING:
            continue
        view = view[sent:]


class _Reader(io.RawIOBase):
    """Socket reads that wait at most one POLL slice at a time, looking at cancel and the deadline between."""

    def __init__(self, sock: socket.socket, clock: _Clock):
        self._sock = sock
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            self._sock.settimeout(self._clock.slice())
            try:
                return self._sock.recv_into(buffer)
            except _WAITING:
                continue


class _Wire:
    """What :class:`http.client.HTTPResponse` needs of a socket: a file to read the answer from."""

    def __init__(self, sock: socket.socket, clock: _Clock):
        self._file = io.BufferedReader(_Reader(sock, clock))

    def makefile(self, *args, **kwargs):
        return self._file


def _read_all(response: http.client.HTTPResponse) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = response.read(65536)
        if not chunk:
            # read(amt) ends quietly at a close before Content-Length; what is left says it was cut short.
            if response.length:
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Fatal(f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB")
        chunks.append(chunk)


# ---------------------------------------------------------------------------------------------------------


def _header_safe(value: str) -> bool:
    return all(" " <= c <= "\xff" and c != "\x7f" for c in value)


def _excerpt(text: str, limit: int = 200) -> str:
    """Server text for a message: one line of printable characters, bounded."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay seconds or an HTTP date); None when absent or unreadable."""
    value = (value or "").strip()
    if value.isdigit() and len(value) <= 9:
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_detail(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        message = json.loads(text).get("error", text)
        if isinstance(message, dict):
            message = message.get("message", text)
        text = str(message)
    except (ValueError, AttributeError, RecursionError):
        pass
    return _excerpt(text)


__all__ = ["OpenAIAgent", "image_data_url", "to_openai_messages"]
