"""ComfyUI IMAGE tensors ([batch, height, width, channels], float 0..1) to and from PIL images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_pil(images) -> list[Image.Image]:
    """Every image of an IMAGE batch as an RGB PIL image; None gives an empty list."""
    if images is None:
        return []
    array = images.detach().cpu().float().numpy()
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected an IMAGE batch [batch, height, width, channels], got shape {tuple(array.shape)}"
        )
    pixels = np.clip(
        255.0 * array[..., :3] if array.shape[-1] != 1 else 255.0 * np.repeat(array, 3, -1), 0, 255
    )
    return [Image.fromarray(frame.astype(np.uint8), "RGB") for frame in pixels]


def to_tensor(images: Sequence[Image.Image]):
    """An IMAGE batch from PIL images of one size; no images gives an empty batch."""
    import torch

    if not images:
        return torch.zeros((0, 64, 64, 3), dtype=torch.float32)
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise ValueError(f"images of different sizes ({listed}) cannot form one IMAGE batch")
    frames = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(frames))


def single(images, what: str) -> Image.Image:
    """The one picture of an IMAGE input, or a ValueError saying how many there were."""
    frames = to_pil(images)
    if len(frames) != 1:
        raise ValueError(
            f"the {what} must be one picture, got a batch of {len(frames)}; pick one with ImageFromBatch"
        )
    return frames[0]
