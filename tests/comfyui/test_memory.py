"""Local agents under ComfyUI's model management, in a real ComfyUI.

ComfyUI runs on the CPU here, so its "GPU" is the CPU and its offload device is the CPU too: an agent that is
freed keeps its weights where they were, and what shows it was freed is ComfyUI's list of loaded models
(model_management.current_loaded_models), read through a test-only route (memory_probe/), and the next call
loading it again through load_models_gpu. The agents are the sandbox's shipped tiny Planner and Critic, which
were trained on the engine's own prompts, so a story has a real plan and real verdicts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interleave_thinker.nodes.agent_nodes import KEEP, LOCAL, OFFLOAD

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_AGENTS = ROOT / "sandbox" / "agents"
PLANNER, CRITIC = "sandbox-planner", "sandbox-critic"  # their folders in models/LLM
AGENT_CLASS = "InterleaveThinkerAgent"  # the module ComfyUI's model management sees for an agent
SD15 = "tiny_sd15.safetensors"
SAVE = "30"


@pytest.fixture(scope="module")
def sandbox_agents(comfy_base):
    for name, shipped in ((PLANNER, "planner"), (CRITIC, "critic-sft")):
        target = comfy_base / "models" / "LLM" / name
        if not target.exists():
            shutil.copytree(SANDBOX_AGENTS / shipped, target)
    return comfy_base / "models" / "LLM"


def instruction() -> str:
    from interleave_thinker.sandbox.tasks import make_tasks

    return next(t for t in make_tasks("test", 60) if t.kind == "build" and len(t.steps) == 2).instruction


def story(prefix: str, policy: str = KEEP, planner_seed: int = 0, quantize: str | None = None) -> dict:
    """The SD1.5 story workflow with both agents local, on ComfyUI's device."""
    graph = json.loads((ROOT / "workflows" / "api" / "story_sd15_img2img.json").read_text())
    for node_id, name in (("1", PLANNER), ("2", CRITIC)):
        graph[node_id]["inputs"].update(
            backend=LOCAL, model=name, device="auto", dtype="fp32", memory=policy, max_new_tokens=400
        )
    if quantize is not None:
        graph["1"]["inputs"]["quantize"] = quantize
    graph["5"]["inputs"]["ckpt_name"] = SD15
    graph["10"]["inputs"].update(instruction=instruction(), mode="narrative", seed=planner_seed)
    graph["20"]["inputs"].update(width=64, height=64, steps=3)
    graph[SAVE]["inputs"]["filename_prefix"] = prefix
    return graph


def memory_status(server) -> dict:
    return server.get("/it_memory/status")


def agents(status: dict) -> dict[str, dict]:
    return {agent["name"]: agent for agent in status["agents"]}


def loaded_agents(status: dict) -> int:
    return sum(model["class"] == AGENT_CLASS for model in status["loaded_models"])


def saved(run, base: Path) -> Path:
    return base / "output" / Path(run.outputs(SAVE)["images"][0]["subfolder"]).parent


def comparable(folder: Path) -> dict:
    """storyboard.json without what differs between two runs of one story: when, how long, its id."""
    board = json.loads((folder / "storyboard.json").read_text())
    for key in ("created", "timings", "story_id"):
        board.pop(key, None)
    for step in board["steps"]:
        for attempt in step["attempts"]:
            attempt.pop("generate_seconds", None)
            attempt.pop("critic_seconds", None)
    return board


def wait_for(server, condition, timeout: float = 60.0) -> dict:
    """The status once ``condition(status)`` holds (ComfyUI acts on /free between prompts, on its own
    thread)."""
    deadline = time.monotonic() + timeout
    while True:
        status = memory_status(server)
        if condition(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_unload_models_frees_the_agents_and_the_next_story_reloads_them(
    comfy_server, comfy_base, sandbox_agents
):
    first = comfy_server.run(story("it_memory/first"), timeout=600)
    assert first.status == "success", first.history["status"]
    status = memory_status(comfy_server)
    device = status["torch_device"].split(":")[0]
    # "keep on GPU": after the story both agents are still among ComfyUI's loaded models, on its device.
    assert loaded_agents(status) == 2
    for name in (PLANNER, CRITIC):
        assert agents(status)[name]["loaded"] and agents(status)[name]["weights_device"] == device, name
    assert f"Load Agent: {PLANNER}: fp32 weights" in comfy_server.log()  # the size shown on the node

    since = comfy_server.log_size()
    assert comfy_server.post("/free", {"unload_models": True})[0] == 200
    status = wait_for(comfy_server, lambda s: loaded_agents(s) == 0)
    assert loaded_agents(status) == 0 and status["loaded_models"] == []  # ComfyUI's own models went too
    for name in (PLANNER, CRITIC):
        assert not agents(status)[name]["loaded"], name
        assert agents(status)[name]["weights_device"] == "cpu", name  # the offload device: none on the GPU

    # Another Planner seed, so ComfyUI's cache does not answer; greedy decoding does not read it.
    second = comfy_server.run(story("it_memory/second", planner_seed=1), timeout=600)
    assert second.status == "success", second.history["status"]
    assert f"Requested to load {AGENT_CLASS}" in comfy_server.log_since(since)  # through load_models_gpu
    assert loaded_agents(memory_status(comfy_server)) == 2

    a, b = saved(first, comfy_base), saved(second, comfy_base)
    assert comparable(a) == comparable(b)
    board = comparable(a)
    assert len(board["steps"]) == 2  # the Planner planned the instruction's two steps
    statuses = [attempt["status"] for step in board["steps"] for attempt in step["attempts"]]
    assert {"accepted", "rejected"} & set(statuses), statuses  # and the Critic gave verdicts
    for image in comparable(a)["steps"]:
        assert np.array_equal(
            np.asarray(Image.open(a / image["image"])), np.asarray(Image.open(b / image["image"]))
        )
    recorded = comparable(a)["settings"]["agents"]
    assert recorded["planner"]["weights"] == "fp32" and recorded["critic"]["name"] == CRITIC
    assert recorded["planner"]["resident_bytes"] == agents(status)[PLANNER]["resident_bytes"]


def test_offload_between_calls_leaves_nothing_loaded_and_nf4_is_smaller(
    comfy_server, comfy_base, sandbox_agents
):
    since = comfy_server.log_size()
    run = comfy_server.run(story("it_memory/offload", policy=OFFLOAD, quantize="nf4"), timeout=600)
    assert run.status == "success", run.history["status"]
    log = comfy_server.log_since(since)
    assert f"Requested to load {AGENT_CLASS}" in log  # each call loaded it through ComfyUI...
    status = memory_status(comfy_server)
    assert loaded_agents(status) == 0  # ...and unloaded it afterwards
    for name in (PLANNER, CRITIC):
        assert agents(status)[name]["memory"] == "offload" and agents(status)[name]["weights_device"] == "cpu"

    assert f"Load Agent: {PLANNER}: nf4 weights, rest in float32" in log
    planner = json.loads((saved(run, comfy_base) / "storyboard.json").read_text())["settings"]["agents"][
        "planner"
    ]
    fp32_bytes = (sandbox_agents / PLANNER / "model.safetensors").stat().st_size  # stored in fp32
    assert planner["weights"] == "nf4" and planner["resident_bytes"] < 0.5 * fp32_bytes


# ---------------------------------------------------------------------------------------------------------
# ComfyUI's model management in one process, where memory can be made short


PROBE = r"""
import gc, json, sys
comfyui, folder = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfyui)
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_management as mm
import comfy.model_patcher
from interleave_thinker.core.agents import Decoding, load_agent
from interleave_thinker.core.messages import planner_messages
from interleave_thinker.nodes import memory

loads = []
real_load = mm.load_models_gpu
def spy(models, *args, **kwargs):
    loads.append({"models": [type(m.model).__name__ for m in models], "whole": kwargs.get("force_full_load")})
    return real_load(models, *args, **kwargs)
mm.load_models_gpu = spy

def state(agent):
    patcher = memory.HOST.patcher(agent)
    counted = [entry.model_loaded_memory() for entry in mm.current_loaded_models if entry.model is patcher]
    return {
        "loaded": memory.is_loaded(agent), "weights": agent.weights_device,
        "comfy_size": patcher.model_size(), "comfy_loaded": sum(counted), "size": agent.size_bytes,
        "models": [type(entry.model.model).__name__ for entry in mm.current_loaded_models],
    }

out = {}
ask = planner_messages("a cat story", [], "narrative")
agent = load_agent(folder, device="cpu", host=memory.HOST, decoding=Decoding(max_new_tokens=4))
out["after_load"] = state(agent)
unet = comfy.model_patcher.ModelPatcher(torch.nn.Linear(64, 64), torch.device("cpu"), torch.device("cpu"))
real_load([unet])  # one of ComfyUI's own models beside it
out["beside_a_model"] = state(agent)
# Memory is short and a model twice the agent's size is about to load: ComfyUI frees what it needs (what
# load_models_gpu asks of free_memory on an accelerator; on the CPU it only asks when told to).
free = mm.get_free_memory
mm.get_free_memory = lambda dev=None, torch_free_too=False: (0, 0) if torch_free_too else 0
mm.free_memory(2 * agent.size_bytes, torch.device("cpu"))
mm.get_free_memory = free
out["after_free_memory"] = state(agent)
agent.complete(ask, seed=0)
out["after_call"] = state(agent)
# A little short: ComfyUI offloads only part of the agent; the next call loads it whole again.
mm.get_free_memory = lambda dev=None, torch_free_too=False: (0, 0) if torch_free_too else 0
mm.free_memory(agent.size_bytes // 4, torch.device("cpu"))
mm.get_free_memory = free
out["partly_offloaded"] = state(agent)
agent.complete(ask, seed=0)
out["whole_again"] = state(agent)
mm.unload_all_models()
out["after_unload_all"] = state(agent)
short = Decoding(max_new_tokens=4)
offloading = load_agent(folder, device="cpu", host=memory.HOST, memory="offload", decoding=short)
loads.clear()
offloading.complete(ask, seed=0)
out["offload_policy"] = dict(state(offloading), loads=list(loads))
quantized = load_agent(folder, device="cpu", host=memory.HOST, quantize="nf4", decoding=short)
quantized.complete(ask, seed=0)
out["nf4"] = state(quantized)
out["loads"] = loads
print(json.dumps(out))
del agent, offloading, quantized, unet
gc.collect()
"""


def test_comfyuis_model_management_moves_agents_like_its_own_models(comfyui_path, tiny_agent_dir):
    pytest.importorskip("bitsandbytes", reason="the nf4 part needs bitsandbytes (the quant extra)")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(comfyui_path), str(tiny_agent_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=comfyui_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Load Agent ("keep on GPU") loads it through ComfyUI, which counts the agent's own size (tied weights
    # once), all of it loaded.
    assert seen["after_load"]["loaded"] and seen["after_load"]["models"] == [AGENT_CLASS]
    after_load = seen["after_load"]
    assert after_load["comfy_size"] == after_load["comfy_loaded"] == after_load["size"]
    assert seen["beside_a_model"]["models"] == ["Linear", AGENT_CLASS]
    # Short of memory, ComfyUI's free_memory unloads it like its own models; its weights go to the CPU.
    assert not seen["after_free_memory"]["loaded"] and seen["after_free_memory"]["weights"] == "cpu"
    assert AGENT_CLASS not in seen["after_free_memory"]["models"]
    # The next call loads it again, whole, through load_models_gpu.
    assert seen["after_call"]["loaded"] and {"models": [AGENT_CLASS], "whole": True} in seen["loads"]
    # Freeing a little offloads part of it (it stays listed); the next call loads all of it again, since a
    # transformers model does not run split across two devices.
    partly, whole = seen["partly_offloaded"], seen["whole_again"]
    assert partly["loaded"] and 0 < partly["comfy_loaded"] < partly["size"]
    assert whole["loaded"] and whole["comfy_loaded"] == whole["size"]
    assert not seen["after_unload_all"]["loaded"] and seen["after_unload_all"]["models"] == []
    # "offload to CPU between calls": loaded for the call, unloaded after it.
    assert seen["offload_policy"]["loads"] == [{"models": [AGENT_CLASS], "whole": True}]
    assert not seen["offload_policy"]["loaded"] and seen["offload_policy"]["weights"] == "cpu"
    # A quantized agent is a ComfyUI model too, and ComfyUI counts its smaller size.
    assert seen["nf4"]["loaded"] and seen["nf4"]["comfy_loaded"] == seen["nf4"]["size"]
    assert seen["nf4"]["size"] < seen["after_load"]["size"]
