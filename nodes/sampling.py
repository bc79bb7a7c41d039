"""The engine's Generator on top of ComfyUI's own sampling: whatever MODEL, CLIP and VAE the user loaded.

Text goes through ComfyUI's CLIPTextEncode, latents through its VAEEncode/VAEDecode, sampling through
``nodes.common_ksampler``; reference editing adds the encoded before image to the conditioning with
``node_helpers.conditioning_set_values(..., {"reference_latents": [latent]}, append=True)``, exactly as the
core ReferenceLatent node does. So every model family ComfyUI loads works, and the edit route is picked per
family.
"""

from __future__ import annotations

from PIL import Image

from ..core.generators.base import IMG2IMG, REFERENCE, TEXT_TO_IMAGE, GeneratorError, check_route
from ..core.messages import to_rgb
from .host import module
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
        self._negative_cond = None

    # -- the Generator protocol ---------------------------------------------------------------------------
    def text_to_image(self, prompt: str, *, width: int, height: int, seed: int) -> Image.Image:
        import torch

        ratio = self.vae.spacial_compression_encode()
        latent = torch.zeros([1, self.vae.latent_channels, max(1, height // ratio), max(1, width // ratio)])
        return self._sample(self._encode(prompt), {"samples": latent}, seed, 1.0, (width, height))

    def edit(self, before: Image.Image, prompt: str, *, seed: int) -> Image.Image:
        import torch

        before = to_rgb(before)
        if self.edit_route == TEXT_TO_IMAGE:
            return self.text_to_image(prompt, width=before.width, height=before.height, seed=seed)
        pixels = to_tensor([before])
        encoded = self._nodes().VAEEncode().encode(self.vae, pixels)[0]
        if self.edit_route == IMG2IMG:
            return self._sample(self._encode(prompt), encoded, seed, self.denoise, before.size)
        positive = self._encode_reference(prompt, pixels, encoded["samples"])
        empty = {"samples": torch.zeros_like(encoded["samples"])}
        return self._sample(positive, empty, seed, 1.0, before.size)

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

    def _encode_reference(self, prompt: str, pixels, latent):
        if self.family == QWEN_IMAGE:
            # Qwen-Image-Edit also reads the before image through its vision-language text encoder.
            qwen = module("comfy_extras.nodes_qwen")
            output = qwen.TextEncodeQwenImageEdit.execute(
                clip=self.clip, prompt=prompt, vae=self.vae, image=pixels
            )
            return self._with_guidance(output[0])
        return module("node_helpers").conditioning_set_values(
            self._encode(prompt), {"reference_latents": [latent]}, append=True
        )

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
