"""Planner Prompt, Parse Plan, Critic Prompt and Parse Verdict without ComfyUI: the prompts are the ones the
Planner and Critic nodes send, the parsers are the engine's, and a plan edited by hand is the plan drawn."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from helpers import PaintGenerator, ScriptedAgent, plan_text, verdict_text
from PIL import Image

from interleave_thinker.core.loop import LoopConfig, critique, make_plan, run_plan
from interleave_thinker.core.messages import message_images, message_text
from interleave_thinker.core.protocol import parse_plan
from interleave_thinker.nodes.agent_nodes import EMPTY_INSTRUCTION, Critic
from interleave_thinker.nodes.host import NodeError
from interleave_thinker.nodes.images import to_pil, to_tensor
from interleave_thinker.nodes.protocol_nodes import (
    PLAN_TEXT,
    CriticPrompt,
    ParsePlan,
    ParseVerdict,
    PlannerPrompt,
)
from interleave_thinker.nodes.story_nodes import PlanToPrompts


def pictures(*colours, size=(64, 64)):
    return [Image.new("RGB", size, colour) for colour in colours]


def same_pixels(ours, theirs) -> bool:
    """Equal up to one level: IMAGE tensors are floats, and 8-bit values do not all survive the trip."""
    return len(ours) == len(theirs) and all(
        a.size == b.size and np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1
        for a, b in zip(ours, theirs)
    )


@pytest.fixture
def comfy_idle(monkeypatch):
    """comfy.model_management as the Critic node asks it: nobody pressed Cancel."""
    comfy = types.ModuleType("comfy")
    management = types.ModuleType("comfy.model_management")
    management.processing_interrupted = lambda: False
    comfy.model_management = management
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)


# ---------------------------------------------------------------------------------------------------------
# Planner Prompt and Parse Plan


@pytest.mark.parametrize("mode, images", [("narrative", ()), ("auto", ((200, 0, 0), (0, 0, 200)))])
def test_planner_prompt_is_what_the_planner_sends_its_model(mode, images):
    instruction = "A fox finds a lantern {text_input} and carries it home"
    given = pictures(*images)
    agent = ScriptedAgent([plan_text("a fox")])
    make_plan(agent, instruction, given, config=LoopConfig(mode=mode))
    sent = agent.calls[0].messages
    prompt, batch = PlannerPrompt().write(instruction, mode, to_tensor(given) if given else None)
    assert prompt == message_text(sent)
    assert "A fox finds a lantern {text_input} and carries it home" in prompt  # the user's braces kept
    assert "execution_plan" in prompt and "<answer>" in prompt  # the template's output contract
    assert same_pixels(to_pil(batch), message_images(sent))
    assert batch.shape[0] == len(given)


def test_planner_prompt_refuses_an_empty_instruction_and_guidance_without_images():
    assert PlannerPrompt.VALIDATE_INPUTS("  ") == EMPTY_INSTRUCTION
    assert PlannerPrompt.VALIDATE_INPUTS(None) is True  # linked: checked when it runs
    with pytest.raises(NodeError, match="instruction is empty"):
        PlannerPrompt().write("", "auto")
    with pytest.raises(NodeError, match="guidance mode needs at least one input image"):
        PlannerPrompt().write("continue it", "guidance")


def test_parse_plan_reads_a_model_answer_with_the_engines_parser():
    answer = plan_text("a fox in the snow", "it finds a lantern", think="two steps")
    plan, plan_json = ParsePlan().parse(answer, "auto", 12, "A fox story", None)
    assert [step.prompt for step in plan.steps] == ["a fox in the snow", "it finds a lantern"]
    assert plan.plan == parse_plan(answer) and plan.plan.reasoning == "two steps"
    assert plan.mode == "narrative" and plan.instruction == "A fox story" and plan.images == []
    assert plan.planning.planner == PLAN_TEXT and plan.planning.output == answer
    # plan_json is clean JSON that reads back as the same plan.
    assert parse_plan(plan_json).steps == plan.plan.steps and json.loads(plan_json)["execution_plan"]
    # With images, auto plans continue from them (guidance); the images travel with the plan.
    given = pictures((10, 200, 10))
    guided, _ = ParsePlan().parse(answer, "auto", 12, "", to_tensor(given))
    assert guided.mode == "guidance" and same_pixels(guided.images, given)


def test_an_edited_plan_runs_exactly_the_edited_steps():
    planned, plan_json = ParsePlan().parse(plan_text("a fox", "a lantern", "a den"), "narrative", 12)
    edited = json.loads(plan_json)
    steps = edited["execution_plan"]
    steps[1]["prompt"] = "the fox lifts a glowing red lantern"  # a step fixed by hand
    del steps[2]  # one dropped
    steps.append(  # one added, text only
        {
            "step_number": 3,
            "step_name": "Moral",
            "instruction": None,
            "prompt": None,
            "auxiliary_text": "Home.",
        }
    )
    story_plan, _ = ParsePlan().parse(json.dumps(edited, indent=2), "narrative", 12, "A fox story")
    assert ParsePlan.VALIDATE_INPUTS(json.dumps(edited)) is True  # accepted when queued, too
    generator = PaintGenerator()
    story = run_plan(
        story_plan.plan,
        generator,
        None,
        instruction=story_plan.instruction,
        mode=story_plan.mode,
        config=LoopConfig(width=64, height=64, max_attempts=1),
        planning=story_plan.planning,
    )
    drawn = [call[1] for call in generator.calls]
    assert drawn == ["a fox", "the fox lifts a glowing red lantern"]
    assert [step.text for step in story.steps] == ["do a fox", "do a lantern", "Home."]
    assert story.steps[2].image is None and story.settings["planner"] == PLAN_TEXT
    assert PlanToPrompts().split(story_plan)[0] == drawn


def test_a_bad_plan_is_one_clear_error_when_queued_and_when_run():
    for text, reason in (
        ("", "no answer found"),
        ("I could not make a plan, sorry.", "not a JSON or Python object"),
        ('{"steps": []}', "no 'execution_plan' key"),
        ('{"execution_plan": [{"step_number": 1, "step_name": "x"}]}', "neither a prompt nor text"),
    ):
        message = ParsePlan.VALIDATE_INPUTS(text)
        assert message.startswith("the text is not a valid plan: ") and reason in message, text
        assert "execution_plan" in message  # it shows the shape to write
        with pytest.raises(NodeError, match="not a valid plan"):
            ParsePlan().parse(text, "narrative", 12)
    assert ParsePlan.VALIDATE_INPUTS(None) is True
    with pytest.raises(NodeError, match="more than the limit of 1"):
        ParsePlan().parse(plan_text("a", "b"), "narrative", 1)


# ---------------------------------------------------------------------------------------------------------
# Critic Prompt and Parse Verdict


def test_critic_prompt_is_what_the_critic_sends_with_before_then_after():
    before, after = pictures((255, 255, 255), (30, 60, 90))
    agent = ScriptedAgent([verdict_text(True)])
    critique(agent, before, after, "a cat on a mat", "a grey cat on a red mat")
    sent = agent.calls[0].messages
    prompt, batch = CriticPrompt().write(
        to_tensor([before]), to_tensor([after]), "a cat on a mat", "a grey cat on a red mat"
    )
    assert prompt == message_text(sent)
    assert '"a cat on a mat"' in prompt and '"a grey cat on a red mat"' in prompt
    assert same_pixels(to_pil(batch), [before, after])  # before first, as the Critic was trained


def test_critic_prompt_refuses_pictures_it_cannot_compare():
    small, large = pictures((0, 0, 0))[0], pictures((0, 0, 0), size=(96, 64))[0]
    with pytest.raises(NodeError, match="the Critic compares pictures of one size"):
        CriticPrompt().write(to_tensor([small]), to_tensor([large]), "x", "x")
    with pytest.raises(NodeError, match="must be one picture, got a batch of 2"):
        CriticPrompt().write(to_tensor([small, small]), to_tensor([small]), "x", "x")


@pytest.mark.parametrize(
    "answer",
    [
        verdict_text(True, think="all there"),
        verdict_text(False, "a cat in a red hat", think="no hat"),
        verdict_text(False, "", think="wrong, no rewrite"),
        "<answer>{'success': False, 'refined_prompt': 'a bigger hat'}</answer>",
    ],
)
def test_parse_verdict_gives_what_the_critic_node_gives(answer, comfy_idle):
    before, after = (to_tensor([image]) for image in pictures((255, 255, 255), (0, 90, 0)))
    node = Critic().judge(ScriptedAgent([answer]), before, after, "a cat", "a cat, sharp", 0)
    assert ParseVerdict().parse(answer, "a cat, sharp") == node


def test_an_answer_that_does_not_parse_is_unchecked_not_accepted(comfy_idle):
    accepted, refined, reasoning, verdict = ParseVerdict().parse("Looks great to me!", "a cat")
    assert (accepted, refined, verdict) == (False, "a cat", "unchecked")
    assert "the picture was not judged" in reasoning and "not a JSON or Python object" in reasoning
    before, after = (to_tensor([image]) for image in pictures((255, 255, 255), (0, 90, 0)))
    node = Critic().judge(ScriptedAgent(["Looks great to me!"]), before, after, "a cat", "a cat", 0)
    assert (node[0], node[1], node[3]) == (accepted, refined, verdict)
