"""Writing files and folders so that a reader never sees half of one: write under a temporary name, then
rename."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer picks (a rename within one folder is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing an old one without a moment of absence."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["atomic_write_text", "replace_folder", "temporary_name"]
