"""References, anchoring and Resume Storyboard inside a real ComfyUI, on the tiny FLUX and SD1.5 models.

The server runs in another process, so what reaches its sampler is read two ways: the storyboard it saves
records what every attempt carried, and a probe process imports ComfyUI's own modules, loads the same tiny
FLUX through its loaders and watches the conditioning that the Refine Loop's generator hands to
``nodes.common_ksampler``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from client import PromptRejected
from helpers import ChatServer, plan_text
from PIL import Image
from test_comfyui_integration import (
    CLIP_L,
    FLUX,
    LOOP,
    SAVE,
    TAEF1,
    api_workflow,
    saved_folder,
    sd15_story,
    storyboard,
    tiny_loop,
    use_endpoint,
)

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

RED, BLUE = (200, 40, 40), (40, 40, 200)
REFS = "41"  # the ImageBatch node that makes the references batch


def with_references(graph: dict, names: list[str]) -> None:
    """Two uploaded pictures as one IMAGE batch into the Refine Loop's references."""
    graph["42"] = {"class_type": "LoadImage", "inputs": {"image": names[0]}}
    graph["43"] = {"class_type": "LoadImage", "inputs": {"image": names[1]}}
    graph[REFS] = {"class_type": "ImageBatch", "inputs": {"image1": ["42", 0], "image2": ["43", 0]}}
    graph[LOOP]["inputs"]["references"] = [REFS, 0]


def flux_loaders(graph: dict) -> None:
    graph["5"] = {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX, "weight_dtype": "default"}}
    graph["6"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3"}}
    graph["7"] = {"class_type": "VAELoader", "inputs": {"vae_name": TAEF1}}


@pytest.fixture(scope="module")
def cast(comfy_server) -> list[str]:
    return [
        comfy_server.upload(Image.new("RGB", (64, 64), colour), f"cast_{n}.png")
        for n, colour in enumerate((RED, BLUE), 1)
    ]


@pytest.fixture(scope="module")
def flux_story_with_cast(comfy_server, comfy_base, cast) -> Path:
    """A three-step FLUX story with two references, anchored on its first picture, saved."""
    graph = api_workflow("story_flux_kontext_reference")
    del graph[LOOP]["inputs"]["critic"], graph["2"]
    flux_loaders(graph)
    with_references(graph, cast)
    graph[SAVE]["inputs"]["filename_prefix"] = "it_refs/flux"
    tiny_loop(graph, edit_route="auto", anchor="first")
    with ChatServer(lambda body, n: plan_text("a cat", "a hat", "a boat")) as planner:
        use_endpoint(graph, "1", planner)
        run = comfy_server.run(graph, timeout=600)
    assert run.status == "success", run.history["status"]
    return saved_folder(run, comfy_base)


def test_a_flux_story_records_both_references_on_every_step(flux_story_with_cast):
    board = storyboard(flux_story_with_cast)
    assert board["settings"]["edit_route"] == "reference"
    assert board["settings"]["references"] == {"given": 2, "anchor": "first", "generator_takes": 8}
    assert [[a["references"] for a in step["attempts"]] for step in board["steps"]] == [
        [["reference 1", "reference 2"]],
        [["reference 1", "reference 2"]],  # step 1 is the picture step 2 edits: no anchor beside it
        [["reference 1", "reference 2", "step 1"]],
    ]
    assert board["references"] == ["references/reference-01.png", "references/reference-02.png"]
    saved = [Image.open(flux_story_with_cast / name).convert("RGB") for name in board["references"]]
    assert [picture.getpixel((0, 0)) for picture in saved] == [RED, BLUE]


PROBE = r"""
import json, sys
comfyui, base, unet, text_encoder, vae_file, plan_answer = sys.argv[1:7]
sys.argv = [sys.argv[0], "--cpu", "--base-directory", base]
sys.path.insert(0, comfyui)
import comfy.options
comfy.options.enable_args_parsing()
import numpy as np
import torch
import nodes
from PIL import Image
from interleave_thinker.core.loop import LoopConfig, run_plan
from interleave_thinker.core.protocol import parse_plan
from interleave_thinker.nodes.images import to_tensor
from interleave_thinker.nodes.sampling import ComfyGenerator

model = nodes.UNETLoader().load_unet(unet, "default")[0]
clip = nodes.CLIPLoader().load_clip(text_encoder, "sd3")[0]
vae = nodes.VAELoader().load_vae(vae_file)[0]
seen = []
real = nodes.common_ksampler
def spy(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, **kwargs):
    seen.append([[latent.clone() for latent in extra.get("reference_latents", [])] for _, extra in positive])
    return real(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, **kwargs)
nodes.common_ksampler = spy

def encode(picture):
    return nodes.VAEEncode().encode(vae, to_tensor([picture]))[0]["samples"]

cast = [Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("RGB", (64, 64), (40, 40, 200))]
plan = parse_plan(plan_answer)
generator = ComfyGenerator(model, clip, vae, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple")
config = LoopConfig(width=64, height=64, max_attempts=1)
story = run_plan(plan, generator, None, references=cast, config=config)
calls = []
for index, conditioning in enumerate(seen):
    (latents,) = conditioning  # one conditioning entry
    before = [encode(story.steps[index - 1].image)] if index else []  # step 1 is drawn from text
    expected = before + [encode(picture) for picture in cast]
    calls.append({
        "latents": len(latents),
        "match": len(latents) == len(expected) and all(torch.equal(a, b) for a, b in zip(latents, expected)),
    })
# The model reads them: the same prompt and seed without the references draws another picture.
alone = generator.text_to_image("a cat", width=64, height=64, seed=story.steps[0].attempts[0].seed)
differs = not np.array_equal(np.asarray(alone), np.asarray(story.steps[0].image))
print(json.dumps({"calls": calls, "max_references": generator.max_references, "differs": differs}))
"""


def test_the_sampler_gets_the_before_image_and_both_references_on_every_step(comfyui_path, comfy_base):
    plan = plan_text("a cat", "a hat", "a boat")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(comfyui_path), str(comfy_base), FLUX, CLIP_L, TAEF1, plan],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=comfyui_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),  # as for the server: faster on small machines
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["max_references"] == 8
    # Step 1 from text holds the two references; each edit holds its before image, then the two.
    assert seen["calls"] == [
        {"latents": 2, "match": True},
        {"latents": 3, "match": True},
        {"latents": 3, "match": True},
    ]
    assert seen["differs"]


def test_resume_storyboard_from_step_3_keeps_steps_1_and_2_byte_for_byte(
    comfy_server, comfy_base, flux_story_with_cast
):
    output = comfy_base / "output"
    graph = {
        "40": {
            "class_type": "InterleaveThinkerResumeStoryboard",
            "inputs": {
                "storyboard_folder": flux_story_with_cast.relative_to(output).as_posix(),
                "from_step": 3,
                "prompt": "a red boat",
                "keep_seed": True,
                "seed": 0,
                "model": ["5", 0],
                "clip": ["6", 0],
                "vae": ["7", 0],
                "negative_prompt": "",
                "steps": 3,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "edit_route": "auto",
                "denoise": 1.0,
                "guidance": 2.5,
            },
        },
        SAVE: {
            "class_type": "InterleaveThinkerSaveStoryboard",
            "inputs": {"storyboard": ["40", 2], "filename_prefix": "it_refs/resumed"},
        },
    }
    flux_loaders(graph)
    run = comfy_server.run(graph, timeout=600)
    assert run.status == "success", run.history["status"]
    resumed_folder = saved_folder(run, comfy_base)
    first, resumed = storyboard(flux_story_with_cast), storyboard(resumed_folder)
    assert resumed["steps"][:2] == first["steps"][:2]
    for name in ("steps/step-01.png", "steps/step-02.png", "attempts/step-01-attempt-1.png"):
        assert (resumed_folder / name).read_bytes() == (flux_story_with_cast / name).read_bytes(), name
    (attempt,) = resumed["steps"][2]["attempts"]
    assert attempt["prompt"] == "a red boat" and attempt["references"] == [
        "reference 1",
        "reference 2",
        "step 1",
    ]
    assert attempt["seed"] == first["steps"][2]["attempts"][0]["seed"]  # the story's seed was kept
    changed = "steps/step-03.png"
    assert (resumed_folder / changed).read_bytes() != (flux_story_with_cast / changed).read_bytes()
    assert resumed["settings"]["resumed"]["from_step"] == 3
    assert resumed["references"] == first["references"]

    # A folder outside the output folder is refused when queued, before any model loads.
    graph["40"]["inputs"]["storyboard_folder"] = "../input"
    with pytest.raises(PromptRejected, match="storyboard_folder must stay inside the output folder"):
        comfy_server.submit(graph)


def test_an_img2img_model_says_it_does_not_use_the_references(comfy_server, comfy_base, cast):
    with ChatServer(lambda body, n: plan_text("a cat")) as planner:
        graph = sd15_story(planner, None, "it_refs/sd15")
        with_references(graph, cast)
        run = comfy_server.run(graph, timeout=300)
    assert run.status == "success", run.history["status"]
    board = storyboard(saved_folder(run, comfy_base))
    info = board["settings"]["references"]
    assert info["given"] == 2 and info["generator_takes"] == 0
    assert "not used" in info["note"] and "img2img" in info["note"]
    assert all("references" not in attempt for step in board["steps"] for attempt in step["attempts"])
