"""This pack's protocol with any language model, inside a real ComfyUI: Planner Prompt -> a STRING node ->
Parse Plan, Critic Prompt -> a STRING node -> Parse Verdict, a plan fixed by hand drawn as fixed, and its
printed pages.

The language model is played by ComfyUI's own Regex Replace node: it takes the prompt text, as a model node
would, and answers with a scripted plan or verdict. Any node with a STRING output fits in its place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client import PromptRejected
from helpers import plan_text, verdict_text
from PIL import Image
from test_comfyui_integration import (
    LOOP,
    PLANNER,
    SAVE,
    SD15,
    api_workflow,
    saved_folder,
    storyboard,
    tiny_loop,
)

from interleave_thinker.core.messages import critic_messages, message_text, planner_messages
from interleave_thinker.core.protocol import parse_plan
from interleave_thinker.nodes.protocol_nodes import PLAN_TEXT

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

INSTRUCTION = "A fox cub finds a lost lantern in the snow and carries it home."


def language_model(prompt_link: list, answer: str) -> dict:
    """A STRING node standing in for a language model: whatever the prompt, it answers ``answer``."""
    assert "\\" not in answer  # Regex Replace reads backslashes in its replacement as escapes
    return {
        "class_type": "RegexReplace",
        "inputs": {"string": prompt_link, "regex_pattern": r"\A[\s\S]*\Z", "replace": answer, "count": 1},
    }


def preview(link: list) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": link}}


def test_planner_prompt_through_any_string_node_to_parse_plan(comfy_server):
    answer = plan_text("a fox cub in the snow", "the cub lifts a lantern", think="two pictures")
    graph = {
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": INSTRUCTION}},
        "2": {
            "class_type": "InterleaveThinkerPlannerPrompt",
            "inputs": {"instruction": ["1", 0], "mode": "auto"},
        },
        "3": language_model(["2", 0], answer),
        "4": {
            "class_type": "InterleaveThinkerParsePlan",
            "inputs": {"text": ["3", 0], "mode": "auto", "max_steps": 6, "instruction": ["1", 0]},
        },
        "5": {"class_type": "InterleaveThinkerPlanToPrompts", "inputs": {"plan": ["4", 0]}},
        "6": preview(["2", 0]),
        "7": preview(["5", 0]),
        "8": preview(["4", 1]),
        "9": preview(["5", 2]),
    }
    run = comfy_server.run(graph)
    assert run.status == "success", run.history["status"]
    # The model node got the Planner's own prompt, word for word.
    assert run.outputs("6")["text"] == [message_text(planner_messages(INSTRUCTION, [], "narrative"))]
    assert run.outputs("7")["text"] == ["a fox cub in the snow", "the cub lifts a lantern"]
    (plan_json,) = run.outputs("8")["text"]
    assert parse_plan(plan_json).steps == parse_plan(answer).steps
    assert run.outputs("9")["text"] == ["do a fox cub in the snow\n\ndo the cub lifts a lantern"]


def test_critic_prompt_through_any_string_node_to_parse_verdict(comfy_server):
    def picture(colour: int) -> dict:
        return {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": colour},
        }

    graph = {
        "1": picture(0xFFFFFF),
        "2": picture(0x336699),
        "3": {
            "class_type": "InterleaveThinkerCriticPrompt",
            "inputs": {
                "before": ["1", 0],
                "after": ["2", 0],
                "step_instruction": "a cat",
                "prompt_used": "a cat",
            },
        },
        "4": language_model(["3", 0], verdict_text(False, "a grey cat on a red mat", think="no mat")),
        "5": {
            "class_type": "InterleaveThinkerParseVerdict",
            "inputs": {"text": ["4", 0], "prompt_used": "a cat"},
        },
        "6": preview(["3", 0]),
        "7": preview(["5", 0]),
        "8": preview(["5", 1]),
        "9": preview(["5", 2]),
        "10": preview(["5", 3]),
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    run = comfy_server.run(graph)
    assert run.status == "success", run.history["status"]
    white, blue = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), (0x33, 0x66, 0x99))
    assert run.outputs("6")["text"] == [message_text(critic_messages(white, blue, "a cat", "a cat"))]
    assert [run.outputs(n)["text"] for n in ("7", "8", "9", "10")] == [
        ["False"],
        ["a grey cat on a red mat"],
        ["no mat"],
        ["rejected"],
    ]
    shown = [comfy_server.view(image).getpixel((5, 5)) for image in run.outputs("11")["images"]]
    expected = [(255, 255, 255), (0x33, 0x66, 0x99)]  # before, then after
    assert len(shown) == 2 and all(
        abs(a - b) <= 1 for got, want in zip(shown, expected) for a, b in zip(got, want)
    )


def edited_plan() -> str:
    """What a user makes of a Planner's plan_json: one prompt rewritten, a step dropped, a text step added."""
    steps = json.loads(parse_plan(plan_text("a fox", "a lantern", "a den")).to_json())["execution_plan"]
    steps[1]["prompt"] = "the fox lifts a glowing red lantern"
    del steps[2]
    steps.append(
        {
            "step_number": 3,
            "step_name": "Moral",
            "instruction": None,
            "prompt": None,
            "auxiliary_text": "Home.",
        }
    )
    return json.dumps({"execution_plan": steps}, indent=2, ensure_ascii=False)


def edited_story(prefix: str, pages: bool = True) -> dict:
    """The SD1.5 story workflow with the Planner swapped for Parse Plan holding a plan typed by hand."""
    graph = api_workflow("story_sd15_img2img")
    del graph["1"], graph["2"], graph[LOOP]["inputs"]["critic"]  # no Planner, no Critic: the plan as typed
    graph[PLANNER] = {
        "class_type": "InterleaveThinkerParsePlan",
        "inputs": {"text": edited_plan(), "mode": "narrative", "max_steps": 6, "instruction": INSTRUCTION},
    }
    graph["5"]["inputs"]["ckpt_name"] = SD15
    graph[SAVE]["inputs"]["filename_prefix"] = f"{prefix}/story"
    tiny_loop(graph, max_attempts=1)
    if pages:
        graph["40"] = {
            "class_type": "InterleaveThinkerStoryboardPage",
            "inputs": {
                "storyboard": [LOOP, 2],
                "page": "square",
                "columns": 2,
                "dpi": 72,
                "save": True,
                "filename_prefix": f"{prefix}/pages",
            },
        }
    return graph


def test_an_edited_plan_runs_exactly_the_edited_steps_and_prints(comfy_server, comfy_base):
    run = comfy_server.run(edited_story("it_edited"), timeout=300)
    assert run.status == "success", run.history["status"]
    board = storyboard(saved_folder(run, comfy_base))
    assert [[a["prompt"] for a in step["attempts"]] for step in board["steps"]] == [
        ["a fox"],
        ["the fox lifts a glowing red lantern"],
        [],
    ]
    assert [step["text"] for step in board["steps"]] == ["do a fox", "do a lantern", "Home."]
    assert board["instruction"] == INSTRUCTION and board["settings"]["planner"] == PLAN_TEXT
    assert [step["status"] for step in board["steps"]] == ["unchecked", "unchecked", "text"]

    # The printed pages: shown on the node, saved beside a PDF that holds every step's text.
    shown = run.outputs("40")["images"]
    pages = [comfy_server.view(image) for image in shown]
    assert pages and all(page.size == (576, 576) for page in pages)
    (pdf,) = (comfy_base / "output" / "it_edited").glob("pages_*.pdf")
    assert pdf.name == "pages_00001_.pdf" and len(shown) == len(
        list(pdf.parent.glob("pages_00001_page-*.png"))
    )
    pypdf = pytest.importorskip("pypdf", reason="pypdf (the dev extra) reads the PDF back")
    reader = pypdf.PdfReader(pdf, strict=True)
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert len(reader.pages) == len(pages)
    for caption in ("1. Step 1 do a fox", "2. Step 2 do a lantern", "3. Moral Home."):
        assert caption in text
    assert not [p for p in (comfy_base / "output").rglob(".*tmp*")]


def test_a_broken_plan_typed_by_hand_is_refused_when_queued(comfy_server):
    graph = edited_story("it_broken", pages=False)
    graph[PLANNER]["inputs"]["text"] = '{"execution_plan": "first a fox, then a lantern"}'
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.submit(graph)
    errors = rejected.value.body["node_errors"]
    assert list(errors) == [PLANNER]
    (error,) = errors[PLANNER]["errors"]
    assert error["extra_info"]["input_name"] == "text"
    assert "'execution_plan' is not a list" in error["details"] and "Fix it by hand" in error["details"]
    assert not (Path(comfy_server.base) / "output" / "it_broken").exists()
