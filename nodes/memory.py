"""Sharing one accelerator between the agents and the diffusion model, through ComfyUI's model management.

- Before an agent's weights go to the GPU, ComfyUI is asked to free that much memory (it moves its own models
  off), which is the ``make_room`` hook the engine's TransformersAgent calls.
- Before the diffusion model samples, agents kept on the GPU ("keep on GPU") move to the CPU if the free
  memory does not cover the model; they come back on their next call. Agents set to "offload" leave after each
  call.
So a Planner, a Critic and a generator run on a card that holds only the largest of them.
"""

from __future__ import annotations

import weakref

from .host import module

# Head-room over the weights for activations and the KV cache of one generation.
AGENT_OVERHEAD = 1.2

_agents: weakref.WeakSet = weakref.WeakSet()


def track(agent) -> None:
    """Remember a local agent so the diffusion model can send it to the CPU when it needs the memory."""
    _agents.add(agent)


def _torch_device(device):
    """ComfyUI compares devices exactly (cuda:0 != cuda): map the agent's device onto ComfyUI's own."""
    import torch

    mm = module("comfy.model_management")
    device = torch.device(device)
    main = mm.get_torch_device()
    return main if device.type == main.type and device.index in (None, main.index) else device


def make_room(nbytes: int, device: str) -> None:
    """Ask ComfyUI to unload or offload its models until ``nbytes`` (plus head-room) fit on ``device``."""
    mm = module("comfy.model_management")
    target = _torch_device(device)
    if target.type == "cpu":
        return
    mm.free_memory(int(nbytes * AGENT_OVERHEAD) + mm.minimum_inference_memory(), target)


def agent_device_type(agent) -> str | None:
    model = getattr(agent, "model", None)
    if model is None:
        return None
    try:
        return next(model.parameters()).device.type
    except StopIteration:
        return None


def release_agents_for(*models) -> int:
    """Move agents resident on the models' device to the CPU if the largest model would not fit beside them.

    ``models`` are ComfyUI ModelPatchers (the diffusion model, the text encoder's, the VAE's); ComfyUI swaps
    its own models in and out, so only the largest must fit at once. Returns how many agents moved.
    """
    mm = module("comfy.model_management")
    models = [model for model in models if model is not None and model.load_device.type != "cpu"]
    if not models:
        return 0
    device = models[0].load_device
    resident = [agent for agent in list(_agents) if agent_device_type(agent) == device.type]
    if not resident:
        return 0
    largest = max(max(0, model.model_size() - model.loaded_size()) for model in models)
    if mm.get_free_memory(device) >= largest + mm.minimum_inference_memory():
        return 0
    for agent in resident:
        agent.offload()
    mm.soft_empty_cache()
    return len(resident)
