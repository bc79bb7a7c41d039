"""ComfyUI's own modules, reached only while a node runs.

The package must import without ComfyUI (unit tests, the CLI), and ComfyUI's top-level ``nodes`` module would
collide with this package's ``nodes`` folder under a plain import, so every ComfyUI module is looked up here
by its absolute name at call time.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..core.errors import BackendError, Cancelled, InterleaveThinkerError

LLM_FOLDER = "LLM"  # models/LLM: the VLM folders Load Agent lists
PREVIEW_SIZE = 512


class NodeError(InterleaveThinkerError, RuntimeError):
    """A problem the user can fix, worded for the node's error box."""

    # ComfyUI shows an error's type as ``module.ClassName``, and a pack loaded from custom_nodes has the
    # folder's path in its module names: one stable name instead, the same on every machine.
    __module__ = "InterleaveThinker"


@contextlib.contextmanager
def engine_errors(who: str = ""):
    """The one map from the engine's error tree to what a node shows: Cancel becomes ComfyUI's own interrupt,
    a backend failure says who could not answer, anything else the engine raised is shown as it is worded."""
    try:
        yield
    except Cancelled:
        raise_interrupted()
    except NodeError:
        raise
    except BackendError as error:
        raise NodeError(f"{who} could not answer: {error}" if who else str(error)) from None
    except InterleaveThinkerError as error:
        raise NodeError(str(error)) from None


def module(name: str):
    """ComfyUI's module ``name``: "comfy.model_management", "comfy.utils", "folder_paths", "nodes", ..."""
    return importlib.import_module(name)


def optional_module(name: str):
    """The module, or None outside ComfyUI (declarations still load; only running a node needs ComfyUI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- interrupt ----------------------------------------------------------------------------------------------


def interrupted() -> bool:
    """The engine's cancel hook: true once the user pressed Cancel in ComfyUI."""
    return bool(module("comfy.model_management").processing_interrupted())


def raise_interrupted():
    """Hand the stop back to ComfyUI as its own interrupt, so the run ends as "interrupted", not as an
    error."""
    mm = module("comfy.model_management")
    mm.throw_exception_if_processing_interrupted()
    raise mm.InterruptProcessingException()


# -- progress -----------------------------------------------------------------------------------------------


class Progress:
    """comfy.utils.ProgressBar with the node's previews: ("JPEG", PIL image, max size) is what ComfyUI
    sends."""

    def __init__(self, total: int):
        self.bar = module("comfy.utils").ProgressBar(max(1, total))

    def set(self, value: int, preview=None) -> None:
        self.bar.update_absolute(
            value, preview=("JPEG", preview, PREVIEW_SIZE) if preview is not None else None
        )


# -- model folders ------------------------------------------------------------------------------------------


def llm_folders() -> list[str]:
    """The models/LLM search paths, registered with folder_paths on first use (extra_model_paths.yaml adds
    more)."""
    folder_paths = optional_module("folder_paths")
    if folder_paths is None:
        return []
    default = os.path.join(folder_paths.models_dir, LLM_FOLDER)
    if default not in folder_paths.folder_names_and_paths.get(LLM_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(LLM_FOLDER, default)
    return folder_paths.get_folder_paths(LLM_FOLDER)


def list_agent_folders() -> list[str]:
    """Model folders (holding config.json) one or two levels under models/LLM, as "name" or "org/name"."""
    found: list[str] = []
    for base in llm_folders():
        root = Path(base)
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            if (child / "config.json").is_file():
                found.append(child.name)
                continue
            found += [
                f"{child.name}/{sub.name}"
                for sub in sorted(child.iterdir())
                if sub.is_dir() and (sub / "config.json").is_file()
            ]
    return list(dict.fromkeys(found))


def check_inside(name: str, what: str, where: str) -> list[str]:
    """The parts of ``name``, a path relative to the folder ``where`` that cannot leave it: no ``..``, no
    absolute path or drive (in POSIX or Windows spelling), nothing empty; a NodeError saying so otherwise."""
    text = str(name).strip()
    parts = [part for part in text.replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts:
        raise NodeError(f"{what} is empty: name something inside {where}")
    windows = PureWindowsPath(text)
    if ".." in parts or PurePosixPath(text).is_absolute() or windows.drive or windows.root:
        raise NodeError(f"{what} must stay inside {where}: no '..', no absolute path (got {name!r})")
    return parts


def check_agent_name(name: str) -> list[str]:
    """The parts of a Load Agent folder name, refused when it reaches outside models/LLM."""
    return check_inside(name or "", "model", f"models/{LLM_FOLDER} (choose a folder from the list)")


def find_agent_folder(name: str) -> Path:
    """The folder ``name`` under one of the models/LLM paths, or a NodeError naming where it looked."""
    parts = check_agent_name(name)
    bases = llm_folders()
    for base in bases:
        candidate = Path(base, *parts)
        if candidate.is_dir():
            return candidate
    looked = ", ".join(bases) or f"models/{LLM_FOLDER}"
    raise NodeError(
        f"model folder {name!r} not found; looked in {looked}. Put a Hugging Face VLM folder (with "
        f"config.json) there, or switch Load Agent to an OpenAI-compatible endpoint"
    )


def folder_fingerprint(folder: Path) -> str:
    """Sizes and modification times of every file in a model folder: it changes when a weight file does."""
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append(f"{path.relative_to(folder).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(entries)


def input_directory() -> Path:
    return Path(module("folder_paths").get_input_directory())


def output_directory() -> Path:
    return Path(module("folder_paths").get_output_directory())
