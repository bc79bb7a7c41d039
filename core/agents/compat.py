"""Model folders saved by transformers 5, read by transformers 4.

The pack runs on transformers 4.57 (the first release with Qwen3-VL) up to 5.x. Released checkpoints load on
both. Folders saved by 5.x (the shipped sandbox agents, the training scripts' exports) spell two settings in a
way 4.x misreads: the tokenizer's extra special tokens as a list (4.x expects a mapping and fails to load),
and the text model's rotary settings as ``rope_parameters`` (4.x reads ``rope_theta`` and ``rope_scaling``
and would silently fall back to its own defaults: a different model). Under 5.x these helpers add nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def processor_kwargs(folder: Path) -> dict[str, Any]:
    """Extra ``AutoProcessor.from_pretrained`` arguments for ``folder`` under the installed transformers."""
    if transformers_major() >= 5:
        return {}
    extra = _json(folder / "tokenizer_config.json").get("extra_special_tokens")
    if isinstance(extra, list):
        return {"extra_special_tokens": {}, "additional_special_tokens": extra}
    return {}


def model_kwargs(folder: Path) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for the model in ``folder``: under transformers 4, a config whose
    rotary settings are copied from 5.x's ``rope_parameters`` to where 4.x reads them."""
    if transformers_major() >= 5 or "rope_parameters" not in json.dumps(_json(folder / "config.json")):
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    for part in (config, getattr(config, "text_config", None)):
        rope = getattr(part, "rope_parameters", None)
        if isinstance(rope, dict) and getattr(part, "rope_scaling", None) is None:
            part.rope_scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
            if "rope_theta" in rope:
                part.rope_theta = rope["rope_theta"]
    return {"config": config}
