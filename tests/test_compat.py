"""What release 0.1.0 wrote still works: its storyboard folders load, and its workflows fit today's nodes.

The data under tests/data/ were written by 0.1.0 and are never regenerated: a change that breaks them breaks
the users who kept such files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import test_workflows as wf
from PIL import Image

from interleave_thinker import NODE_CLASS_MAPPINGS
from interleave_thinker.core.storyboard import Storyboard

DATA = Path(__file__).resolve().parent / "data"
OLD_BOARD = DATA / "storyboard-0.1.0"
OLD_WORKFLOWS = DATA / "workflows-0.1.0"
OLD_UI = sorted(OLD_WORKFLOWS.glob("*.json"))
OLD_API = sorted((OLD_WORKFLOWS / "api").glob("*.json"))


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- storyboard folders --------------------------------------------------------------------------------------


def test_a_0_1_0_storyboard_loads_losslessly(tmp_path):
    raw = json.loads((OLD_BOARD / "storyboard.json").read_text(encoding="utf-8"))
    board = Storyboard.load(OLD_BOARD)

    assert board.instruction == raw["instruction"] and board.mode == raw["mode"] == "narrative"
    assert (board.width, board.height, board.seed) == (raw["width"], raw["height"], raw["seed"])
    assert board.plan.to_dict() == raw["plan"]
    assert board.planner_output == raw["planner"]["output"]
    assert board.settings == raw["settings"]
    assert [step.number for step in board.steps] == [1, 2, 3]
    assert [step.status for step in board.steps] == ["accepted"] * 3
    assert [step.text for step in board.steps] == [s["text"] for s in raw["steps"]]
    for step, raw_step in zip(board.steps, raw["steps"]):
        assert [
            (a.number, a.prompt, a.seed, a.route, a.status, a.verdict.accepted, a.verdict.reasoning)
            for a in step.attempts
        ] == [
            (
                a["number"],
                a["prompt"],
                a["seed"],
                a["route"],
                a["status"],
                a["verdict"]["previous_step_success"],
                a["verdict"]["reasoning"],
            )
            for a in raw_step["attempts"]
        ]
        for attempt, raw_attempt in zip(step.attempts, raw_step["attempts"]):
            assert np.array_equal(np.asarray(attempt.image), pixels_of(OLD_BOARD / raw_attempt["image"]))
        assert np.array_equal(np.asarray(step.image), pixels_of(OLD_BOARD / raw_step["image"]))
    assert [len(step.attempts) for step in board.steps] == [1, 2, 2]
    assert board.steps[1].attempts[0].verdict.refine_prompt == board.steps[1].attempts[1].prompt
    assert board.input_images == []

    # Saved again, it is the same storyboard: storyboard.json and story.md byte for byte, the same pictures.
    # (index.html is drawn anew in today's page style.)
    folder = board.save(tmp_path / "again")
    for name in ("storyboard.json", "story.md"):
        assert (folder / name).read_bytes() == (OLD_BOARD / name).read_bytes(), name
    for name in ("steps", "attempts"):
        old = sorted(p.name for p in (OLD_BOARD / name).iterdir())
        assert sorted(p.name for p in (folder / name).iterdir()) == old
        for file in old:
            assert np.array_equal(pixels_of(folder / name / file), pixels_of(OLD_BOARD / name / file)), file
    assert Storyboard.load(folder) == board


# -- workflows -----------------------------------------------------------------------------------------------


def node_types(path: Path) -> set[str]:
    workflow = wf.load(path)
    if "nodes" in workflow:  # UI format
        return {node["type"] for node in workflow["nodes"]} - set(wf.VIRTUAL_NODES)
    return {node["class_type"] for node in workflow.values()}


def test_the_0_1_0_workflows_are_all_here():
    assert len(OLD_UI) >= 5 and {p.name for p in OLD_UI} == {p.name for p in OLD_API}


@pytest.mark.parametrize("path", OLD_UI + OLD_API, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_node_type_of_a_0_1_0_workflow_still_exists(path):
    ours = {name for name in node_types(path) if name.startswith("InterleaveThinker")}
    assert ours, "a story workflow uses this pack's nodes"
    assert ours <= set(NODE_CLASS_MAPPINGS), sorted(ours - set(NODE_CLASS_MAPPINGS))
    assert node_types(path) - ours <= set(wf.CORE_SPECS)  # and ComfyUI's own nodes it uses are checked below


def specs_for(workflow: dict) -> dict[str, wf.NodeSpec]:
    """Today's node specs, taking a node that has gained outputs at the end since as it was saved: the saved
    node keeps its old outputs, and each of its links still leaves a slot of the same type."""
    specs = wf.known_specs()
    for node in workflow["nodes"]:
        spec = specs.get(node["type"])
        saved = tuple(output["type"] for output in node.get("outputs", []))
        if spec is not None and spec.outputs != saved and spec.outputs[: len(saved)] == saved:
            spec = copy.copy(spec)
            spec.outputs, spec.output_is_list = saved, spec.output_is_list[: len(saved)]
            specs[node["type"]] = spec
    return specs


@pytest.mark.parametrize("path", OLD_UI, ids=lambda p: p.stem)
def test_a_0_1_0_ui_workflow_still_fits_the_node_definitions(path):
    # Node types, input names, links, the number and place of widget values, ranges and combo choices.
    workflow = wf.load(path)
    assert wf.check_ui(workflow, specs_for(workflow)) == []


@pytest.mark.parametrize("path", OLD_API, ids=lambda p: p.stem)
def test_a_0_1_0_api_workflow_still_fits_the_node_definitions(path):
    assert wf.check_api(wf.load(path), wf.known_specs()) == []
