"""A real ComfyUI for the integration tests: COMFYUI_PATH names the checkout; without it they are skipped.

One server per session, headless on loopback with a temporary base directory: this pack symlinked into its
custom_nodes, tiny seeded checkpoints in its models folder, the tiny transformers agent in models/LLM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from client import BAD_LOG_LINES, PACK_NAME, TINY_AGENT, ComfyServer, bad_log_lines
from helpers import free_port

HERE = Path(__file__).resolve().parent
PACK = HERE.parents[1]


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI integration tests")
    path = Path(value).expanduser()
    if not (path / "main.py").is_file():
        pytest.skip(f"COMFYUI_PATH={value} holds no ComfyUI checkout (main.py is missing)")
    return path


@pytest.fixture(scope="session")
def comfy_base(comfyui_path, tmp_path_factory) -> Path:
    """The server's base directory with every model it needs, built here from seeds."""
    from interleave_thinker.training.tiny import build_tiny_agent

    base = tmp_path_factory.mktemp("comfy-base")
    for sub in ("custom_nodes", "input", "output", "models/LLM"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK, target_is_directory=True)
    subprocess.run(
        [
            sys.executable,
            str(HERE / "tiny_models.py"),
            "--comfyui",
            str(comfyui_path),
            "--models",
            str(base / "models"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # faster on small machines, as for the server
    build_tiny_agent(base / "models" / "LLM" / TINY_AGENT)
    return base


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, comfy_base):
    server = ComfyServer(comfyui_path, comfy_base, free_port())
    server.start()
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
