"""The pack inside a real ComfyUI: the shipped API workflows submitted over HTTP with tiny models.

Planners and Critics are real agents: a loopback OpenAI-compatible server answering from a script where a
valid plan or verdict is needed, and the tiny transformers model in models/LLM where any answer will do.
Pictures are 64x64 with at most 3 sampling steps; the weights are random, so the checks are on structure,
determinism and "changes when an input changes", never on content.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import test_workflows as wf
from client import ENDLESS_AGENT, ENDLESS_TOKENS, PACK_NAME, TINY_AGENT, PromptRejected
from helpers import ChatServer, ScriptedAgent, free_port, plan_text, verdict_text
from PIL import Image

from interleave_thinker import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from interleave_thinker.core import settings
from interleave_thinker.core.generators import GeneratorError
from interleave_thinker.core.generators.comfyui_server import ComfyUIServerGenerator
from interleave_thinker.core.loop import LoopConfig, run_story
from interleave_thinker.nodes.agent_nodes import ENDPOINT, LOCAL, OFFLOAD

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SD15, FLUX, CLIP_L, TAEF1 = (
    "tiny_sd15.safetensors",
    "tiny_flux.safetensors",
    "tiny_clip_l.safetensors",
    "tiny_taef1.safetensors",
)
LOOP, PLANNER, SAVE = "20", "10", "30"  # node ids shared by the story workflows


def api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def use_endpoint(graph: dict, node_id: str, server: ChatServer) -> None:
    graph[node_id]["inputs"].update(backend=ENDPOINT, endpoint_url=server.url, endpoint_model="scripted")


def use_tiny_agent(graph: dict, node_id: str) -> None:
    graph[node_id]["inputs"].update(
        backend=LOCAL, model=TINY_AGENT, device="cpu", dtype="fp32", memory=OFFLOAD, max_new_tokens=8
    )


def tiny_loop(graph: dict, **extra) -> None:
    graph[LOOP]["inputs"].update(width=64, height=64, steps=3, **extra)


def sd15_story(planner: ChatServer | None, critic: ChatServer | None, prefix: str, **loop) -> dict:
    """The SD1.5 workflow on the tiny checkpoint; agents on the given chat servers (no critic: none)."""
    graph = api_workflow("story_sd15_img2img")
    if planner is not None:
        use_endpoint(graph, "1", planner)
    if critic is None:
        del graph[LOOP]["inputs"]["critic"], graph["2"]
    else:
        use_endpoint(graph, "2", critic)
    graph["5"]["inputs"]["ckpt_name"] = SD15
    graph[SAVE]["inputs"]["filename_prefix"] = prefix
    tiny_loop(graph, **loop)
    return graph


def saved_folder(run, base: Path) -> Path:
    images = run.outputs(SAVE)["images"]
    return base / "output" / Path(images[0]["subfolder"]).parent


def storyboard(folder: Path) -> dict:
    return json.loads((folder / "storyboard.json").read_text())


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def looks_like_a_picture(image: Image.Image) -> bool:
    values = pixels(image)
    return values.std() > 5 and 10 < values.mean() < 245  # neither black nor flat


def image_parts(request: dict) -> int:
    return sum(
        part.get("type") == "image_url"
        for message in request["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [])
    )


# ---------------------------------------------------------------------------------------------------------


def live_specs(object_info: dict) -> dict:
    """Node specs from the server, with file lists and self-validated combos treated as the unit tests do."""
    specs = {}
    for name, info in object_info.items():
        spec = wf.spec_from_declaration(
            info["input"], info["output"], info.get("output_is_list", ()), order=info.get("input_order")
        )
        if name in wf.CORE_SPECS:
            files = {n for n, kind, _ in wf.core_specs()[name].inputs if kind == wf.FILES}
            spec.inputs = [(n, wf.FILES if n in files else kind, o) for n, kind, o in spec.inputs]
        if name in NODE_CLASS_MAPPINGS:
            spec.no_combo_check = wf.our_specs()[name].no_combo_check
        specs[name] = spec
    return specs


def test_the_pack_loads_and_every_workflow_matches_the_live_nodes(comfy_server):
    info = comfy_server.get("/object_info")
    for name, title in NODE_DISPLAY_NAME_MAPPINGS.items():
        assert info[name]["display_name"] == title and info[name]["category"] == "InterleaveThinker"
    # The hand-kept core specs of the unit tests are the server's own.
    for name in wf.CORE_SPECS:
        live = wf.spec_from_declaration(
            info[name]["input"], info[name]["output"], order=info[name]["input_order"]
        )
        kept = wf.core_specs()[name]
        assert live.names == kept.names and live.outputs == kept.outputs, name
        for (input_name, kind, options), (_, live_kind, live_options) in zip(kept.inputs, live.inputs):
            if kind == wf.FILES:
                assert isinstance(live_kind, list), (name, input_name)
                continue
            assert live_kind == kind, (name, input_name)
            for key in ("default", "min", "max", "control_after_generate", "image_upload"):
                assert options.get(key) == live_options.get(key), (name, input_name, key)
    specs = live_specs(info)
    version = comfy_server.get("/system_stats")["system"]["comfyui_version"]
    for path in wf.UI_FILES:
        needed = wf.required_comfyui(path)
        if needed and wf.version_tuple(version) < wf.version_tuple(needed):
            continue  # a newer ComfyUI's workflow: what this one does with it is the next test
        assert wf.check_ui(wf.load(path), specs) == [], path.name
        assert wf.check_api(wf.load(WORKFLOWS / "api" / path.name), specs) == [], path.name
    # ComfyUI's template browser lists the UI workflows and serves them.
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates[PACK_NAME]) == sorted(path.stem for path in wf.UI_FILES)
    served = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/story_sd15_img2img.json")
    assert served == wf.load(WORKFLOWS / "story_sd15_img2img.json")
    extensions = comfy_server.get("/extensions")
    script = next(path for path in extensions if path.endswith("/storyboard.js"))
    assert b"InterleaveThinkerSaveStoryboard" in comfy_server.get_bytes(script)


def test_a_comfyui_older_than_a_workflow_needs_stops_where_the_workflow_says(comfy_server):
    # The FLUX.2 [klein] workflow on a ComfyUI that predates FLUX.2: refused before anything runs, on the
    # loader whose title names the ComfyUI it needs (the workflow's note says the same).
    version = comfy_server.get("/system_stats")["system"]["comfyui_version"]
    needed = wf.required_comfyui(WORKFLOWS / "story_flux2_klein_reference.json")
    graph = api_workflow("story_flux2_klein_reference")
    if wf.version_tuple(version) >= wf.version_tuple(needed):  # a ComfyUI with FLUX.2: the graph fits it
        assert wf.check_api(graph, live_specs(comfy_server.get("/object_info"))) == []
        return
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.submit(graph)
    errors = rejected.value.body["node_errors"]
    loader = next(key for key, node in graph.items() if node["class_type"] == "CLIPLoader")
    assert loader in errors and f"ComfyUI {needed}+" in graph[loader]["_meta"]["title"]
    assert any("flux2" in error["details"] for error in errors[loader]["errors"])


def test_sd15_story_by_img2img_with_planner_and_critic(comfy_server, comfy_base):
    verdicts = [
        verdict_text(False, "a cat, sharper"),
        verdict_text(True, think="good cat"),
        verdict_text(False, "a cat in a red hat"),
        verdict_text(True),
    ]
    with (
        ChatServer(lambda body, n: plan_text("a cat", "add a hat")) as planner,
        ChatServer(lambda body, n: verdicts[min(n, 3)]) as critic,
    ):
        graph = sd15_story(planner, critic, "it_sd15/story")
        run = comfy_server.run(graph)
        assert run.status == "success", run.history["status"]

        folder = saved_folder(run, comfy_base)
        board = storyboard(folder)
        assert folder.name == "story_00001" and board["mode"] == "narrative"
        assert (
            board["settings"]["edit_route"] == "img2img" and board["settings"]["generator"] == "ComfyUI SD15"
        )
        assert [[a["route"] for a in s["attempts"]] for s in board["steps"]] == [
            ["text-to-image", "text-to-image"],
            ["img2img", "img2img"],
        ]
        assert [[a["status"] for a in s["attempts"]] for s in board["steps"]] == [
            ["rejected", "accepted"]
        ] * 2
        assert board["steps"][0]["attempts"][1]["prompt"] == "a cat, sharper"
        assert board["steps"][0]["attempts"][1]["verdict"]["reasoning"] == "good cat"
        for name in (
            "index.html",
            "story.md",
            "steps/step-01.png",
            "steps/step-02.png",
            "attempts/step-02-attempt-2.png",
        ):
            assert (folder / name).is_file(), name
        assert "do add a hat" in (folder / "story.md").read_text()
        assert run.outputs(SAVE)["text"] == ["do a cat\n\ndo add a hat"]
        shown = [comfy_server.view(image) for image in run.outputs(SAVE)["images"]]
        assert [image.size for image in shown] == [(64, 64), (64, 64)]
        assert all(looks_like_a_picture(image) for image in shown)
        assert [len(run.outputs("31")["images"])] == [4]  # every attempt, for inspection

        # The Critic saw the before and the after picture every time; the bar moved per attempt.
        assert len(critic.requests) == 4 and all(image_parts(r) == 2 for r in critic.requests)
        ours = [value for value, total in run.progress(LOOP) if total == 2 * 3]
        assert ours == sorted(ours) and ours[-1] == 6 and len(set(ours)) >= 4
        assert run.previews == 2  # the kept picture of each step, while the loop ran

        # Same inputs: ComfyUI's cache answers. A new loop seed: the loop reruns, the plan stays cached.
        again = comfy_server.run(graph)
        assert LOOP in again.messages("execution_cached")[0]["nodes"]
        assert len(critic.requests) == 4 and len(planner.requests) == 1
        graph[LOOP]["inputs"]["seed"] = 1
        reseeded = comfy_server.run(graph)
        assert reseeded.status == "success" and len(planner.requests) == 1 and len(critic.requests) > 4
        new = storyboard(saved_folder(reseeded, comfy_base))
        assert (
            new["seed"] == 1
            and new["steps"][0]["attempts"][0]["seed"] != board["steps"][0]["attempts"][0]["seed"]
        )


def flux_story(planner: ChatServer, image_name: str, prefix: str) -> dict:
    """The Kontext workflow on the tiny Flux, continuing from an uploaded picture (guidance mode)."""
    graph = api_workflow("story_flux_kontext_reference")
    use_endpoint(graph, "1", planner)
    del graph[LOOP]["inputs"]["critic"], graph["2"]
    graph["5"]["inputs"]["unet_name"] = FLUX
    graph["6"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3"}}
    graph["7"]["inputs"]["vae_name"] = TAEF1
    graph["9"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph[PLANNER]["inputs"].update(images=["9", 0], mode="guidance")
    graph[SAVE]["inputs"]["filename_prefix"] = prefix
    tiny_loop(graph, edit_route="auto")
    return graph


def test_flux_reference_route_follows_the_before_image(comfy_server, comfy_base):
    first = comfy_server.upload(Image.new("RGB", (64, 64), (200, 40, 40)), "before_red.png")
    second = comfy_server.upload(Image.new("RGB", (64, 64), (40, 40, 200)), "before_blue.png")
    with ChatServer(lambda body, n: plan_text("make it night")) as planner:
        red = comfy_server.run(flux_story(planner, first, "it_flux/red"), timeout=300)
        blue = comfy_server.run(flux_story(planner, second, "it_flux/blue"), timeout=300)
    assert red.status == "success" and blue.status == "success", (
        red.history["status"],
        blue.history["status"],
    )
    boards = [storyboard(saved_folder(run, comfy_base)) for run in (red, blue)]
    for board in boards:
        assert board["mode"] == "guidance" and board["settings"]["edit_route"] == "reference"
        assert board["settings"]["generator"] == "ComfyUI Flux"
        assert [[a["route"], a["status"]] for a in board["steps"][0]["attempts"]] == [
            ["reference", "unchecked"]
        ]
        assert board["inputs"] == ["inputs/input-01.png"]
    pictures = [comfy_server.view(run.outputs(SAVE)["images"][0]) for run in (red, blue)]
    assert all(looks_like_a_picture(picture) for picture in pictures)
    # Same plan, seed and prompt: only the before image differs, and so does the result.
    assert not np.array_equal(pixels(pictures[0]), pixels(pictures[1]))


def test_a_route_the_model_cannot_do_is_a_node_error(comfy_server, server_errors_expected):
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        run = comfy_server.run(sd15_story(planner, None, "it_route/story", edit_route="reference"))
    (error,) = run.messages("execution_error")
    assert error["node_id"] == LOOP and "(SD15) cannot edit by reference latent" in error["exception_message"]


def test_hand_built_graph_with_plan_to_prompts_and_the_tiny_critic(comfy_server):
    graph = api_workflow("plan_to_prompts_hand_built")
    use_tiny_agent(graph, "2")  # the Critic's Load Agent
    graph["23"] = {"class_type": "PreviewAny", "inputs": {"source": ["19", 3]}}  # the Critic's verdict
    graph["5"]["inputs"]["ckpt_name"] = SD15
    for node_id in ("14", "18"):
        graph[node_id]["inputs"].update(width=64, height=64)
    graph["15"]["inputs"]["steps"] = 3
    with ChatServer(lambda body, n: plan_text("a cat", "add a hat")) as planner:
        use_endpoint(graph, "1", planner)
        run = comfy_server.run(graph, timeout=300)
    assert run.status == "success", run.history["status"]
    assert len(run.outputs("17")["images"]) == 2  # KSampler ran once per step prompt
    # Random weights never give a verdict: each picture is left unjudged, and not taken as accepted.
    assert run.outputs("23")["text"] == ["unchecked", "unchecked"]
    reasoning = run.outputs("20")["text"]
    assert len(reasoning) == 2 and all("the picture was not judged" in text for text in reasoning)
    assert run.outputs("21")["text"] == ["False", "False"]
    assert run.outputs("22")["text"] == ["do a cat\n\ndo add a hat"]


def test_story_list_runs_one_storyboard_per_story(comfy_server, comfy_base):
    stories = ["A paper boat story", "A seed grows into a tree"]

    def plan(body, n):
        text = json.dumps(body["messages"])
        return plan_text("a boat" if "paper boat" in text else "a seed")

    graph = api_workflow("batch_story_list")
    graph["8"]["inputs"]["stories"] = "# two stories\n" + "\n".join(stories)
    graph["5"]["inputs"]["ckpt_name"] = SD15
    graph[SAVE]["inputs"]["filename_prefix"] = "it_batch/story"
    tiny_loop(graph)
    with ChatServer(plan) as planner, ChatServer(lambda body, n: verdict_text(True)) as critic:
        use_endpoint(graph, "1", planner)
        use_endpoint(graph, "2", critic)
        run = comfy_server.run(graph, timeout=300)
    assert run.status == "success", run.history["status"]
    folders = sorted((comfy_base / "output" / "it_batch").iterdir())
    assert [folder.name for folder in folders] == ["story_00001", "story_00002"]
    boards = [storyboard(folder) for folder in folders]
    assert sorted(board["instruction"] for board in boards) == sorted(stories)
    for board in boards:
        expected = "a boat" if "boat" in board["instruction"] else "a seed"
        assert board["steps"][0]["attempts"][0]["prompt"] == expected
    assert len(run.outputs(SAVE)["images"]) == 2 and len(planner.requests) == 2


def test_interrupt_stops_the_loop_before_its_next_model_call(comfy_server, comfy_base):
    def slow_critic(body, n):
        time.sleep(1.0)
        return verdict_text(False, f"try {n}")

    with (
        ChatServer(lambda body, n: plan_text("a cat", "add a hat")) as planner,
        ChatServer(slow_critic) as critic,
    ):
        graph = sd15_story(planner, critic, "it_interrupt/story", max_attempts=3)
        prompt_id = comfy_server.submit(graph)
        deadline = time.monotonic() + 120
        while not critic.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert critic.requests, "the loop never reached the Critic"
        status, _ = comfy_server.post("/interrupt", {})
        assert status == 200
        history = comfy_server.wait(prompt_id)
        asked = len(critic.requests)
    kinds = [kind for kind, _ in history["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds
    assert asked <= 2  # the call in flight when Cancel came, then nothing more (6 were planned)
    assert not (comfy_base / "output" / "it_interrupt").exists()  # Save Storyboard never ran
    assert not [p for p in (comfy_base / "output").rglob(".*tmp*")]


def test_cancel_stops_a_local_agent_in_the_middle_of_its_answer(comfy_server, comfy_base):
    """The Planner's agent never ends an answer on its own (one try is thousands of tokens, many seconds):
    Cancel pressed while it writes stops the prompt within the token it was making."""
    graph = sd15_story(None, None, "it_cancel/story")
    graph["1"]["inputs"].update(
        backend=LOCAL,
        model=ENDLESS_AGENT,
        device="cpu",
        dtype="fp32",
        memory=OFFLOAD,
        max_new_tokens=ENDLESS_TOKENS,
    )
    seen: dict = {}

    def press_cancel_while_it_writes(event):
        data = event["data"]
        if event["type"] == "execution_interrupted":
            seen["stopped"] = time.monotonic()
        elif "pressed" not in seen and event["type"] == "progress" and data["node"] == PLANNER:
            if 0 < data["value"] < ENDLESS_TOKENS:  # tokens of the first answer are coming
                seen["pressed"], seen["tokens"] = time.monotonic(), data["value"]
                comfy_server.interrupt()

    run = comfy_server.run(graph, timeout=300, on_event=press_cancel_while_it_writes)
    assert "pressed" in seen, "the Planner's bar never showed tokens"
    kinds = [kind for kind, _ in run.history["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds
    seconds = seen["stopped"] - seen["pressed"]
    print(f"Cancel after {seen['tokens']} of {ENDLESS_TOKENS} tokens: stopped {seconds:.3f} s later")
    assert seconds < 2.0  # the bound, far above what it takes (see the report's number)
    # The answer was cut short: the bar never passed the first try.
    assert max(value for value, _ in run.progress(PLANNER)) < ENDLESS_TOKENS
    assert not (comfy_base / "output" / "it_cancel").exists()  # nothing downstream ran
    assert not [p for p in (comfy_base / "output").rglob(".*tmp*")]
    # The interrupt was spent on this prompt: the next one runs.
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        assert comfy_server.run(sd15_story(planner, None, "it_cancel_after/story")).status == "success"


def test_an_empty_instruction_is_refused_when_queued(comfy_server):
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        graph = sd15_story(planner, None, "it_empty/story")
        graph[PLANNER]["inputs"]["instruction"] = "  \n "
        with pytest.raises(PromptRejected) as rejected:
            comfy_server.submit(graph)
        assert planner.requests == []
    errors = rejected.value.body["node_errors"]
    assert list(errors) == [PLANNER]
    (error,) = errors[PLANNER]["errors"]
    assert error["extra_info"]["input_name"] == "instruction" and "instruction is empty" in error["details"]


def test_a_missing_model_folder_is_reported_once_on_the_loader(
    comfy_server, comfy_base, server_errors_expected
):
    graph = sd15_story(None, None, "it_missing/story")  # the shipped local-folder Planner
    graph["1"]["inputs"]["model"] = "no-such-agent"
    run = comfy_server.run(graph)
    (error,) = run.messages("execution_error")
    assert error["node_id"] == "1" and error["exception_type"] == "InterleaveThinker.NodeError"
    assert "model folder 'no-such-agent' not found; looked in" in error["exception_message"]
    assert str(comfy_base / "models" / "LLM") in error["exception_message"]
    # The same graph with an endpoint needs no local folder: the model widget is not in its way.
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        use_endpoint(graph, "1", planner)
        assert comfy_server.run(graph).status == "success"


def test_a_planner_that_never_plans_and_an_unreachable_endpoint_fail_in_plain_words(
    comfy_server, comfy_base, server_errors_expected
):
    graph = sd15_story(None, None, "it_errors/story")
    use_tiny_agent(graph, "1")
    run = comfy_server.run(graph)
    (error,) = run.messages("execution_error")
    assert error["node_id"] == PLANNER and error["exception_type"] == "InterleaveThinker.NodeError"
    assert "the Planner (tiny-agent) gave no valid plan" in error["exception_message"]
    assert "Try another seed" in error["exception_message"]
    # The bar moved while it planned: every try of 8 tokens, in order, to the end.
    tries = settings.DEFAULT_PLANNER_TRIES
    bar = run.progress(PLANNER)
    assert {total for _, total in bar} == {tries * 8}
    values = [value for value, _ in bar]
    assert values == sorted(values) and {8 * n for n in range(tries + 1)} <= set(values)
    # The loaded agent is cached while its folder is unchanged; a changed file in it loads it again.
    assert "1" in comfy_server.run(graph).messages("execution_cached")[0]["nodes"]
    (comfy_base / "models" / "LLM" / TINY_AGENT / "NOTES.md").write_text("retrained")
    assert "1" not in comfy_server.run(graph).messages("execution_cached")[0]["nodes"]

    url = f"http://127.0.0.1:{free_port()}/v1"
    graph["1"]["inputs"].update(backend=ENDPOINT, endpoint_url=url, endpoint_model="m")
    run = comfy_server.run(graph)
    (error,) = run.messages("execution_error")
    assert error["node_id"] == "1" and f"{url}: unreachable" in error["exception_message"]


# ---------------------------------------------------------------------------------------------------------
# The engine's ComfyUI-server generator, against the same server


def flux_reference_graphs() -> tuple[dict, dict]:
    loaders = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": TAEF1}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["2", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["3", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    sampler = {
        "seed": "{{seed}}",
        "steps": 2,
        "cfg": 1.0,
        "sampler_name": "euler",
        "scheduler": "simple",
        "denoise": 1.0,
        "model": ["1", 0],
        "negative": ["4", 0],
    }
    text = dict(
        copy.deepcopy(loaders),
        **{
            "8": {
                "class_type": "EmptySD3LatentImage",
                "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
            },
            "5": {
                "class_type": "KSampler",
                "inputs": dict(sampler, positive=["4", 0], latent_image=["8", 0]),
            },
        },
    )
    edit = dict(
        copy.deepcopy(loaders),
        **{
            "8": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "9": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["3", 0]}},
            "10": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["4", 0], "latent": ["9", 0]}},
            "11": {
                "class_type": "EmptySD3LatentImage",
                "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
            },
            "5": {
                "class_type": "KSampler",
                "inputs": dict(sampler, positive=["10", 0], latent_image=["11", 0]),
            },
        },
    )
    return text, edit


def test_comfyui_server_generator_drives_the_real_server(comfy_server):
    generator = ComfyUIServerGenerator.for_checkpoint(comfy_server.url, SD15, steps=3, request_timeout=60)
    assert generator.edit_route == "img2img"
    first = generator.text_to_image("a cat", width=64, height=64, seed=11)
    assert first.size == (64, 64) and looks_like_a_picture(first)
    assert np.array_equal(
        pixels(first), pixels(generator.text_to_image("a cat", width=64, height=64, seed=11))
    )
    assert not np.array_equal(
        pixels(first), pixels(generator.text_to_image("a cat", width=64, height=64, seed=12))
    )
    red = generator.edit(Image.new("RGB", (64, 64), (220, 30, 30)), "a cat", seed=3)
    blue = generator.edit(Image.new("RGB", (64, 64), (30, 30, 220)), "a cat", seed=3)
    assert red.size == (64, 64) and not np.array_equal(pixels(red), pixels(blue))

    # The engine's loop, unchanged, with ComfyUI as its generator.
    board = run_story(
        "a cat story",
        ScriptedAgent([plan_text("a cat", "add a hat")]),
        generator,
        ScriptedAgent([verdict_text(True)]),
        config=LoopConfig(width=64, height=64, seed=2),
    )
    assert [[a.route for a in step.attempts] for step in board.steps] == [["text-to-image"], ["img2img"]]
    assert board.settings["generator"] == f"ComfyUI {SD15}"

    text, edit = flux_reference_graphs()
    flux = ComfyUIServerGenerator(comfy_server.url, text, edit, request_timeout=60)
    assert flux.edit_route == "reference"
    red = flux.edit(Image.new("RGB", (64, 64), (220, 30, 30)), "night", seed=3)
    blue = flux.edit(Image.new("RGB", (64, 64), (30, 30, 220)), "night", seed=3)
    assert not np.array_equal(pixels(red), pixels(blue))

    missing = ComfyUIServerGenerator.for_checkpoint(comfy_server.url, "missing.safetensors")
    with pytest.raises(
        GeneratorError, match=rf"{comfy_server.url}/prompt answered HTTP 400: .*missing.safetensors"
    ):
        missing.text_to_image("a cat", width=64, height=64, seed=0)
