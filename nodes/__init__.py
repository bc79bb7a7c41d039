"""ComfyUI nodes: thin adapters over the engine in ``core``.

Only the classic node API is used (INPUT_TYPES / RETURN_TYPES / FUNCTION), and ComfyUI's modules are imported
inside the functions that need them, so these classes import and describe themselves without ComfyUI.
"""

from .agent_nodes import Critic, LoadAgent, Planner
from .story_nodes import PlanToPrompts, RefineLoop, SaveStoryboard, StoryList

_NODES = {
    "InterleaveThinkerLoadAgent": (LoadAgent, "Load Agent"),
    "InterleaveThinkerPlanner": (Planner, "Planner"),
    "InterleaveThinkerCritic": (Critic, "Critic"),
    "InterleaveThinkerRefineLoop": (RefineLoop, "Refine Loop"),
    "InterleaveThinkerPlanToPrompts": (PlanToPrompts, "Plan to Prompts"),
    "InterleaveThinkerSaveStoryboard": (SaveStoryboard, "Save Storyboard"),
    "InterleaveThinkerStoryList": (StoryList, "Story List"),
}

NODE_CLASS_MAPPINGS: dict = {name: cls for name, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS: dict = {name: title for name, (_, title) in _NODES.items()}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
