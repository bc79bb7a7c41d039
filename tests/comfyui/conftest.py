"""A real ComfyUI for the integration tests: COMFYUI_PATH names the checkout; without it they are skipped.

With COMFYUI_PATH set they must run: a wrong path is an error, and any skip among them counts as a failure,
so a run that was meant to test against ComfyUI cannot pass without doing so.

One server per session, headless on loopback with a temporary base directory: this pack symlinked into its
custom_nodes, tiny seeded checkpoints in its models folder, the tiny transformers agent in models/LLM (and a
copy of it that never ends an answer on its own). The server's environment holds fake secrets and no
allow-list of this machine's, so it allows what a fresh install allows: loopback and the default key variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from client import (
    BAD_LOG_LINES,
    ENDLESS_AGENT,
    ENDLESS_TOKENS,
    PACK_NAME,
    SECRETS,
    TINY_AGENT,
    ComfyServer,
    bad_log_lines,
)
from helpers import free_port

HERE = Path(__file__).resolve().parent
PACK = HERE.parents[1]


_RUNNING: list[ComfyServer] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # The server holds gigabytes of models: stop it after the last test here, not when the whole run ends.
    yield
    if _RUNNING:
        later = item.session.items[item.session.items.index(item) + 1 :]
        if not any(HERE in other.path.parents for other in later):
            for server in _RUNNING:
                server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if os.environ.get("COMFYUI_PATH") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"COMFYUI_PATH is set, so the ComfyUI tests must run, but this one was skipped: {reason}"
        )
    return report


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI integration tests")
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file():
        pytest.fail(
            f"COMFYUI_PATH={value} holds no ComfyUI checkout (no main.py in {path}): "
            "point it at ComfyUI's folder, or unset it to skip these tests",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def comfy_base(comfyui_path, tmp_path_factory, tiny_agent_dir) -> Path:
    """The server's base directory with every model it needs, built here from seeds."""
    base = tmp_path_factory.mktemp("comfy-base")
    for sub in ("custom_nodes", "input", "output", "models/LLM"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK, target_is_directory=True)
    # Test-only: a route that shows ComfyUI's loaded models (test_memory.py reads it).
    (base / "custom_nodes" / "it_memory_probe").symlink_to(HERE / "memory_probe", target_is_directory=True)
    command = [sys.executable, str(HERE / "tiny_models.py"), "--comfyui", str(comfyui_path)]
    built = subprocess.run(
        [*command, "--models", str(base / "models")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),  # faster on small machines, as for the server
    )
    assert built.returncode == 0, f"building the tiny ComfyUI models failed:\n{built.stderr[-4000:]}"
    # A copy of the session's tiny agent: a test changes a file in it.
    shutil.copytree(tiny_agent_dir, base / "models" / "LLM" / TINY_AGENT)
    endless = shutil.copytree(tiny_agent_dir, base / "models" / "LLM" / ENDLESS_AGENT)
    config = json.loads((endless / "generation_config.json").read_text())
    config["min_new_tokens"] = ENDLESS_TOKENS  # transformers holds the end-of-turn tokens back until then
    (endless / "generation_config.json").write_text(json.dumps(config))
    return base


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, comfy_base):
    from interleave_thinker.core.endpoints import ENDPOINTS_ENV, KEY_ENVS_ENV

    env = {**SECRETS, ENDPOINTS_ENV: None, KEY_ENVS_ENV: None}
    server = ComfyServer(comfyui_path, comfy_base, free_port(), env=env)
    server.start()
    _RUNNING.append(server)
    try:
        startup = server.log()
        assert f"custom_nodes/{PACK_NAME}" in startup, "the pack was not imported"
        assert not bad_log_lines(startup), bad_log_lines(startup)
        yield server
    finally:
        server.stop()
    problems = [line for line in bad_log_lines(server.log()) if "Traceback" not in line]
    assert not problems, f"the server log shows {BAD_LOG_LINES[:3]}: {problems}"


@pytest.fixture
def server_errors_expected():
    """Requested by tests that make a node fail on purpose: ComfyUI then logs the traceback."""
    return True


@pytest.fixture(autouse=True)
def clean_server_log(request):
    """Fail a test whose run made the server log a traceback or a model with missing weights."""
    if "comfy_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("comfy_server")
    start = server.log_size()
    yield
    lines = bad_log_lines(server.log_since(start))
    if "server_errors_expected" in request.fixturenames:
        lines = [line for line in lines if "Traceback" not in line]
    assert not lines, f"server log: {lines}"
