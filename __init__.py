"""InterleaveThinker for ComfyUI: a Planner VLM plans a story, your diffusion model draws each step, a Critic
VLM checks every image and rewrites the prompt until it is right. Importing this package is cheap and needs no
ComfyUI: the nodes load ComfyUI's modules only when they run.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
