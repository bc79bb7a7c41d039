"""The HTTP agent against loopback servers that misbehave: trickling, closing mid-reply, garbling,
redirecting, asking to come back later, never answering. Every server listens on 127.0.0.1 only, and every
loop is bounded.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from helpers import verdict_text

from interleave_thinker.core.agents import Decoding
from interleave_thinker.core.agents.base import AgentError
from interleave_thinker.core.agents.openai_agent import OpenAIAgent
from interleave_thinker.core.endpoints import (
    DEFAULT_KEY_ENV,
    ENDPOINTS_ENV,
    EndpointPolicy,
    EndpointPolicyError,
)
from interleave_thinker.core.errors import Cancelled
from interleave_thinker.core.messages import planner_messages

MESSAGES = planner_messages("a red circle")
HANG_GUARD = 5.0  # seconds; only catches a hang, says nothing about speed


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def reply(status: int = 200, body: bytes = b"", headers: dict | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """A loopback TCP server handing each connection and its request to ``handle(conn, request, n)``."""

    def __init__(self, handle, host: str = "127.0.0.1", family=socket.AF_INET, read_first: bool = True):
        self.handle = handle
        self.read_first = read_first
        self.requests: list[dict] = []
        self.client_closed = threading.Event()
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"http://{netloc}:{self.port}/v1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(HANG_GUARD)
        self.listener.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            conn.settimeout(HANG_GUARD)
            try:
                request = read_request(conn) if self.read_first else {}
                self.requests.append(request)
                self.handle(conn, request, len(self.requests) - 1)
            except OSError:
                pass

    def wait_until_client_closes(self, conn, seconds: float = HANG_GUARD) -> None:
        """Hold the connection open, answering nothing, until the client hangs up (bounded)."""
        conn.settimeout(0.05)
        for _ in range(int(seconds / 0.05)):
            try:
                if conn.recv(1024) == b"":
                    self.client_closed.set()
                    return
            except TimeoutError:
                continue
            except OSError:
                self.client_closed.set()
                return


def read_request(conn) -> dict:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("Content-Length", 0))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return {"line": lines[0], "headers": headers, "body": body}


def agent_for(url: str, **options) -> OpenAIAgent:
    return OpenAIAgent(url, "m", decoding=Decoding(max_new_tokens=8), **options)


class Waits(list):
    """A stand-in for time.sleep that records how long the agent chose to wait."""

    def __call__(self, seconds):
        self.append(seconds)

    @property
    def total(self):
        return round(sum(self), 6)


# ---------------------------------------------------------------------------------------------------------
# the deadline


def test_a_trickling_server_cannot_stretch_the_timeout():
    def trickle(conn, request, n):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(200):  # a byte every 50 ms: each read succeeds well within any per-read timeout
            conn.sendall(b" ")
            time.sleep(0.05)

    with RawServer(trickle) as server:
        agent = agent_for(server.url, timeout=1.0, retries=3)
        started = time.monotonic()
        with pytest.raises(AgentError, match=r"no complete answer within 1 s .* after 1 attempt\(s\)"):
            agent.complete(MESSAGES, seed=0)
        assert time.monotonic() - started < HANG_GUARD


def test_a_server_that_never_answers_costs_one_timeout_not_one_per_retry():
    # Before: every attempt got the whole timeout (4 x 120 s plus backoff with the defaults).
    with RawServer(lambda conn, request, n: server.wait_until_client_closes(conn)) as server:
        agent = agent_for(server.url, timeout=0.5, retries=3)
        with pytest.raises(AgentError, match=r"within 0.5 s \(the timeout bounds the whole call"):
            agent.complete(MESSAGES, seed=0)
        assert server.client_closed.wait(HANG_GUARD)
        assert len(server.requests) == 1


def test_retry_after_on_429_is_honoured():
    answers = [reply(429, b'{"error": "slow down"}', {"Retry-After": "2"}), reply(body=completion("ok"))]
    with RawServer(lambda conn, request, n: conn.sendall(answers[n])) as server:
        waits = Waits()
        agent = agent_for(server.url, sleep=waits)
        assert agent.complete(MESSAGES, seed=0) == "ok"
    assert len(server.requests) == 2 and waits.total == 2.0


def test_retry_after_as_an_http_date_on_503():
    from email.utils import formatdate

    later = formatdate(time.time() + 3, usegmt=True)
    answers = [reply(503, b"", {"Retry-After": later}), reply(body=completion("ok"))]
    with RawServer(lambda conn, request, n: conn.sendall(answers[n])) as server:
        waits = Waits()
        assert agent_for(server.url, sleep=waits).complete(MESSAGES, seed=0) == "ok"
    assert 0 < waits.total <= 3.0


def test_a_retry_after_beyond_the_deadline_fails_at_once_instead_of_waiting():
    answer = reply(503, b'{"error": {"message": "warming up"}}', {"Retry-After": "3600"})
    with RawServer(lambda conn, request, n: conn.sendall(answer)) as server:
        waits = Waits()
        agent = agent_for(server.url, timeout=5.0, sleep=waits)
        with pytest.raises(AgentError) as caught:
            agent.complete(MESSAGES, seed=0)
    message = str(caught.value)
    assert (
        "HTTP 503: warming up" in message and "asked to wait 3600 s" in message and "5 s timeout" in message
    )
    assert waits == [] and len(server.requests) == 1


# ---------------------------------------------------------------------------------------------------------
# broken answers are retried, then one clear error


def test_a_server_closing_mid_reply_is_retried():
    def handle(conn, request, n):
        if n == 0:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + completion("cut")[:20])
        else:
            conn.sendall(reply(body=completion("whole")))

    with RawServer(handle) as server:
        assert agent_for(server.url, sleep=Waits()).complete(MESSAGES, seed=0) == "whole"
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("send", "why"),
    [
        (lambda conn: conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{"choi'), "mid-reply"),
        (lambda conn: None, "closed the connection without answering"),
        (
            lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"),
            "mid-reply",
        ),
        (lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"), "not valid HTTP"),
        (lambda conn: conn.sendall(reply(body=b"\xff\xfe\x00{not utf-8")), "not UTF-8"),
        (lambda conn: conn.sendall(reply(body="é".encode("latin-1"))), "not UTF-8"),
        (lambda conn: conn.sendall(reply(body=b"<html>Bad gateway</html>")), "not JSON .*Bad gateway"),
        (lambda conn: conn.sendall(reply(body=b"[" * 100000)), "not JSON"),
    ],
)
def test_broken_answers_are_retried_then_one_clear_error(send, why):
    with RawServer(lambda conn, request, n: send(conn)) as server:
        waits = Waits()
        agent = agent_for(server.url, retries=2, sleep=waits)
        with pytest.raises(AgentError, match=why) as caught:
            agent.complete(MESSAGES, seed=0)
    assert "after 3 attempt(s)" in str(caught.value) and len(server.requests) == 3
    assert waits.total == 1.0 + 2.0  # the backoff between the three


def test_a_non_utf8_answer_then_a_good_one():
    answers = [reply(body=b"\x80\x81"), reply(body=completion(verdict_text(True)))]
    with RawServer(lambda conn, request, n: conn.sendall(answers[n])) as server:
        assert "previous_step_success" in agent_for(server.url, sleep=Waits()).complete(MESSAGES, seed=0)


# ---------------------------------------------------------------------------------------------------------
# redirects are never followed


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_error_naming_its_target_and_the_target_gets_nothing(status):
    with RawServer(lambda conn, request, n: conn.sendall(reply(body=completion("stolen")))) as target:
        to = target.url + "/chat/completions"
        with RawServer(lambda conn, request, n: conn.sendall(reply(status, b"", {"Location": to}))) as server:
            agent = agent_for(server.url)
            with pytest.raises(AgentError) as caught:
                agent.complete(MESSAGES, seed=0)
        assert target.requests == []
    message = str(caught.value)
    assert f"HTTP {status}" in message and to in message and "never followed" in message
    assert len(server.requests) == 1  # not retried either


def test_the_probe_does_not_follow_a_redirect_nor_send_the_key(monkeypatch):
    monkeypatch.setenv(DEFAULT_KEY_ENV, "s3cret")
    with RawServer(lambda conn, request, n: conn.sendall(reply(body=b"{}"))) as target:
        moved = reply(302, b"", {"Location": target.url + "/models"})
        with RawServer(lambda conn, request, n: conn.sendall(moved)) as server:
            agent = agent_for(server.url, api_key_env=DEFAULT_KEY_ENV)
            agent.probe()  # any HTTP answer means something is listening
        assert target.requests == []
    assert server.requests[0]["line"] == "GET /v1/models HTTP/1.1"
    assert "Authorization" not in server.requests[0]["headers"]


def test_the_probe_says_when_nothing_listens():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        agent = agent_for(f"http://127.0.0.1:{port}/v1")
        with pytest.raises(AgentError, match="unreachable"):
            agent.probe(timeout=2)


# ---------------------------------------------------------------------------------------------------------
# cancel


def test_cancel_aborts_a_request_that_is_waiting_for_its_answer():
    with RawServer(lambda conn, request, n: server.wait_until_client_closes(conn)) as server:
        stop = threading.Event()
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        agent = agent_for(server.url, timeout=60.0)
        started = time.monotonic()
        with pytest.raises(Cancelled):
            agent.complete(MESSAGES, seed=0, cancel=stop.is_set)
        assert time.monotonic() - started < HANG_GUARD
        assert server.client_closed.wait(HANG_GUARD)  # the request was aborted, not left running
        timer.cancel()


def test_cancel_stops_the_wait_between_retries():
    with RawServer(lambda conn, request, n: conn.sendall(reply(500, b'{"error": "busy"}'))) as server:
        stop = threading.Event()
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        agent = agent_for(server.url, timeout=60.0, backoff=30.0)
        started = time.monotonic()
        with pytest.raises(Cancelled):
            agent.complete(MESSAGES, seed=0, cancel=stop.is_set)
        assert time.monotonic() - started < HANG_GUARD
        timer.cancel()
    assert len(server.requests) == 1


def test_a_call_cancelled_before_it_starts_sends_nothing():
    with RawServer(lambda conn, request, n: conn.sendall(reply(body=completion("x")))) as server:
        with pytest.raises(Cancelled):
            agent_for(server.url).complete(MESSAGES, seed=0, cancel=lambda: True)
    assert server.requests == []


def test_cancel_that_never_fires_changes_nothing():
    with RawServer(lambda conn, request, n: conn.sendall(reply(body=completion("fine")))) as server:
        assert agent_for(server.url).complete(MESSAGES, seed=0, cancel=lambda: False) == "fine"


# ---------------------------------------------------------------------------------------------------------
# the policy, before any request


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("the network was touched")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_foreign_host_is_refused_before_any_request(monkeypatch, no_network):
    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    with pytest.raises(EndpointPolicyError, match=ENDPOINTS_ENV):
        agent_for("https://attacker.example/v1")


def test_an_allowed_host_and_key_from_the_environment_travel(monkeypatch):
    monkeypatch.setenv(DEFAULT_KEY_ENV, "s3cret")
    with RawServer(lambda conn, request, n: conn.sendall(reply(body=completion("ok")))) as server:
        url = server.url.replace("127.0.0.1", "LOCALHOST.")
        agent = agent_for(url, api_key_env=DEFAULT_KEY_ENV)
        assert agent.url == f"http://localhost:{server.port}/v1/chat/completions"
        assert agent.complete(MESSAGES, seed=0) == "ok"
    request = server.requests[0]
    assert request["line"] == "POST /v1/chat/completions HTTP/1.1"
    assert request["headers"]["Host"] == f"localhost:{server.port}"
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert json.loads(request["body"])["model"] == "m"


def test_a_refused_key_variable_is_never_read_by_the_agent(monkeypatch):
    from test_endpoints import GuardedEnviron

    guarded = GuardedEnviron({"AWS_SECRET_ACCESS_KEY": "aws-secret"}, forbidden={"AWS_SECRET_ACCESS_KEY"})
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", guarded)
        with pytest.raises(EndpointPolicyError) as caught:
            agent_for("http://127.0.0.1:8000/v1", api_key_env="AWS_SECRET_ACCESS_KEY")
    assert "aws-secret" not in str(caught.value) and "AWS_SECRET_ACCESS_KEY" not in guarded.reads


def test_an_explicit_policy_is_what_the_agent_checks_against(no_network):
    trusted = EndpointPolicy().allow(endpoints=["https://api.example.com/v1"])
    agent = OpenAIAgent("https://api.example.com/v1/", "gpt", policy=trusted)
    assert agent.url == "https://api.example.com/v1/chat/completions"


def test_a_server_echoing_the_key_does_not_put_it_in_the_error(monkeypatch):
    monkeypatch.setenv(DEFAULT_KEY_ENV, "s3cret-key-value")

    def echo(conn, request, n):
        body = json.dumps({"error": {"message": "bad key " + request["headers"]["Authorization"]}}).encode()
        conn.sendall(reply(400, body))

    with RawServer(echo) as server:
        with pytest.raises(AgentError, match="HTTP 400") as caught:
            agent_for(server.url, api_key_env=DEFAULT_KEY_ENV).complete(MESSAGES, seed=0)
    assert "s3cret-key-value" not in str(caught.value)


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = RawServer(
            lambda conn, request, n: conn.sendall(reply(body=completion("six"))), "::1", socket.AF_INET6
        )
    except OSError:
        pytest.skip("::1 is not available on this machine")
    with server:
        assert agent_for(server.url).complete(MESSAGES, seed=0) == "six"


# ---------------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
    ]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    made = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if made.returncode:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-200:]}")
    return key, cert


def tls_handler(key, cert, answer: bytes):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handle(conn, request, n):
        raise AssertionError("unused")

    class TLSServer(RawServer):
        def _one(self, conn):
            with conn:
                conn.settimeout(HANG_GUARD)
                self.requests.append(None)  # counted before the handshake, so before the client can fail
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        self.requests[-1] = read_request(tls)
                        tls.sendall(answer)
                except OSError:
                    pass

    return TLSServer(handle)


def test_https_with_a_trusted_certificate(certificate, monkeypatch):
    key, cert = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the default context trusts
    with tls_handler(key, cert, reply(body=completion("secure"))) as server:
        agent = agent_for(server.url.replace("http://", "https://"))
        assert agent.complete(MESSAGES, seed=0) == "secure"


def test_https_with_an_untrusted_certificate_is_refused_once(certificate, monkeypatch):
    key, cert = certificate
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with tls_handler(key, cert, reply(body=completion("x"))) as server:
        agent = agent_for(server.url.replace("http://", "https://"))
        with pytest.raises(AgentError, match="certificate is not trusted"):
            agent.complete(MESSAGES, seed=0)
        assert len(server.requests) == 1  # not retried
        with pytest.raises(AgentError, match="certificate is not trusted"):
            agent.probe()


def test_https_to_a_plain_http_server_says_so_once():
    plain = RawServer(lambda conn, request, n: conn.sendall(reply(400, b"plain http")), read_first=False)
    with plain as server:
        agent = agent_for(server.url.replace("http://", "https://"))
        with pytest.raises(AgentError, match="does the server speak https on that port"):
            agent.complete(MESSAGES, seed=0)
        assert len(server.requests) == 1
