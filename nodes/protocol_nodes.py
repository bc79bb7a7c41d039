"""Planner Prompt, Parse Plan, Critic Prompt and Parse Verdict: this pack's protocol for any language model
node in ComfyUI (its own Generate Text, the Gemini, GPT or Claude API nodes, any node that outputs a STRING).

The prompt nodes write exactly what the Planner and Critic nodes send to their agent (the engine's templates,
through core/messages.py); the parse nodes read an answer with the engine's own parser. Parse Plan is also
where a plan is written or fixed by hand: its text box takes the same JSON the Planner's plan_json shows.
"""

from __future__ import annotations

from ..core import settings
from ..core.loop import PlanResult
from ..core.messages import choose_mode, critic_messages, message_images, message_text, planner_messages
from ..core.protocol import ProtocolError, parse_plan, parse_verdict
from .agent_nodes import CRITIC_STEP_INPUTS, EMPTY_INSTRUCTION, critic_pictures, verdict_outputs
from .host import NodeError, engine_errors
from .images import to_pil, to_tensor
from .types import CATEGORY, PLAN, StoryPlan

# What a storyboard records as its Planner when the plan came in as text.
PLAN_TEXT = "plan text (Parse Plan)"

_MODE_TOOLTIP = (
    "narrative: a story drawn from a white canvas. guidance: continue from your last image. auto: guidance "
    "when images are connected, narrative otherwise."
)


def _mode_input():
    return (list(settings.MODES), {"default": settings.DEFAULT_MODE, "tooltip": _MODE_TOOLTIP})


def _batch(images, what: str):
    try:
        return to_tensor(images)
    except ValueError as error:
        raise NodeError(f"the {what} cannot form one IMAGE batch: {error}") from None


class PlannerPrompt:
    """The Planner's whole prompt as text, for a language model node of the user's choice."""

    DESCRIPTION = (
        "Writes the Planner's prompt: this pack's planning template around your instruction, exactly what "
        "the Planner node sends its model. Give prompt (and images, if any) to any language model node, "
        "then its answer to Parse Plan."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("prompt", "images")
    OUTPUT_TOOLTIPS = (
        "The full prompt text for the language model.",
        "Your images, fitted to the Planner's pixel budget, in the order the prompt expects them (before the "
        "text). Connect them to the model's image input; empty when you gave none.",
    )
    FUNCTION = "write"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "instruction": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "What to illustrate: a story, a process, a recipe (an empty one is "
                        "refused when queued).",
                    },
                ),
                "mode": _mode_input(),
            },
            "optional": {
                "images": (
                    "IMAGE",
                    {"tooltip": "Optional pictures for the Planner to read (guidance mode)."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, instruction):
        if instruction is None or str(instruction).strip():
            return True
        return EMPTY_INSTRUCTION

    def write(self, instruction, mode, images=None):
        if not str(instruction).strip():
            raise NodeError(EMPTY_INSTRUCTION)
        with engine_errors():
            messages = planner_messages(instruction, to_pil(images), mode)
        return (message_text(messages), _batch(message_images(messages), "Planner's images"))


class ParsePlan:
    """A plan from text: a language model's answer, or a plan written or fixed by hand."""

    DESCRIPTION = (
        "Reads a plan with the engine's own parser: link a language model's answer to text, or write or "
        "fix a plan by hand in the box (paste the Planner's plan_json and change a step). A plan typed here "
        "is checked when the prompt is queued. Its output goes to the Refine Loop or Plan to Prompts."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PLAN, "STRING")
    RETURN_NAMES = ("plan", "plan_json")
    OUTPUT_TOOLTIPS = (
        "The plan, for the Refine Loop or Plan to Prompts.",
        "The plan as clean JSON in the official execution_plan format (to copy, edit and paste back).",
    )
    FUNCTION = "parse"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": 'The plan: {"execution_plan": [{"step_number", "step_name", '
                        '"instruction", "prompt", "auxiliary_text"}, ...]}, as JSON or a Python literal, '
                        "bare or inside <answer>...</answer> after a <think> block, as the Planner writes "
                        "it. A step without a prompt is text only.",
                    },
                ),
                "mode": _mode_input(),
                "max_steps": (
                    "INT",
                    {
                        "default": settings.DEFAULT_MAX_STEPS,
                        "min": 1,
                        "max": settings.MAX_PLAN_STEPS,
                        "tooltip": "A plan with more steps than this is refused.",
                    },
                ),
            },
            "optional": {
                "instruction": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "The story's instruction, kept in the storyboard as its title (link the "
                        "one the Planner Prompt got).",
                    },
                ),
                "images": (
                    "IMAGE",
                    {
                        "tooltip": "The pictures the plan continues from (guidance mode: step 1 edits the "
                        "last one)."
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text):
        """A plan typed in the box is parsed when the prompt is queued; a linked one (None here) when the
        node runs."""
        if text is None:
            return True
        try:
            parse_plan(text, max_steps=settings.MAX_PLAN_STEPS)
        except ProtocolError as error:
            return _plan_error(error)
        return True

    def parse(self, text, mode, max_steps, instruction=None, images=None):
        pictures = to_pil(images)
        with engine_errors():
            chosen = choose_mode(mode, pictures)
            settings.check_range("max_steps", max_steps, 1, settings.MAX_PLAN_STEPS)
        try:
            plan = parse_plan(text, max_steps=max_steps)
        except ProtocolError as error:
            raise NodeError(_plan_error(error)) from None
        planning = PlanResult(plan, chosen, text, 1, planner=PLAN_TEXT)
        return (StoryPlan(planning, str(instruction or "").strip(), pictures), plan.to_json())


def _plan_error(error: ProtocolError) -> str:
    shown = f" (the text began: {error.excerpt!r})" if error.excerpt else ""
    return (
        f"the text is not a valid plan: {error.reason}{shown}. Fix it by hand, or give the language model "
        'more tokens; a plan is {"execution_plan": [{"step_number": 1, "step_name": ..., "instruction": ..., '
        '"prompt": ..., "auxiliary_text": null}, ...]}'
    )


class CriticPrompt:
    """The Critic's prompt as text and its two pictures in order, for a language model node."""

    DESCRIPTION = (
        "Writes the Critic's prompt for one picture: this pack's critic template with the step's prompt and "
        "the prompt used, exactly what the Critic node sends its model, and the before and after pictures "
        "in the order it expects them. Give both to any language model node, then its answer to Parse "
        "Verdict."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("prompt", "images")
    OUTPUT_TOOLTIPS = (
        "The full prompt text for the language model (it refers to the first and second picture).",
        "Two pictures: before, then after (fitted to the Critic's pixel budget). They come before the text.",
    )
    FUNCTION = "write"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **CRITIC_STEP_INPUTS,
            }
        }

    def write(self, before, after, step_instruction, prompt_used):
        before_image, after_image = critic_pictures(before, after)
        with engine_errors():
            messages = critic_messages(before_image, after_image, step_instruction, prompt_used)
        return (message_text(messages), _batch(message_images(messages), "before and after pictures"))


class ParseVerdict:
    """A Critic's answer as the Critic node's outputs: accepted, the prompt for the next try, why."""

    DESCRIPTION = (
        "Reads a Critic's answer with the engine's own parser. An answer that does not parse is no "
        "verdict: verdict says unchecked and accepted is False, as with the Critic node."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("BOOLEAN", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("accepted", "refined_prompt", "reasoning", "verdict")
    OUTPUT_TOOLTIPS = (
        "True only when the answer accepted the picture; False when it rejected it or did not parse.",
        "The prompt for the next attempt: the Critic's rewrite, or the prompt used when accepted or "
        "unchecked.",
        "The Critic's reasoning (its <think> block), or why there is no verdict.",
        "accepted, rejected, or unchecked (the answer did not parse: the picture was not judged).",
    )
    FUNCTION = "parse"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": 'The Critic\'s answer: {"previous_step_success": true or false, '
                        '"refine_prompt": "..."}, bare or inside <answer>...</answer>.',
                    },
                ),
                "prompt_used": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "The prompt the picture was made from: passed on when the picture is "
                        "accepted or unchecked.",
                    },
                ),
            }
        }

    def parse(self, text, prompt_used):
        try:
            return verdict_outputs(parse_verdict(text), prompt_used, "")
        except ProtocolError as error:
            return verdict_outputs(None, prompt_used, f"no verdict ({error})")
