"""Export a trained agent as a plain model folder that ComfyUI (and the engine) loads.

    python -m interleave_thinker.training.export --model runs/critic-grpo/final \\
        --comfyui /path/to/ComfyUI --name interleave-critic

A LoRA adapter is merged into its base. The folder gets the weights in bf16 as safetensors shards of at most
5 GB, the processor with its chat template, and ``interleave_thinker.json`` (role, base model, training data,
code version). It is written under a temporary name beside the target and renamed into place, and every file
is made readable by other users (0644), so a ComfyUI server running under another account can load it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import BadInput
from ..core.files import replace_folder
from .config import code_version
from .models import ModelError, check_folder, is_adapter, load_model, load_processor
from .runs import RUN_INFO, UNSAFE_FILES, make_readable

log = logging.getLogger(__name__)

METADATA = "interleave_thinker.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class ExportError(BadInput):
    pass


def comfyui_target(comfyui: str | Path, name: str) -> Path:
    """``<ComfyUI>/models/LLM/<name>``, where the node pack looks for agent folders."""
    root = Path(comfyui).expanduser()
    if not (root / "models").is_dir():
        raise ExportError(f"{root} does not look like a ComfyUI folder: it has no models/ folder")
    if not _NAME_RE.match(name):
        raise ExportError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' only")
    return root / "models" / "LLM" / name


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in _TEMPLATE_FILES):
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("chat_template"):
                    return True
            except (OSError, ValueError):
                pass
    return False


def metadata(source: Path, dtype: str, shards: int) -> dict[str, Any]:
    run: dict[str, Any] = {}
    if (source / RUN_INFO).is_file():
        try:
            run = json.loads((source / RUN_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = {}
    if is_adapter(source) and not run.get("base_model"):
        adapter = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
        run["base_model"] = adapter.get("base_model_name_or_path")
    return {
        "role": run.get("role"),
        "base_model": run.get("base_model"),
        "training": run.get("history", []),
        "trained_with": run.get("code_version"),
        "exported_with": code_version(),
        "exported_from": str(source.resolve()),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": dtype,
        "shards": shards,
    }


def export_model(
    model: str | Path,
    out: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str = "bf16",
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a model or LoRA adapter folder) to ``out`` as described in the module docstring."""
    source = check_folder(model)
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another name or pass --overwrite")
    if out.resolve() == source.resolve():
        raise ExportError("the export folder must differ from the model folder")
    merged = load_model(source, dtype=dtype, base=base)
    processor = load_processor(source, base=base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        if not _has_chat_template(tmp):
            raise ExportError(
                f"the processor of {source} has no chat template; the agent could not be prompted"
            )
        for name in UNSAFE_FILES:
            (tmp / name).unlink(missing_ok=True)
        shards = len(list(tmp.glob("*.safetensors")))
        (tmp / METADATA).write_text(json.dumps(metadata(source, dtype, shards), indent=2), encoding="utf-8")
        make_readable(tmp)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Export a trained agent as a model folder for ComfyUI.")
    parser.add_argument(
        "--model", required=True, help="trained model or LoRA adapter folder (e.g. runs/x/final)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the folder to write")
    where.add_argument("--comfyui", help="a ComfyUI folder: writes models/LLM/<--name> inside it")
    parser.add_argument("--name", help="the model's folder name under models/LLM (with --comfyui)")
    parser.add_argument("--base", help="base model folder of a LoRA adapter (default: the one it records)")
    parser.add_argument(
        "--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="weights dtype (bf16)"
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    try:
        if args.comfyui:
            if not args.name:
                parser.error("--comfyui needs --name")
            target = comfyui_target(args.comfyui, args.name)
        else:
            target = Path(args.out)
        path = export_model(
            args.model,
            target,
            base=args.base,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except (ExportError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ExportError", "METADATA", "comfyui_target", "export_model"]
