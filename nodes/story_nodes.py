"""Refine Loop, Resume Storyboard, Plan to Prompts, Save Storyboard and Story List: the story side of the
pack."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from ..core import settings
from ..core.errors import BadInput
from ..core.generators.base import EDIT_ROUTE_CHOICES
from ..core.loop import LoopConfig, StepDone, VerdictReady, check_references, resume, run_plan
from ..core.stories import STORY_FILE_SUFFIXES, read_stories
from ..core.storyboard import FILENAME, Storyboard, StoryboardError
from .host import (
    NodeError,
    Progress,
    check_inside,
    engine_errors,
    input_directory,
    interrupted,
    module,
    output_directory,
)
from .images import to_pil, to_tensor
from .sampling import ComfyGenerator
from .types import AGENT, CATEGORY, PLAN, STORYBOARD, sampler_choices

NO_FILE = "(none)"


class RefineLoop:
    """The controller: each step of the plan drawn with the loaded model, checked by the Critic, redrawn."""

    DESCRIPTION = (
        "Carries out a plan with your MODEL/CLIP/VAE through ComfyUI's own sampler. Step 1 is drawn "
        "from text; later steps edit the last accepted image by the edit route. Each picture goes to "
        "the Critic; a rejected one is redrawn from the same before image with the Critic's prompt, "
        "up to max attempts. Without a Critic every first attempt is kept."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING", STORYBOARD, "IMAGE")
    RETURN_NAMES = ("images", "story", "storyboard", "attempts")
    OUTPUT_TOOLTIPS = (
        "The kept image of every step, in order.",
        "The story text: each step's text for the reader.",
        "Everything, for Save Storyboard: plan, steps, every attempt, verdicts, route and timings.",
        "Every attempt of every step, rejected ones included, for inspection.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = sampler_choices()
        return {
            "required": {
                "plan": (PLAN, {"tooltip": "The plan, from the Planner."}),
                "model": ("MODEL", {"tooltip": "The diffusion model that draws every step."}),
                "clip": ("CLIP", {"tooltip": "The text encoder for the prompts."}),
                "vae": ("VAE", {"tooltip": "The VAE that encodes before images and decodes results."}),
                "negative_prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "What no picture should show (ignored at cfg 1, as with FLUX).",
                    },
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": settings.SEED_MAX,
                        "control_after_generate": True,
                        "tooltip": "Every step and attempt derives its noise seed from this one: same "
                        "seed, same storyboard.",
                    },
                ),
                "steps": (
                    "INT",
                    {"default": 20, "min": 1, "max": 10000, "tooltip": "Sampling steps per picture."},
                ),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 7.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Classifier-free guidance scale (1 for FLUX and other distilled models).",
                    },
                ),
                "sampler_name": (samplers, {"default": "euler", "tooltip": "The sampling algorithm."}),
                "scheduler": (schedulers, {"default": "normal", "tooltip": "The noise schedule."}),
                "width": (
                    "INT",
                    {
                        "default": settings.DEFAULT_SIZE,
                        "min": settings.MIN_SIZE,
                        "max": settings.MAX_SIZE,
                        "step": 16,
                        "tooltip": "Width of pictures drawn from text (edits keep the before image's size).",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": settings.DEFAULT_SIZE,
                        "min": settings.MIN_SIZE,
                        "max": settings.MAX_SIZE,
                        "step": 16,
                        "tooltip": "Height of pictures drawn from text.",
                    },
                ),
                "edit_route": (
                    list(EDIT_ROUTE_CHOICES),
                    {
                        "default": "auto",
                        "tooltip": "How a step changes the before image. reference: the before image joins "
                        "the conditioning (FLUX Kontext, FLUX.2, Qwen-Image-Edit). img2img: re-noise it by "
                        "denoise. text-to-image: independent pictures. auto: reference for FLUX and "
                        "Qwen-Image models, img2img otherwise (pick img2img for plain FLUX.1 dev).",
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": settings.DEFAULT_STRENGTH,
                        "min": 0.01,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "img2img only: how much of the before image is redrawn.",
                    },
                ),
                "max_attempts": (
                    "INT",
                    {
                        "default": settings.DEFAULT_MAX_ATTEMPTS,
                        "min": 1,
                        "max": settings.MAX_ATTEMPTS_LIMIT,
                        "tooltip": "Pictures per step at most; if none is accepted, keep_attempt picks one.",
                    },
                ),
            },
            "optional": {
                "critic": (AGENT, {"tooltip": "The Critic; without one every first attempt is kept."}),
                "guidance": (
                    "FLOAT",
                    {
                        "default": 3.5,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "tooltip": "Guidance embedding for FLUX-type models (as FluxGuidance); other "
                        "models ignore it.",
                    },
                ),
                # Appended last and optional, so workflows saved before it load and run as they did.
                "keep_attempt": (
                    list(settings.KEEP_CHOICES),
                    {
                        "default": settings.DEFAULT_KEEP,
                        "tooltip": "When the Critic rejects every picture of a step: keep the last one, or "
                        "the best one (whose verdict names the fewest problems; the storyboard says why).",
                    },
                ),
                "references": (
                    "IMAGE",
                    {
                        "tooltip": "Pictures that hold the cast (a character, a style, a place): each image "
                        "of the batch is one reference, given to the model with every step. Only edit models "
                        f"on the reference route use them (FLUX Kontext, FLUX.2 and Omnigen2 up to "
                        f"{settings.MAX_REFERENCES}, Qwen-Image-Edit-Plus two); img2img and text-to-image "
                        "models do not use "
                        "references, and the storyboard says so. The Planner's images stay separate.",
                    },
                ),
                "anchor": (
                    list(settings.ANCHOR_CHOICES),
                    {
                        "default": settings.DEFAULT_ANCHOR,
                        "tooltip": "first: every edit also gets the story's first picture, so a long chain "
                        "of edits keeps looking back at where it began. none: each edit sees only the "
                        "picture it edits (and the references). Reference route only.",
                    },
                ),
            },
        }

    def run(
        self,
        plan,
        model,
        clip,
        vae,
        negative_prompt,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        width,
        height,
        edit_route,
        denoise,
        max_attempts,
        critic=None,
        guidance=None,
        keep_attempt=None,
        references=None,
        anchor=None,
    ):
        story_plan = plan  # the PLAN input: a StoryPlan (the input's name is stored in saved workflows)
        with engine_errors():
            cast = to_pil(references)
            check_references(cast)  # before any model is called
            generator = _generator(
                model, clip, vae, negative_prompt, steps, cfg, sampler_name, scheduler, edit_route, denoise,
                guidance,
            )  # fmt: skip
            config = LoopConfig(
                max_attempts=max_attempts,
                max_steps=settings.MAX_PLAN_STEPS,
                seed=seed,
                width=width,
                height=height,
                mode=story_plan.mode,
                # Left out by workflows saved before these inputs: the defaults they ran with.
                keep_attempt=keep_attempt or settings.DEFAULT_KEEP,
                anchor=anchor or settings.DEFAULT_ANCHOR,
            )
        with engine_errors("the Critic"):
            story = run_plan(
                story_plan.plan,
                generator,
                critic,
                instruction=story_plan.instruction,
                images=story_plan.images,
                references=cast,
                mode=story_plan.mode,
                config=config,
                on_event=_progress(story_plan.steps, max_attempts),
                cancel=interrupted,
                planning=story_plan.planning,
            )
        return _outputs(story, generator)


# What Resume Storyboard shares with the Refine Loop: the generator's inputs, declared once (Refine Loop's).
_GENERATOR_INPUTS = (
    "model",
    "clip",
    "vae",
    "negative_prompt",
    "steps",
    "cfg",
    "sampler_name",
    "scheduler",
    "edit_route",
    "denoise",
)
KEEP_STORY_SEED = "the story's seed"


class ResumeStoryboard:
    """A saved storyboard redrawn from one step on: the steps before it stay exactly as they were."""

    DESCRIPTION = (
        "Opens a storyboard that Save Storyboard wrote and redraws it from one step on, with your "
        "MODEL/CLIP/VAE and optional Critic: the steps before from_step are kept as they are (same pictures, "
        "same record), later ones are drawn again, optionally with a new prompt for from_step. Attempts, "
        "keep rule, anchoring and references are the story's own. Feed the result to Save Storyboard."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = RefineLoop.RETURN_TYPES
    RETURN_NAMES = RefineLoop.RETURN_NAMES
    OUTPUT_TOOLTIPS = RefineLoop.OUTPUT_TOOLTIPS
    FUNCTION = "resume"

    @classmethod
    def INPUT_TYPES(cls):
        loop = RefineLoop.INPUT_TYPES()
        inputs = {**loop["required"], **loop["optional"]}
        seed = dict(inputs["seed"][1])
        seed["tooltip"] = (
            "The seed later steps derive their noise from, used when keep_seed is off: a new seed gives "
            "new pictures from from_step on."
        )
        return {
            "required": {
                "storyboard_folder": (
                    "STRING",
                    {
                        "default": "InterleaveThinker/story_00001",
                        "tooltip": "A folder Save Storyboard wrote, inside ComfyUI's output folder (its path "
                        "from there, or Save Storyboard's folder output); '..' and folders outside the "
                        "output folder are refused.",
                    },
                ),
                "from_step": (
                    "INT",
                    {
                        "default": 2,
                        "min": 1,
                        "max": settings.MAX_PLAN_STEPS,
                        "tooltip": "The first step drawn again; every step before it is kept as saved.",
                    },
                ),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "A new prompt for from_step; empty keeps the plan's prompt.",
                    },
                ),
                "keep_seed": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "label_on": KEEP_STORY_SEED,
                        "label_off": "the seed below",
                        "tooltip": "On: later steps use the story's own seed (only from_step's new prompt "
                        "changes them). Off: they use the seed below.",
                    },
                ),
                "seed": ("INT", seed),
                **{name: inputs[name] for name in _GENERATOR_INPUTS},
            },
            "optional": {name: inputs[name] for name in ("critic", "guidance")},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, storyboard_folder):
        """A folder outside the output folder, or one with no storyboard, is refused when queued; a linked
        one (None here) when the node runs."""
        if storyboard_folder is None:
            return True
        try:
            _storyboard_folder(storyboard_folder)
        except NodeError as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, storyboard_folder, **kwargs):
        """A storyboard saved again under the same name runs again."""
        try:
            stat = (_storyboard_folder(storyboard_folder) / FILENAME).stat()
        except (NodeError, OSError, TypeError):
            return "missing"
        return hashlib.sha256(f"{storyboard_folder}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()

    def resume(
        self,
        storyboard_folder,
        from_step,
        prompt,
        keep_seed,
        seed,
        model,
        clip,
        vae,
        negative_prompt,
        steps,
        cfg,
        sampler_name,
        scheduler,
        edit_route,
        denoise,
        critic=None,
        guidance=None,
    ):
        folder = _storyboard_folder(storyboard_folder)
        with engine_errors():
            saved = Storyboard.load(folder)
            generator = _generator(
                model, clip, vae, negative_prompt, steps, cfg, sampler_name, scheduler, edit_route, denoise,
                guidance,
            )  # fmt: skip
        loop = saved.settings.get("loop") if isinstance(saved.settings.get("loop"), dict) else {}
        max_attempts = loop.get("max_attempts", settings.DEFAULT_MAX_ATTEMPTS)
        with engine_errors("the Critic"):
            story = resume(
                saved,
                from_step,
                generator,
                critic,
                prompt=prompt if prompt.strip() else None,
                seed=None if keep_seed else seed,
                on_event=_progress(saved.plan.steps, max_attempts),
                cancel=interrupted,
            )
        return _outputs(story, generator)


def _generator(
    model, clip, vae, negative_prompt, steps, cfg, sampler_name, scheduler, edit_route, denoise, guidance
) -> ComfyGenerator:
    return ComfyGenerator(
        model,
        clip,
        vae,
        negative=negative_prompt,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
        edit_route=edit_route,
        guidance=guidance,
    )


def _progress(plan_steps, max_attempts: int):
    """The loop's events on ComfyUI's progress bar: one stretch of max_attempts per image step."""
    image_steps = [index for index, step in enumerate(plan_steps) if step.makes_image]
    progress = Progress(len(image_steps) * max_attempts)
    done = {"attempts": 0}

    def on_event(event) -> None:
        if isinstance(event, VerdictReady):
            done["attempts"] += 1
            progress.set(done["attempts"])
        elif isinstance(event, StepDone) and event.step.image is not None:
            # A finished step (accepted, or kept from a saved story) skips its unused attempts on the bar,
            # and shows its picture.
            done["attempts"] = (image_steps.index(event.step_index) + 1) * max_attempts
            progress.set(done["attempts"], preview=event.step.image)

    return on_event


def _outputs(story: Storyboard, generator: ComfyGenerator):
    story.settings["sampling"] = generator.settings()
    # Every picture of a story has one size: the first step's, which every edit keeps.
    attempts = [attempt.image for attempt in story.attempts]
    return (to_tensor(story.images), story.text(), story, to_tensor(attempts))


def _storyboard_folder(name) -> Path:
    """A saved storyboard folder inside ComfyUI's output folder, named from there (or, as Save Storyboard's
    folder output gives it, by its full path there); a NodeError saying what to fix otherwise."""
    output = output_directory().resolve()
    text = str(name or "").strip()
    where = "the output folder (e.g. InterleaveThinker/story_00001)"
    if Path(text).is_absolute():
        path = Path(text).resolve()
    else:
        path = output.joinpath(*check_inside(text, "storyboard_folder", where)).resolve()
    # An absolute path elsewhere, or a link leading out (of the folder or of its storyboard.json).
    if output not in path.parents or output not in (path / FILENAME).resolve().parents:
        raise NodeError(
            f"storyboard_folder must stay inside {where}: no path or link leading out (got {name!r})"
        )
    if not Storyboard.is_saved(path):
        raise NodeError(
            f"no saved storyboard in {name!r} inside the output folder: give a folder Save Storyboard wrote "
            "(it holds storyboard.json)"
        )
    return path


class PlanToPrompts:
    """A plan as lists, for graphs built from core nodes (Planner -> Plan to Prompts -> KSampler ->
    Critic)."""

    DESCRIPTION = (
        "Turns a plan into lists: one generator prompt and one reader text per image step, so every "
        "node downstream runs once per step. The story output holds the text of all steps."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("prompts", "texts", "story")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = (
        "The prompt of every image step, as a list.",
        "The reader's text of every image step, as a list (same order).",
        "The text of the whole plan, text-only steps included.",
    )
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"plan": (PLAN, {"tooltip": "The plan, from the Planner."})}}

    def split(self, plan):
        steps = [step for step in plan.steps if step.makes_image]
        if not steps:
            raise NodeError(
                "this plan has no step with a prompt for the image model, so there is nothing to draw"
            )
        story = "\n\n".join(step.display_text for step in plan.steps if step.display_text)
        return ([step.prompt for step in steps], [step.display_text for step in steps], story)


class SaveStoryboard:
    """Writes a storyboard folder (storyboard.json, PNGs, index.html, story.md) under ComfyUI's output
    folder."""

    DESCRIPTION = (
        "Saves the storyboard as a folder in ComfyUI's output folder: storyboard.json, the step and "
        "attempt PNGs, index.html and story.md. The folder appears whole or not at all."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("folder",)
    OUTPUT_TOOLTIPS = ("The path of the saved storyboard folder.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "storyboard": (STORYBOARD, {"tooltip": "The storyboard, from the Refine Loop."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "InterleaveThinker/story",
                        "tooltip": "Folder name prefix inside the output folder; a counter is added. "
                        "%date:yyyy-MM-dd% style and sub-folders work as in Save Image; '..' and absolute "
                        "paths are refused.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        """A prefix reaching outside the output folder is refused when the prompt is queued, not after the
        whole story ran; a linked one (None here) is checked when the node runs."""
        if filename_prefix is None:
            return True
        try:
            _check_prefix(filename_prefix)
        except NodeError as error:
            return str(error)
        return True

    def save(self, storyboard, filename_prefix):
        _check_prefix(filename_prefix)
        folder_paths = module("folder_paths")
        output = str(output_directory())
        try:
            parent, name, counter, _, _ = folder_paths.get_save_image_path(
                filename_prefix, output, storyboard.width, storyboard.height
            )
        except Exception as error:  # ComfyUI raises a bare Exception for prefixes outside the output folder
            raise NodeError(f"cannot save under {filename_prefix!r}: {error}") from None
        folder = Path(parent) / f"{name}_{counter:05}"
        while folder.exists():
            counter += 1
            folder = Path(parent) / f"{name}_{counter:05}"
        story = storyboard if storyboard.story_id else dataclasses.replace(storyboard, story_id=folder.name)
        try:
            story.save(folder)
        except (OSError, StoryboardError) as error:
            raise NodeError(f"cannot write the storyboard to {folder}: {error}") from None
        images = []
        for step in story.steps:
            if step.image is not None:
                path = folder / Storyboard.step_file(step)
                images.append(
                    {
                        "filename": path.name,
                        "subfolder": os.path.relpath(path.parent, output),
                        "type": "output",
                    }
                )
        return {"ui": {"images": images, "text": [story.text()]}, "result": (str(folder),)}


class StoryList:
    """Many instructions for one graph: ComfyUI runs the Planner, the loop and the save once per story."""

    DESCRIPTION = (
        "Makes a list of instructions from the text box (one story a line, # for comments) and/or a "
        ".txt or .jsonl file in ComfyUI's input folder. Everything downstream runs once per story."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("instructions", "count")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One instruction per story, as a list.", "How many stories there are.")
    FUNCTION = "stories"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "stories": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "One instruction a line; blank lines and lines starting with # are "
                        "skipped.",
                    },
                ),
                "file": (
                    [NO_FILE] + _story_files(),
                    {
                        "default": NO_FILE,
                        "tooltip": "A .txt file (one instruction a line) or .jsonl file "
                        '({"instruction": ...} a line) '
                        "in ComfyUI's input folder, read after the text box.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        if file == NO_FILE:
            return True
        try:
            _story_path(file)
        except NodeError as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, stories, file):
        if file == NO_FILE:
            return ""
        try:
            stat = _story_path(file).stat()
        except (NodeError, OSError):
            return "missing"
        return hashlib.sha256(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()

    def stories(self, stories, file):
        instructions = [
            line.strip() for line in stories.splitlines() if line.strip() and not line.strip().startswith("#")
        ]
        if file != NO_FILE:
            instructions += _read_story_file(_story_path(file))
        if not instructions:
            raise NodeError(
                "Story List has no stories: write one instruction a line, or choose a file in the "
                "input folder"
            )
        return (instructions, len(instructions))


def _check_prefix(prefix: str) -> None:
    check_inside(prefix, "filename_prefix", "the output folder (e.g. InterleaveThinker/story)")


def _story_files() -> list[str]:
    try:
        folder = input_directory()
    except ImportError:
        return []
    if not folder.is_dir():
        return []
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in STORY_FILE_SUFFIXES
    )


def _story_path(name: str) -> Path:
    folder = input_directory()
    path = folder / name
    if Path(name).name != name or path.suffix.lower() not in STORY_FILE_SUFFIXES:
        raise NodeError(f"choose a .txt or .jsonl file directly in the input folder (got {name!r})")
    if not path.is_file():
        raise NodeError(f"story file {name!r} not found in the input folder {folder}")
    return path


def _read_story_file(path: Path) -> list[str]:
    try:
        items = read_stories(path)
    except BadInput as error:
        raise NodeError(str(error)) from None
    problems = [item.error for item in items if item.error]
    problems += [
        f"{item.where}: Story List passes instructions only; give images to the Planner's images "
        f"input instead"
        for item in items
        if item.images
    ]
    problems += [
        f"{item.where}: Story List passes instructions only; set the seed on the Planner and the "
        f"Refine Loop instead"
        for item in items
        if item.seed is not None
    ]
    if problems:
        raise NodeError(
            "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return [item.instruction for item in items]
