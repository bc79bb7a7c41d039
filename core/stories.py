"""Stories files: one instruction a line (``#`` comments), or JSONL rows ``{"id", "instruction", "images",
"references", "seed"}``.

A stories file is data, possibly from someone else: a row's images and references must stay inside the file's
folder, and its
id becomes a folder name, so it is reduced to safe characters. A bad row carries its error; the other rows
run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput

STORY_FILE_SUFFIXES = (".txt", ".jsonl", ".ndjson")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class StoryItem:
    id: str
    instruction: str
    images: list[str]
    seed: int | None
    where: str  # file:line, for messages
    error: str = ""
    references: list[str] = field(default_factory=list)  # pictures that hold the cast: the generator's


def read_stories(path: str | Path) -> list[StoryItem]:
    """Stories from a text file or JSONL; bad rows carry their error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(f"stories file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"cannot read stories file {path}: {error}") from None
    jsonl = path.suffix.lower() in _JSONL_SUFFIXES
    items: list[StoryItem] = []
    used: set[str] = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or (not jsonl and line.startswith("#")):
            continue
        where = f"{path}:{number}"
        item = StoryItem(id="", instruction=line, images=[], seed=None, where=where)
        if jsonl:
            try:
                _fill_from_row(item, json.loads(line), path.parent)
            except (ValueError, TypeError) as error:
                item.error = f"{where}: {error}"
        if not item.error and not item.instruction:
            item.error = f"{where}: the instruction is empty"
        base = item.id or story_id(item)
        item.id, suffix = base, 2
        while item.id in used:
            item.id, suffix = f"{base}-{suffix}", suffix + 1
        used.add(item.id)
        items.append(item)
    if not items:
        raise BadInput(f"{path} holds no stories")
    return items


def _fill_from_row(item: StoryItem, row, folder: Path) -> None:
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    item.instruction = str(row.get("instruction", "")).strip()
    item.images = _paths(row, "images", folder)  # as given: the story's id hashes these
    item.references = _paths(row, "references", folder)
    seed = row.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError("'seed' must be a non-negative integer")
    item.seed = seed
    item.id = safe_id(str(row["id"])) if row.get("id") is not None else ""


def _paths(row: dict, key: str, folder: Path) -> list[str]:
    names = row.get(key, [])
    if isinstance(names, str) or not isinstance(names, list):
        raise ValueError(f"'{key}' must be a list of paths")
    for name in names:
        inside(folder, str(name), "an image")
    return [str(folder / name) for name in names]


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused when ``name`` is absolute or climbs out of ``folder`` (``..``, links)."""
    if Path(name).is_absolute() or Path(name).drive:
        raise ValueError(f"{what} path must be relative to {folder.name or folder}, got {name!r}")
    root = folder.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{what} path {name!r} leaves the folder {folder.name or folder}")
    return target


# The batch's own files in its --out; a story folder must not take their names.
BATCH_INDEX, BATCH_JSON, BATCH_LOCK = "index.html", "batch.json", "batch.lock"
_RESERVED_IDS = {BATCH_INDEX, BATCH_JSON, BATCH_LOCK}


def safe_id(text: str) -> str:
    """A story id usable as a folder name on every system."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80]
    if not slug:
        raise ValueError("'id' has no usable characters")
    if slug.lower() in _RESERVED_IDS:
        raise ValueError(f"'id' {text!r} is the name of a batch file; choose another")
    return slug


def story_id(item: StoryItem) -> str:
    """Stable across reruns and edits of other lines: a slug of the instruction and a hash of the inputs."""
    slug = re.sub(r"[^a-z0-9]+", "-", item.instruction.lower()).strip("-")[:40].strip("-") or "story"
    inputs = [item.instruction, item.images, item.seed] + ([item.references] if item.references else [])
    digest = hashlib.sha1(json.dumps(inputs).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


__all__ = [
    "BATCH_INDEX",
    "BATCH_JSON",
    "BATCH_LOCK",
    "STORY_FILE_SUFFIXES",
    "StoryItem",
    "inside",
    "read_stories",
    "safe_id",
    "story_id",
]
