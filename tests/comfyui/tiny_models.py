"""Build tiny random-weight checkpoints that a stock ComfyUI loads, detects and samples with.

Run with the Python of the ComfyUI install (ComfyUI's own classes define the architectures, so the keys are
exactly the ones its loaders expect):

    python tests/comfyui/tiny_models.py --comfyui COMFYUI_PATH --models BASE/models

Writes, all seeded and deterministic:
- checkpoints/tiny_sd15.safetensors: a one-level SD1.5-shaped UNet (detected as SD15), a full-size CLIP-L text
  model and a TAESD VAE.
- diffusion_models/tiny_flux.safetensors: a FLUX-shaped DiT with one double block (detected as Flux; it
  honours reference latents), text_encoders/tiny_clip_l.safetensors (CLIPLoader type "sd3") and
  vae/tiny_taef1.safetensors (a 16-channel TAESD).

Weights are random, so images are noise; the loaders must report no missing keys, and the decoders are scaled
so pictures are neither black nor flat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SD15_CHECKPOINT = "tiny_sd15.safetensors"
FLUX_UNET = "tiny_flux.safetensors"
CLIP_L = "tiny_clip_l.safetensors"
TAEF1 = "tiny_taef1.safetensors"


def _init_weights(module, seed: int) -> None:
    """ComfyUI's layers skip initialisation; run torch.nn's own initialisers in a fixed order instead."""
    import torch

    torch.manual_seed(seed)
    done = set()
    for sub in module.modules():
        for cls in type(sub).__mro__:
            if cls.__module__.startswith("torch.nn.") and "reset_parameters" in cls.__dict__:
                cls.reset_parameters(sub)
                done.update(id(p) for p in sub.parameters(recurse=False))
                break
    with torch.no_grad():
        for name, param in module.named_parameters():
            if id(param) in done:
                continue
            if name.endswith("scale"):  # ComfyUI's own norms (RMSNorm) start from empty memory
                param.fill_(1.0)
            elif not torch.isfinite(param).all():
                raise RuntimeError(f"{name} was not initialised")


def _save(state: dict, path: Path, dtype) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to(dtype).contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)
    os.chmod(path, 0o644)


def clip_l_state(seed: int) -> dict:
    """ComfyUI's CLIP-L text model (the one SD1.5 and SD3/Flux loaders build) with its projection."""
    import comfy.clip_model
    import comfy.ops
    import torch

    config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
    model = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    _init_weights(model, seed)
    with torch.no_grad():  # the checkpoint stores integer positions
        state = model.state_dict()
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return state


def taesd_state(latent_channels: int, seed: int) -> dict:
    import comfy.taesd.taesd
    import torch

    model = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    _init_weights(model, seed)
    with torch.no_grad():
        # Random convolutions shrink the signal layer after layer: rescale the last convolutions so a decoded
        # latent lands around mid-grey with visible contrast, and an encoded image has unit-ish latents.
        probe = torch.randn(1, latent_channels, 8, 8, generator=torch.Generator().manual_seed(seed))
        decoder_last = model.taesd_decoder[-1]
        out = model.taesd_decoder(probe)
        decoder_last.weight.mul_(0.25 / out.std().clamp_min(1e-6))
        decoder_last.bias.fill_(0.5)
        encoder_last = model.taesd_encoder[-1]
        latent = model.taesd_encoder(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))
        encoder_last.weight.mul_(1.0 / latent.std().clamp_min(1e-6))
        encoder_last.bias.zero_()
    return model.state_dict()


def sd15_unet_state(seed: int) -> dict:
    import comfy.supported_models
    import torch

    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [1],
        "transformer_depth": [1],
        "transformer_depth_output": [1, 1],
        "channel_mult": [1],
        "transformer_depth_middle": -2,
        "use_linear_in_transformer": False,
        "context_dim": 768,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    _init_weights(model.diffusion_model, seed)
    return {f"model.diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()}


def flux_state(seed: int) -> dict:
    import comfy.supported_models
    import torch

    unet_config = {
        "image_model": "flux",
        "in_channels": 16,
        "patch_size": 2,
        "out_channels": 16,
        "vec_in_dim": 2048,
        "context_in_dim": 4096,
        "hidden_size": 3072,
        "mlp_ratio": 4.0,
        "num_heads": 24,
        "depth": 1,
        "depth_single_blocks": 0,
        "axes_dim": [16, 56, 56],
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": True,
    }
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    _init_weights(model.diffusion_model, seed)
    return model.diffusion_model.state_dict()


def check_detection(state: dict, prefix: str, expected: str) -> None:
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(state, prefix)
    name = type(config).__name__ if config is not None else None
    if name != expected:
        raise RuntimeError(f"ComfyUI detects the tiny model as {name}, expected {expected}")


def build(models: Path, seed: int = 0, flux: bool = True) -> list[Path]:
    import torch

    written = []
    unet = sd15_unet_state(seed)
    check_detection(unet, "model.diffusion_model.", "SD15")
    checkpoint = dict(unet)
    checkpoint.update({f"first_stage_model.{k}": v for k, v in taesd_state(4, seed + 1).items()})
    clip = clip_l_state(seed + 2)
    checkpoint.update(
        {
            f"cond_stage_model.transformer.{k}": v
            for k, v in clip.items()
            if not k.startswith("text_projection")
        }
    )
    path = models / "checkpoints" / SD15_CHECKPOINT
    _save(checkpoint, path, torch.float16)
    written.append(path)
    del checkpoint, unet
    if flux:
        path = models / "text_encoders" / CLIP_L
        _save(clip, path, torch.float16)
        written.append(path)
        path = models / "vae" / TAEF1
        _save(taesd_state(16, seed + 3), path, torch.float16)
        written.append(path)
        state = flux_state(seed + 4)
        check_detection(state, "", "Flux")
        path = models / "diffusion_models" / FLUX_UNET
        _save(state, path, torch.float16)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder (holds main.py)")
    parser.add_argument("--models", required=True, help="the models folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flux", action="store_true", help="only the SD1.5 checkpoint")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(args.comfyui).resolve()))
    import comfy.options

    comfy.options.enable_args_parsing()  # ComfyUI's modules read their own command line: build on the CPU
    sys.argv = sys.argv[:1] + ["--cpu"]
    for path in build(Path(args.models), args.seed, flux=not args.no_flux):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
