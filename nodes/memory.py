"""Local agents as ComfyUI models: ComfyUI's model management decides where their weights live.

Each local agent is wrapped in a ``comfy.model_patcher.ModelPatcher``, as ComfyUI wraps its own text encoders,
and handed to the engine as its ``AgentHost`` (core/agents/transformers_agent.py). So:
- before every agent call the agent is loaded with ``load_models_gpu``: ComfyUI unloads or offloads its own
  models first when the agent would not fit beside them;
- loading the diffusion model, a text encoder or a VAE frees agents like any other model when memory is
  short (``free_memory``), and "Unload models" (``POST /free``, ``unload_all_models``) frees them too;
- "offload to CPU between calls" unloads the agent after each call; "keep on GPU" leaves it loaded until
  ComfyUI needs the room.
A transformers model cannot run split between two devices, so an agent is always loaded whole.
"""

from __future__ import annotations

import atexit
import weakref

from .host import module

# Head-room over the weights for activations and the KV cache of one generation.
AGENT_OVERHEAD = 1.2

_agents: weakref.WeakSet = weakref.WeakSet()
_patchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
atexit.register(_patchers.clear)  # drop the patchers before Python tears ComfyUI's modules down at exit
_weights_class = None


def track(agent) -> None:
    """Remember a local agent Load Agent made (for :func:`agent_status`)."""
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


def _weights_module(model):
    """The transformers model inside a plain module, as a ModelPatcher wants its model: one whose ``device``
    it can set (a transformers model's is read-only). Its class name is what ComfyUI's log shows."""
    global _weights_class
    if _weights_class is None:
        import torch

        class InterleaveThinkerAgent(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.agent_model = inner
                self.device = next(inner.parameters()).device

        _weights_class = InterleaveThinkerAgent
    return _weights_class(model)


class ComfyHost:
    """The engine's AgentHost, answered by ComfyUI's model management."""

    def patcher(self, agent):
        """The agent's ModelPatcher, made on first use: loads onto the agent's device, offloads to the CPU."""
        patcher = _patchers.get(agent)
        if patcher is None:
            import torch

            patcher = module("comfy.model_patcher").ModelPatcher(
                _weights_module(agent.model),
                load_device=_torch_device(agent.device),
                offload_device=torch.device("cpu"),
                size=agent.size_bytes,
            )
            _patchers[agent] = patcher
        return patcher

    def make_room(self, nbytes: int, device: str) -> None:
        make_room(nbytes, device)

    def load(self, agent) -> None:
        """Load the agent whole for a call; ComfyUI first frees what the weights and one generation need."""
        mm = module("comfy.model_management")
        extra = round(agent.size_bytes * (AGENT_OVERHEAD - 1))
        patcher = self.patcher(agent)
        mm.load_models_gpu([patcher], memory_required=extra, force_full_load=True)
        if patcher.loaded_size() < patcher.model_size():  # --novram loads none of it: an agent runs whole
            patcher.partially_load(patcher.load_device, extra_memory=patcher.model_size())

    def unload(self, agent) -> None:
        """Take the agent out of ComfyUI's loaded models, its weights back on the CPU."""
        mm = module("comfy.model_management")
        patcher = self.patcher(agent)
        for index, loaded in enumerate(mm.current_loaded_models):
            if loaded.model is patcher:
                mm.current_loaded_models.pop(index).model_unload()
                break
        else:  # not loaded through ComfyUI (a quantized model is built on its device): move it all the same
            patcher.detach()
        mm.soft_empty_cache()


HOST = ComfyHost()


def is_loaded(agent) -> bool:
    """Whether ComfyUI counts the agent among its loaded models."""
    patcher = _patchers.get(agent)
    mm = module("comfy.model_management")
    return patcher is not None and any(loaded.model is patcher for loaded in mm.current_loaded_models)


def agent_status() -> list[dict]:
    """Each local agent Load Agent made: its weights, where they are, whether ComfyUI has it loaded."""
    return [
        {
            "name": agent.name,
            "weights": agent.weight_format,
            "resident_bytes": agent.size_bytes,
            "device": agent.device,
            "weights_device": agent.weights_device,
            "memory": agent.memory,
            "loaded": is_loaded(agent),
        }
        for agent in list(_agents)
    ]
