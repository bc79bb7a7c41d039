"""A local diffusers pipeline folder as a generator; the edit route follows the pipeline family."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..messages import to_rgb
from .base import IMG2IMG, REFERENCE, TEXT_TO_IMAGE, GeneratorError, check_route

# Pipelines whose ``image=`` list holds separate reference pictures (not a batch), and how many the picture
# being edited leaves room for: FLUX.2 takes up to ten, Qwen-Image-Edit-Plus works best with three in all.
# FLUX.1 Kontext reads a list as a batch, so it takes none. Not run here: no such weights can be downloaded.
MULTI_REFERENCE_PIPELINES = {"Flux2Pipeline": 8, "Flux2KleinPipeline": 3, "QwenImageEditPlusPipeline": 2}

# diffusers is an extra: ComfyUI users never need it, and it must not be installed beside their packs.
DIFFUSERS_EXTRA = 'pip install "interleave-thinker[diffusers]"'


def import_diffusers():
    """The diffusers module, or a GeneratorError saying how to install the extra."""
    try:
        import diffusers
    except ImportError as error:
        raise GeneratorError(
            f"a diffusers pipeline needs the diffusers package, an extra of this pack: {DIFFUSERS_EXTRA}"
        ) from error
    return diffusers


def _call_parameters(pipe) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def reference_slots(pipe, route: str) -> int:
    """How many extra reference pictures ``pipe`` takes beside the picture it edits."""
    return MULTI_REFERENCE_PIPELINES.get(type(pipe).__name__, 0) if route == REFERENCE else 0


def native_route(pipe) -> str:
    """The route a pipeline does by itself: image= with strength is img2img, image= alone is reference
    editing."""
    params = _call_parameters(pipe)
    if "image" in params:
        return IMG2IMG if "strength" in params else REFERENCE
    return TEXT_TO_IMAGE


class DiffusersGenerator:
    """Text-to-image and edits with one diffusers pipeline, loaded from a local folder only.

    The edit route "auto" is the pipeline's own editing (FLUX.2 klein, Kontext, Qwen-Image-Edit,
    InstructPix2Pix take ``image=``), else img2img through the same components, else independent text-to-image
    steps.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        edit_route: str = "auto",
        steps: int | None = None,
        guidance: float | None = None,
        strength: float = 0.6,
        negative_prompt: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        cpu_offload: bool = False,
    ):
        import torch

        from ..agents.transformers_agent import pick_device, pick_dtype

        DiffusionPipeline = import_diffusers().DiffusionPipeline

        folder = Path(path).expanduser()
        if not (folder / "model_index.json").is_file():
            raise GeneratorError(
                f"not a diffusers pipeline folder: {folder} (expected model_index.json there)"
                if folder.is_dir()
                else f"generator folder not found: {folder}"
            )
        if steps is not None and steps < 1:
            raise GeneratorError(f"steps must be at least 1, got {steps}")
        if not 0 < strength <= 1:
            raise GeneratorError(f"img2img strength must be in (0, 1], got {strength}")
        check_route(edit_route)
        self.path = folder
        self.name = folder.name
        self.steps = steps
        self.guidance = guidance
        self.strength = strength
        self.negative_prompt = negative_prompt
        self.device = pick_device(device)
        torch_dtype = pick_dtype(dtype, self.device)
        try:
            pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
        except (OSError, ValueError, TypeError) as error:
            raise GeneratorError(f"cannot load the pipeline in {folder}: {error}") from error
        if cpu_offload and self.device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._torch = torch
        self.text_pipe, self.edit_pipe, self.edit_route = self._routes(pipe, edit_route)
        for derived in (self.text_pipe, self.edit_pipe):
            derived.set_progress_bar_config(disable=True)
        self.max_references = reference_slots(self.edit_pipe, self.edit_route)

    def _routes(self, pipe, requested: str):
        diffusers = import_diffusers()
        AutoPipelineForImage2Image, AutoPipelineForText2Image = (
            diffusers.AutoPipelineForImage2Image,
            diffusers.AutoPipelineForText2Image,
        )

        native = native_route(pipe)
        text_pipe = pipe
        if native == IMG2IMG:  # an img2img folder: its components also make the first picture
            text_pipe = self._from_pipe(AutoPipelineForText2Image, pipe)
            if text_pipe is None:
                raise GeneratorError(f"{pipe.__class__.__name__} has no text-to-image counterpart for step 1")
        if requested == "auto":  # plain text-to-image families edit by img2img through the same components
            route = IMG2IMG if native == TEXT_TO_IMAGE else native
        else:
            route = requested
        if route == TEXT_TO_IMAGE:
            return text_pipe, text_pipe, TEXT_TO_IMAGE
        if route == native:
            return text_pipe, pipe, route
        if route == IMG2IMG:
            edit_pipe = self._from_pipe(AutoPipelineForImage2Image, pipe)
            if edit_pipe is not None:
                return text_pipe, edit_pipe, IMG2IMG
            if requested == "auto":
                return text_pipe, text_pipe, TEXT_TO_IMAGE
        raise GeneratorError(
            f"{pipe.__class__.__name__} cannot do the {requested!r} edit route; "
            f"it supports {native!r}" + ("" if native == TEXT_TO_IMAGE else " and text-to-image")
        )

    @staticmethod
    def _from_pipe(auto_class, pipe):
        try:
            return auto_class.from_pipe(pipe)
        except (ValueError, KeyError, TypeError):
            return None

    # -- calls --------------------------------------------------------------------------------------------
    def text_to_image(
        self, prompt: str, *, width: int, height: int, seed: int, references: Sequence[Image.Image] = ()
    ) -> Image.Image:
        if references:  # a multi-reference pipeline draws the first picture from the references too
            return self._run(self.edit_pipe, prompt, width, height, seed, image=None, references=references)
        return self._run(self.text_pipe, prompt, width, height, seed, image=None)

    def edit(
        self, before: Image.Image, prompt: str, *, seed: int, references: Sequence[Image.Image] = ()
    ) -> Image.Image:
        width, height = before.size
        if self.edit_route == TEXT_TO_IMAGE:
            return self.text_to_image(prompt, width=width, height=height, seed=seed)
        return self._run(
            self.edit_pipe, prompt, width, height, seed, image=to_rgb(before), references=references
        )

    def _run(
        self, pipe, prompt: str, width: int, height: int, seed: int, image, references=()
    ) -> Image.Image:
        if len(references) > self.max_references:
            raise GeneratorError(
                f"{self.name} takes {self.max_references} reference picture(s) a call, not {len(references)}"
            )
        params = _call_parameters(pipe)
        multiple = 16
        w, h = max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "generator": self._torch.Generator(device="cpu").manual_seed(seed % (2**63)),
            "output_type": "pil",
        }
        if image is not None:
            kwargs["image"] = (
                image.resize((w, h), Image.Resampling.LANCZOS) if image.size != (w, h) else image
            )
            if "strength" in params:
                kwargs["strength"] = self.strength
        if references:  # the picture being edited first, then the references, as these pipelines expect
            edited = [kwargs["image"]] if image is not None else []
            kwargs["image"] = edited + [to_rgb(reference) for reference in references]
        if "height" in params and "width" in params:
            kwargs.update(height=h, width=w)
        if self.steps is not None:
            kwargs["num_inference_steps"] = self.steps
        if self.guidance is not None and "guidance_scale" in params:
            kwargs["guidance_scale"] = self.guidance
        if self.negative_prompt and "negative_prompt" in params:
            kwargs["negative_prompt"] = self.negative_prompt
        try:
            result = pipe(**kwargs).images[0]
        except (RuntimeError, ValueError, TypeError) as error:
            raise GeneratorError(
                f"{self.name}: the {pipe.__class__.__name__} call failed: {error}"
            ) from error
        result = to_rgb(result)
        return (
            result
            if result.size == (width, height)
            else result.resize((width, height), Image.Resampling.LANCZOS)
        )

    def __repr__(self) -> str:
        return f"DiffusersGenerator({str(self.path)!r}, edit_route={self.edit_route!r})"
