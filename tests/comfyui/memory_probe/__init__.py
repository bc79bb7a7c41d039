"""A custom-node folder for the memory tests only (never part of the pack).

It adds one route, ``GET /it_memory/status``: ComfyUI's list of loaded models (model_management's
current_loaded_models) and the pack's local agents with the device their weights are on, so a test can read
what ComfyUI's model management did. It defines no node.
"""

import sys

import comfy.model_management as mm
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS: dict = {}


def _pack_memory():
    """The pack's nodes/memory module, under whatever name ComfyUI imported the pack."""
    for name, module in list(sys.modules.items()):
        if name.endswith(".nodes.memory") and hasattr(module, "agent_status"):
            return module
    return None


@PromptServer.instance.routes.get("/it_memory/status")
async def status(request):
    loaded = []
    for entry in list(mm.current_loaded_models):
        patcher = entry.model
        loaded.append(
            {
                "class": type(patcher.model).__name__ if patcher is not None else None,
                "device": str(entry.device),
                "loaded_bytes": patcher.loaded_size() if patcher is not None else 0,
            }
        )
    memory = _pack_memory()
    return web.json_response(
        {
            "torch_device": str(mm.get_torch_device()),
            "loaded_models": loaded,
            "agents": memory.agent_status() if memory is not None else None,
        }
    )
