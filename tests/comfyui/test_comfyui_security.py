"""A shared workflow is input from a stranger: hostile API-format graphs posted to the real ComfyUI.

A listener stands in for the stranger's server. It is reachable from this machine, so a pack that wrongly
called it would be seen, yet its address counts as foreign: ``0.0.0.0`` (Linux connects to this machine) and
the machine's own network address where it has one. The server runs with fake secrets in its environment
(client.SECRETS) and no allow-list, as a fresh install does.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from client import SECRETS, TINY_AGENT, PromptRejected
from helpers import ChatServer, plan_text
from test_comfyui_integration import SAVE, SD15, api_workflow, sd15_story, tiny_loop, use_endpoint

from interleave_thinker.core.endpoints import CONFIG_FILE_NAME, DEFAULT_KEY_ENV, ENDPOINTS_ENV, KEY_ENVS_ENV
from interleave_thinker.nodes.agent_nodes import ENDPOINT, LOCAL

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

AGENT, PLANNER, SHOWN = "1", "10", "40"


class Listener:
    """An HTTP server on ``bind`` that counts every connection it accepts, before reading a byte of it.

    ``redirect_to``: answer every request with a 307 to the same path at that origin instead (a loopback
    server that tries to send the pack elsewhere).
    """

    def __init__(self, bind: str = "127.0.0.1", redirect_to: str | None = None):
        listener = self
        self.connections = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                if redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b'{"object": "list", "data": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with listener.lock:
                    listener.connections += 1
                return True

        self.httpd = Server((bind, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def own_address() -> str | None:
    """This machine's address on its network, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def reaches(host: str, listener: Listener) -> bool:
    """True when a connection to ``host`` arrives at ``listener``; the count is then back at zero."""
    if not reachable(host, listener.port):
        return False
    deadline = time.monotonic() + 5
    while listener.connections == 0 and time.monotonic() < deadline:  # accepted on the listener's thread
        time.sleep(0.01)
    arrived, listener.connections = listener.connections, 0
    return arrived == 1


@pytest.fixture
def attackers():
    """(foreign host as a graph names it, its listener): every one reachable, every one foreign."""
    candidates = [("0.0.0.0", "127.0.0.1")]
    address = own_address()
    if address:
        candidates.append((address, address))
    found = []
    try:
        for host, bind in candidates:
            listener = Listener(bind).__enter__()
            found.append((host, listener))
        usable = [(host, listener) for host, listener in found if reaches(host, listener)]
        if not usable:
            pytest.skip("no address that reaches this machine and is not loopback (0.0.0.0, own address)")
        yield usable
    finally:
        for _, listener in found:
            listener.__exit__(None, None, None)


def planner_graph(**agent) -> dict:
    """Load Agent -> Planner -> PreviewAny: the part of any story workflow that a graph could aim."""
    inputs = {
        "backend": ENDPOINT,
        "model": TINY_AGENT,
        "endpoint_url": "http://127.0.0.1:8000/v1",
        "endpoint_model": "m",
        "api_key_env": "",
        "dtype": "fp32",
        "device": "cpu",
        "memory": "offload to CPU between calls",
        "max_new_tokens": 8,
        "temperature": 0.0,
    }
    inputs.update(agent)
    return {
        AGENT: {"class_type": "InterleaveThinkerLoadAgent", "inputs": inputs},
        PLANNER: {
            "class_type": "InterleaveThinkerPlanner",
            "inputs": {
                "agent": [AGENT, 0],
                "instruction": "a fox story",
                "mode": "narrative",
                "max_steps": 4,
                "seed": 0,
            },
        },
        SHOWN: {"class_type": "PreviewAny", "inputs": {"source": [PLANNER, 1]}},
    }


def assert_no_secret_in(*texts: str) -> None:
    for text in texts:
        for name, value in SECRETS.items():
            assert value not in text, f"the value of {name} leaked"


def refused_on(run, node_id: str) -> str:
    kinds = [kind for kind, _ in run.history["status"]["messages"]]
    assert "execution_error" in kinds and "execution_success" not in kinds, kinds
    (error,) = run.messages("execution_error")
    assert error["node_id"] == node_id, error
    assert error["exception_type"] == "InterleaveThinker.NodeError"
    return error["exception_message"]


# ---------------------------------------------------------------------------------------------------------


def test_a_shared_workflow_cannot_reach_a_foreign_host_or_a_secret(
    comfy_server, attackers, server_errors_expected
):
    start = comfy_server.log_size()
    runs = []
    with Listener() as loopback:
        for host, attacker in attackers:
            foreign = f"http://{host}:{attacker.port}/v1"
            # A foreign host, with the key variable this machine allows by default (its value is set).
            run = comfy_server.run(planner_graph(endpoint_url=foreign, api_key_env=DEFAULT_KEY_ENV))
            message = refused_on(run, AGENT)
            assert f"{foreign} is not allowed on this machine" in message and "no request was sent" in message
            # The error says how to allow it on purpose: either place the machine's owner controls.
            assert ENDPOINTS_ENV in message and CONFIG_FILE_NAME in message
            assert f"{host}:{attacker.port}" in message
            runs.append(run)

            # A foreign host and a secret variable.
            run = comfy_server.run(planner_graph(endpoint_url=foreign, api_key_env="HF_TOKEN"))
            assert "is not allowed on this machine" in refused_on(run, AGENT)
            runs.append(run)
            assert attacker.connections == 0, f"{host} was contacted"

        # An allowed host with a secret variable: refused unread, and not even the probe is sent.
        url = f"http://127.0.0.1:{loopback.port}/v1"
        run = comfy_server.run(planner_graph(endpoint_url=url, api_key_env="HF_TOKEN"))
        message = refused_on(run, AGENT)
        assert "HF_TOKEN is not allowed to hold an API key on this machine, so it was not read" in message
        assert KEY_ENVS_ENV in message and CONFIG_FILE_NAME in message
        runs.append(run)
        assert loopback.connections == 0

    # Nothing of either secret anywhere a user or a log reader could see it.
    assert_no_secret_in(
        comfy_server.log_since(start),
        json.dumps(comfy_server.get("/history")),
        *(json.dumps(run.history) + json.dumps(run.events) for run in runs),
    )


def test_a_redirect_to_a_foreign_host_is_not_followed(comfy_server, attackers, server_errors_expected):
    start = comfy_server.log_size()
    host, attacker = attackers[0]
    with Listener(redirect_to=f"http://{host}:{attacker.port}") as redirector:
        url = f"http://127.0.0.1:{redirector.port}/v1"
        run = comfy_server.run(planner_graph(endpoint_url=url, api_key_env=DEFAULT_KEY_ENV))
        message = refused_on(run, PLANNER)
        assert "a redirect to" in message and "redirects are never followed" in message
        assert redirector.connections >= 2  # the probe and the Planner's request came; nothing went on
    assert attacker.connections == 0
    assert_no_secret_in(comfy_server.log_since(start), json.dumps(run.history), message)


def test_a_host_allowed_on_purpose_is_called(comfy_server, comfy_base):
    """What the refusal says to do works: the file in ComfyUI's user folder allows the host, no restart."""
    allow = comfy_base / "user" / CONFIG_FILE_NAME
    with ChatServer(lambda body, n: plan_text("a fox")) as server:
        port = server.url.split(":")[2].split("/")[0]
        foreign = server.url.replace("127.0.0.1", "0.0.0.0")
        if not reachable("0.0.0.0", int(port)):
            pytest.skip("0.0.0.0 does not reach this machine here")
        graph = planner_graph(endpoint_url=foreign, api_key_env=DEFAULT_KEY_ENV)
        allow.parent.mkdir(parents=True, exist_ok=True)
        allow.write_text(json.dumps({"endpoints": [f"0.0.0.0:{port}"]}))
        try:
            run = comfy_server.run(graph)
        finally:
            allow.unlink()
        assert run.status == "success", run.history["status"]
        assert len(server.requests) == 1
        # The allowed key goes to the allowed host, and only there.
        assert server.requests[0]["_headers"]["Authorization"] == f"Bearer {SECRETS[DEFAULT_KEY_ENV]}"
    assert_no_secret_in(json.dumps(run.history), json.dumps(run.events))


# ---------------------------------------------------------------------------------------------------------
# Path-like inputs


def refused_input(comfy_server, graph: dict, node_id: str) -> dict:
    """The one queue-time error a node got (ComfyUI repeats a failed check on every input its hook names).

    The graph's only output must depend on the node: ComfyUI runs the other outputs of a graph and drops
    only those that failed validation.
    """
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.submit(graph)
    errors = rejected.value.body["node_errors"]
    assert list(errors) == [node_id], errors
    (error,) = errors[node_id]["errors"]
    return error


def snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")} if folder.exists() else set()


def test_path_like_inputs_stay_inside_comfyuis_folders(comfy_server, comfy_base, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stories.txt").write_text("A SECRET STORY\n")
    around = comfy_base.parent
    before, before_outside = snapshot(around), snapshot(outside)

    # Load Agent's model: a folder inside models/LLM, nothing else, whatever the backend.
    absolute_agent = str(comfy_base / "models" / "LLM" / TINY_AGENT)  # exists, but named from outside
    for backend in (LOCAL, ENDPOINT):
        for escape in ("../x", "../../../etc", f"{TINY_AGENT}/../../..", "/etc", absolute_agent):
            error = refused_input(comfy_server, planner_graph(backend=backend, model=escape), AGENT)
            assert error["extra_info"]["input_name"] == "model"
            assert "model must stay inside models/LLM" in error["details"], escape

    # Save Storyboard's filename_prefix: refused when queued, before the story is drawn.
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        for escape in ("../../x", "InterleaveThinker/../../../x", str(outside / "x"), "/x"):
            graph = sd15_story(planner, None, escape)
            del graph["31"]  # the attempts preview: Save Storyboard is the only output
            error = refused_input(comfy_server, graph, SAVE)
            assert error["extra_info"]["input_name"] == "filename_prefix"
            assert "filename_prefix must stay inside the output folder" in error["details"], escape
        assert planner.requests == []

    # Story List's file: a file directly in the input folder, nothing else.
    graph = api_workflow("batch_story_list")
    graph["5"]["inputs"]["ckpt_name"] = SD15
    del graph["31"]
    tiny_loop(graph)
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        use_endpoint(graph, "1", planner)
        use_endpoint(graph, "2", planner)
        for escape in ("../stories.txt", str(outside / "stories.txt"), "../../../../etc/hostname.txt"):
            graph["8"]["inputs"]["file"] = escape
            error = refused_input(comfy_server, graph, "8")
            assert error["extra_info"]["input_name"] == "file"
            assert "directly in the input folder" in error["details"], escape
            assert "SECRET STORY" not in json.dumps(error)
        assert planner.requests == []

    # Nothing was written outside ComfyUI's folders.
    assert {entry for entry in snapshot(around) - before if not entry.startswith(comfy_base.name)} == set()
    assert snapshot(outside) == before_outside
    assert not list(Path("/").glob("x_0*"))
