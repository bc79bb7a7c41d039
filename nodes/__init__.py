"""ComfyUI nodes: thin adapters over the engine in ``core``.

Only the classic node API is used (INPUT_TYPES / RETURN_TYPES / FUNCTION), and ComfyUI's modules are imported
inside the functions that need them, so these classes import and describe themselves without ComfyUI.
"""

from .agent_nodes import Critic, LoadAgent, Planner
from .page_nodes import StoryboardPage
from .protocol_nodes import CriticPrompt, ParsePlan, ParseVerdict, PlannerPrompt
from .story_nodes import PlanToPrompts, RefineLoop, ResumeStoryboard, SaveStoryboard, StoryList

# Plain dict literals with string keys, not built in a loop: ComfyUI-Manager's scanner reads the node ids
# from the source without importing it. Saved workflows hold the ids: never rename one.
NODE_CLASS_MAPPINGS = {
    "InterleaveThinkerLoadAgent": LoadAgent,
    "InterleaveThinkerPlanner": Planner,
    "InterleaveThinkerCritic": Critic,
    "InterleaveThinkerRefineLoop": RefineLoop,
    "InterleaveThinkerPlanToPrompts": PlanToPrompts,
    "InterleaveThinkerSaveStoryboard": SaveStoryboard,
    "InterleaveThinkerStoryList": StoryList,
    "InterleaveThinkerPlannerPrompt": PlannerPrompt,
    "InterleaveThinkerParsePlan": ParsePlan,
    "InterleaveThinkerCriticPrompt": CriticPrompt,
    "InterleaveThinkerParseVerdict": ParseVerdict,
    "InterleaveThinkerStoryboardPage": StoryboardPage,
    "InterleaveThinkerResumeStoryboard": ResumeStoryboard,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "InterleaveThinkerLoadAgent": "Load Agent",
    "InterleaveThinkerPlanner": "Planner",
    "InterleaveThinkerCritic": "Critic",
    "InterleaveThinkerRefineLoop": "Refine Loop",
    "InterleaveThinkerPlanToPrompts": "Plan to Prompts",
    "InterleaveThinkerSaveStoryboard": "Save Storyboard",
    "InterleaveThinkerStoryList": "Story List",
    "InterleaveThinkerPlannerPrompt": "Planner Prompt",
    "InterleaveThinkerParsePlan": "Parse Plan",
    "InterleaveThinkerCriticPrompt": "Critic Prompt",
    "InterleaveThinkerParseVerdict": "Parse Verdict",
    "InterleaveThinkerStoryboardPage": "Storyboard Page",
    "InterleaveThinkerResumeStoryboard": "Resume Storyboard",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
