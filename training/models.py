"""Loading the agents for training: local folders only, LoRA adapters merged, the vision tower frozen on
request."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..core.errors import BadInput

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# Where image-text-to-text models keep their vision encoder (and its projector), newest layouts first.
VISION_MODULES = (
    "model.visual",
    "visual",
    "model.vision_tower",
    "vision_tower",
    "model.vision_model",
    "vision_model",
    "model.multi_modal_projector",
    "multi_modal_projector",
)
# The language model's linear layers; a regex so that LoRA never lands in the vision tower's own projections.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class ModelError(BadInput):
    pass


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> Path:
    """The base model folder a LoRA adapter was trained on, as its adapter_config.json records it."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ModelError(
            f"{folder} is a LoRA adapter whose base model {base!r} is not a local folder; "
            "pass the base folder"
        )
    return Path(base)


def check_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder} (training reads local folders only)")
    if not (folder / "config.json").is_file() and not is_adapter(folder):
        raise ModelError(f"{folder} is not a model folder: it has neither config.json nor {ADAPTER_CONFIG}")
    return folder


def torch_dtype(name: str, device: str = "cpu"):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ModelError(f"unknown dtype {name!r}; choose auto, bf16, fp16 or fp32")
    return table[name]


def default_device() -> str:
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def load_model(path: str | Path, *, dtype: str = "auto", base: str | Path | None = None):
    """An image-text-to-text model from ``path``; a LoRA adapter folder is merged into its base first."""
    from transformers import AutoModelForImageTextToText

    # An absolute path, so that a LoRA adapter trained on this model records where its base is.
    folder = check_folder(path).resolve()
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype(dtype, default_device())}
    if not is_adapter(folder):
        return AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
    from peft import PeftModel

    base_folder = check_folder(base) if base else adapter_base(folder)
    model = AutoModelForImageTextToText.from_pretrained(base_folder, **kwargs)
    return PeftModel.from_pretrained(model, folder, local_files_only=True).merge_and_unload()


def load_processor(path: str | Path, *, base: str | Path | None = None, padding_side: str | None = None):
    """The processor saved with the model (an adapter folder saved one too), else the base model's."""
    from transformers import AutoProcessor

    folder = check_folder(path)
    source = folder
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if is_adapter(folder) and not has_tokenizer:
        source = check_folder(base) if base else adapter_base(folder)
    processor = AutoProcessor.from_pretrained(source, local_files_only=True)
    if padding_side:
        processor.tokenizer.padding_side = padding_side
    return processor


def vision_module(model):
    for name in VISION_MODULES:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    return None


def freeze_vision(model) -> int:
    """Stop training the vision encoder and its projector; returns how many parameters were frozen."""
    module = vision_module(model)
    if module is None:
        raise ModelError(
            f"{type(model).__name__} has no vision module to freeze (looked for {', '.join(VISION_MODULES)})"
        )
    count = 0
    for parameter in module.parameters():
        parameter.requires_grad_(False)
        count += parameter.numel()
    return count


def lora_config(r: int, alpha: int, dropout: float, target_modules: str | list[str] | None, *, vision: bool):
    """A LoRA config for the language model (and the vision tower's linear layers when ``vision``)."""
    from peft import LoraConfig

    if target_modules is None:
        target_modules = "all-linear" if vision else LANGUAGE_LORA_TARGETS
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


__all__ = [
    "LANGUAGE_LORA_TARGETS",
    "ModelError",
    "adapter_base",
    "check_folder",
    "freeze_vision",
    "is_adapter",
    "load_model",
    "load_processor",
    "lora_config",
    "parameter_counts",
    "torch_dtype",
    "vision_module",
]
