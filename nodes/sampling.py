"""The engine's Generator on top of ComfyUI's own sampling: whatever MODEL, CLIP and VAE the user loaded.

Text goes through ComfyUI's CLIPTextEncode, latents through its VAEEncode/VAEDecode, sampling through
``nodes.common_ksampler``; reference editing adds the encoded before image to the conditioning with
``node_helpers.conditioning_set_values(..., {"reference_latents": [latent]}, append=True)``, exactly as the
core ReferenceLatent node does. So every model family ComfyUI loads works, and the edit route is picked per
family.

A story's reference pictures ride the same way: on the reference route each one is encoded and appended after
the before image's latent, as a chain of ReferenceLatent nodes would (in text-to-image too, so step 1 already
holds the cast); Qwen-Image-Edit-Plus takes them as image2/image3 of TextEncodeQwenImageEditPlus. img2img and
text-to-image take none.
"""

from __future__ import annotations

import math

from PIL import Image

from ..core import settings
from ..core.generators.base import IMG2IMG, REFERENCE, TEXT_TO_IMAGE, GeneratorError, check_route
from ..core.messages import to_rgb
from .host import module, optional_module
from .images import to_pil, to_tensor

# ComfyUI model classes (comfy/model_base.py) whose conditioning reads "reference_latents".
REFERENCE_MODELS = ("Flux", "Flux2", "QwenImage", "Omnigen2")
# Model configurations (comfy/supported_models.py) whose checkpoints are edit models or are usually loaded as
# one: FLUX.1 Kontext and FLUX.1 dev share the "Flux" layout, as Qwen-Image-Edit and Qwen-Image share
# "QwenImage"; ComfyUI cannot tell them apart, so "auto" edits by reference there.
REFERENCE_CONFIGS = ("Flux", "Flux2", "QwenImage", "Omnigen2")
# Every FLUX.2 model (dev, klein and variants to come) is an edit model, whatever its configuration is called.
REFERENCE_FAMILY_PREFIXES = ("Flux2",)
QWEN_IMAGE = "QwenImage"
# TextEncodeQwenImageEditPlus reads three pictures: the before image and two references.
QWEN_PLUS_NODE = "TextEncodeQwenImageEditPlus"
QWEN_PLUS_REFERENCES = 2
# References are drawn to about the story's picture area (as FluxKontextImageScale does to its own), on a grid
# every latent model divides: a phone photo must not become a latent many times the picture's size.
REFERENCE_GRID = 16
# ComfyUI's own FLUX.2 [klein] templates are saved with this version; older ones cannot load klein at all.
FLUX2_COMFYUI = "0.8.2"


def model_family(model) -> str:
    """The name of the loaded model's configuration, e.g. SD15, SDXL, Flux, QwenImage."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(model, "model", model)).__name__


def _model_classes(model) -> list[str]:
    return [cls.__name__ for cls in type(getattr(model, "model", model)).__mro__]


def supports_reference(model) -> bool:
    return any(name in REFERENCE_MODELS for name in _model_classes(model))


def is_edit_family(family: str) -> bool:
    """Whether checkpoints of this configuration are edit models, so "auto" edits by reference latent."""
    return family in REFERENCE_CONFIGS or family.startswith(REFERENCE_FAMILY_PREFIXES)


def resolve_route(model, requested: str) -> str:
    """The edit route for ``model``: "auto" picks reference for edit families and img2img for the rest."""
    check_route(requested)
    family = model_family(model)
    if requested == "auto":
        return REFERENCE if is_edit_family(family) and supports_reference(model) else IMG2IMG
    if requested == REFERENCE and not supports_reference(model):
        raise GeneratorError(
            f"the loaded model ({family}) cannot edit by reference latent: it ignores the before image "
            f"there. Choose img2img or text-to-image, or load an edit model (FLUX Kontext, FLUX.2, "
            f"Qwen-Image-Edit; FLUX.2 [klein] needs ComfyUI {FLUX2_COMFYUI} or newer)"
        )
    return requested


def reference_slots(family: str, route: str) -> int:
    """How many reference pictures a call can carry beside the before image: every one the story may have on
    the reference route (the conditioning holds a list), two for Qwen-Image-Edit-Plus, none otherwise."""
    if route != REFERENCE:
        return 0
    if family == QWEN_IMAGE:
        qwen = optional_module("comfy_extras.nodes_qwen")
        return QWEN_PLUS_REFERENCES if hasattr(qwen, QWEN_PLUS_NODE) else 0
    return settings.MAX_REFERENCES


def reference_size(size: tuple[int, int], area: int) -> tuple[int, int]:
    """``size`` scaled to about ``area`` pixels, its aspect kept, on the REFERENCE_GRID."""
    width, height = size
    scale = math.sqrt(area / max(1, width * height))
    return tuple(max(REFERENCE_GRID, round(side * scale / REFERENCE_GRID) * REFERENCE_GRID) for side in size)


class ComfyGenerator:
    """Text-to-image and edits with ComfyUI's sampling functions (the engine's Generator protocol)."""

    def __init__(
        self,
        model,
        clip,
        vae,
        *,
        negative: str = "",
        steps: int = 20,
        cfg: float = 7.0,
        sampler_name: str = "euler",
        scheduler: str = "normal",
        denoise: float = 0.6,
        edit_route: str = "auto",
        guidance: float | None = None,
    ):
        if model is None or clip is None or vae is None:
            missing = [
                name for name, value in (("MODEL", model), ("CLIP", clip), ("VAE", vae)) if value is None
            ]
            raise GeneratorError(
                f"{', '.join(missing)} is missing: the checkpoint has no such part; load it separately"
            )
        if not 0 < denoise <= 1:
            raise GeneratorError(f"denoise must be in (0, 1], got {denoise}")
        self.model, self.clip, self.vae = model, clip, vae
        self.negative = negative
        self.steps, self.cfg = steps, cfg
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.denoise = denoise
        self.guidance = guidance
        self.family = model_family(model)
        self.edit_route = resolve_route(model, edit_route)
        self.name = f"ComfyUI {self.family}"
        # Read by the loop (core.generators.reference_capacity): it passes references= only when above 0.
        self.max_references = reference_slots(self.family, self.edit_route)
        self._negative_cond = None

    # -- the Generator protocol ---------------------------------------------------------------------------
    def text_to_image(
        self, prompt: str, *, width: int, height: int, seed: int, references=None
    ) -> Image.Image:
        import torch

        references = self._check_references(references)
        ratio = self.vae.spacial_compression_encode()
        latent = torch.zeros([1, self.vae.latent_channels, max(1, height // ratio), max(1, width // ratio)])
        if not references:
            positive = self._encode(prompt)
        elif self.family == QWEN_IMAGE:
            positive = self._encode_qwen_plus(prompt, [to_tensor([image]) for image in references])
        else:
            positive = self._append_references(self._encode(prompt), references, (width, height))
        return self._sample(positive, {"samples": latent}, seed, 1.0, (width, height))

    def edit(self, before: Image.Image, prompt: str, *, seed: int, references=None) -> Image.Image:
        import torch

        references = self._check_references(references)
        before = to_rgb(before)
        if self.edit_route == TEXT_TO_IMAGE:
            return self.text_to_image(prompt, width=before.width, height=before.height, seed=seed)
        pixels = to_tensor([before])
        encoded = self._nodes().VAEEncode().encode(self.vae, pixels)[0]
        if self.edit_route == IMG2IMG:
            return self._sample(self._encode(prompt), encoded, seed, self.denoise, before.size)
        positive = self._encode_reference(prompt, pixels, encoded["samples"], references, before.size)
        empty = {"samples": torch.zeros_like(encoded["samples"])}
        return self._sample(positive, empty, seed, 1.0, before.size)

    def _check_references(self, references) -> list[Image.Image]:
        references = [to_rgb(image) for image in references or ()]
        if len(references) > self.max_references:
            raise GeneratorError(
                f"{self.name} on the {self.edit_route} route takes {self.max_references} reference "
                f"picture(s) a call, got {len(references)}"
                + ("" if self.max_references else ": only the reference route (edit models) uses them")
            )
        return references

    # -- ComfyUI calls ------------------------------------------------------------------------------------
    @staticmethod
    def _nodes():
        return module("nodes")

    def _encode(self, text: str):
        conditioning = self._nodes().CLIPTextEncode().encode(self.clip, text)[0]
        return self._with_guidance(conditioning)

    def _with_guidance(self, conditioning):
        if self.guidance is None:
            return conditioning
        # What FluxGuidance does; models without a guidance embedding ignore the value.
        return module("node_helpers").conditioning_set_values(conditioning, {"guidance": self.guidance})

    def _encode_reference(self, prompt: str, pixels, latent, references=(), size=(0, 0)):
        if self.family == QWEN_IMAGE:
            if references:  # the Plus encoder: the before image first, then the references
                return self._encode_qwen_plus(prompt, [pixels] + [to_tensor([image]) for image in references])
            # Qwen-Image-Edit also reads the before image through its vision-language text encoder.
            qwen = module("comfy_extras.nodes_qwen")
            output = qwen.TextEncodeQwenImageEdit.execute(
                clip=self.clip, prompt=prompt, vae=self.vae, image=pixels
            )
            return self._with_guidance(output[0])
        conditioning = module("node_helpers").conditioning_set_values(
            self._encode(prompt), {"reference_latents": [latent]}, append=True
        )
        return self._append_references(conditioning, references, size)

    def _append_references(self, conditioning, references, size: tuple[int, int]):
        """Each reference's latent after those already there: a chain of ReferenceLatent nodes."""
        helpers = module("node_helpers")
        encode = self._nodes().VAEEncode().encode
        area = size[0] * size[1]
        for image in references:
            scaled = reference_size(image.size, area)
            if scaled != image.size:
                image = image.resize(scaled, Image.Resampling.LANCZOS)
            latent = encode(self.vae, to_tensor([image]))[0]["samples"]
            conditioning = helpers.conditioning_set_values(
                conditioning, {"reference_latents": [latent]}, append=True
            )
        return conditioning

    def _encode_qwen_plus(self, prompt: str, images: list):
        """TextEncodeQwenImageEditPlus with ``images`` as image1, image2, image3 (it scales them itself)."""
        qwen = module("comfy_extras.nodes_qwen")
        slots = {f"image{number}": image for number, image in enumerate(images, 1)}
        output = getattr(qwen, QWEN_PLUS_NODE).execute(clip=self.clip, prompt=prompt, vae=self.vae, **slots)
        return self._with_guidance(output[0])

    def _sample(
        self, positive, latent: dict, seed: int, denoise: float, size: tuple[int, int]
    ) -> Image.Image:
        nodes = self._nodes()
        if self._negative_cond is None:
            self._negative_cond = self._encode(self.negative)
        oom = module("comfy.model_management").OOM_EXCEPTION
        try:
            samples = nodes.common_ksampler(
                self.model,
                seed,
                self.steps,
                self.cfg,
                self.sampler_name,
                self.scheduler,
                positive,
                self._negative_cond,
                latent,
                denoise=denoise,
            )[0]
        except oom:
            raise  # ComfyUI explains out-of-memory errors itself
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise GeneratorError(f"sampling with {self.name} failed: {error}") from error
        image = to_pil(nodes.VAEDecode().decode(self.vae, samples)[0])[0]
        # VAEs crop to their latent grid; give the loop the size it asked for.
        return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)

    def settings(self) -> dict:
        return {
            "family": self.family,
            "edit_route": self.edit_route,
            "steps": self.steps,
            "cfg": self.cfg,
            "sampler": self.sampler_name,
            "scheduler": self.scheduler,
            "denoise": self.denoise,
            "guidance": self.guidance,
            "negative_prompt": self.negative,
        }

    def __repr__(self) -> str:
        return f"ComfyGenerator({self.family}, edit_route={self.edit_route!r})"
