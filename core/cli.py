"""The command line: ``interleave-thinker run``, ``batch`` (and the sandbox's ``demo`` and ``eval``).

Exit codes: 0 done; 2 bad input (the message says what to fix); 3 a model or endpoint could not be used;
4 the Planner never produced a valid plan; 5 some stories of a batch failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BAD_INPUT, EXIT_BACKEND, EXIT_PLAN, EXIT_BATCH, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130


class UsageError(ValueError):
    """Bad input from the user; the message says what to fix."""


# ---------------------------------------------------------------------------------------------------------
# Arguments


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    agents = parser.add_argument_group("agents")
    agents.add_argument(
        "--planner",
        required=True,
        metavar="DIR|URL",
        help="Planner model folder, or an OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)",
    )
    agents.add_argument("--planner-model", metavar="NAME", help="model name served at the --planner URL")
    agents.add_argument(
        "--critic",
        default="same",
        metavar="DIR|URL|same|none",
        help="Critic model folder or URL; 'same' reuses the Planner, 'none' keeps every first "
        "attempt (default: same)",
    )
    agents.add_argument("--critic-model", metavar="NAME", help="model name served at the --critic URL")
    agents.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable that holds the endpoint's API key (never pass keys as arguments)",
    )
    agents.add_argument(
        "--max-new-tokens", type=int, default=2048, help="bound on each agent answer (default 2048)"
    )
    agents.add_argument(
        "--temperature", type=float, default=0.0, help="agent sampling temperature; 0 is greedy (default)"
    )
    agents.add_argument("--retries", type=int, default=3, help="HTTP retries per agent call (default 3)")
    agents.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout in seconds (default 120)")
    agents.add_argument(
        "--planner-template", metavar="FILE", help="your own Planner template (needs {text_input})"
    )
    agents.add_argument(
        "--critic-template",
        metavar="FILE",
        help="your own Critic template (needs {original_instruction} and {rewritten_prompt})",
    )

    gen = parser.add_argument_group("generator")
    gen.add_argument("--generator", required=True, metavar="DIR", help="diffusers pipeline folder")
    gen.add_argument(
        "--edit-route",
        default="auto",
        choices=("auto", "text-to-image", "img2img", "reference"),
        help="how later steps edit the previous image (default: auto, from the pipeline family)",
    )
    gen.add_argument("--steps", type=int, help="sampling steps (default: the pipeline's)")
    gen.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    gen.add_argument("--strength", type=float, default=0.6, help="img2img denoise strength (default 0.6)")
    gen.add_argument("--negative-prompt", help="negative prompt, where the pipeline takes one")
    gen.add_argument(
        "--cpu-offload", action="store_true", help="offload pipeline parts to the CPU between uses"
    )

    loop = parser.add_argument_group("loop")
    loop.add_argument(
        "--max-attempts", type=int, default=3, help="generations per step, retries included (1-10)"
    )
    loop.add_argument("--max-steps", type=int, default=12, help="longest plan accepted (1-64)")
    loop.add_argument("--planner-tries", type=int, default=3, help="Planner answers tried before giving up")
    loop.add_argument("--seed", type=int, default=0, help="one seed for the whole story (default 0)")
    loop.add_argument("--width", type=int, default=1024)
    loop.add_argument("--height", type=int, default=1024)
    loop.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "narrative", "guidance"),
        help="Planner mode (auto: guidance when images are given)",
    )
    loop.add_argument(
        "--fallback-single-step",
        action="store_true",
        help="if the Planner never gives a valid plan, draw the instruction as one step",
    )
    loop.add_argument(
        "--no-check-last", action="store_true", help="keep the last attempt without asking the Critic"
    )

    device = parser.add_argument_group("device")
    device.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    device.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    device.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interleave-thinker",
        description="Interleaved text-image storyboards: a Planner plans, a diffusion model draws, a Critic checks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="make one storyboard", description="Plan, draw and check one story.")
    run.add_argument("instruction", help="what to illustrate; mark where input images stand with <image>")
    run.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="an input image (repeatable)"
    )
    run.add_argument("--out", required=True, metavar="DIR", help="storyboard folder to write")
    run.add_argument("--overwrite", action="store_true", help="replace an existing storyboard folder")
    _add_model_options(run)

    batch = sub.add_parser(
        "batch",
        help="make many storyboards, resumably",
        description="One storyboard per story. A rerun skips finished stories.",
    )
    batch.add_argument(
        "stories",
        metavar="STORIES",
        help="a text file (one instruction a line) or JSONL (instruction, images, seed, id)",
    )
    batch.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the storyboards and index.html"
    )
    _add_model_options(batch)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other parts of the package (the sandbox demo and eval) add their subcommands here.
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


# ---------------------------------------------------------------------------------------------------------
# Building the models


def loop_config(args: argparse.Namespace, seed: int | None = None):
    from .loop import LoopConfig

    try:
        return LoopConfig(
            max_attempts=args.max_attempts,
            max_steps=args.max_steps,
            planner_tries=args.planner_tries,
            seed=args.seed if seed is None else seed,
            width=args.width,
            height=args.height,
            mode=args.mode,
            fallback_single_step=args.fallback_single_step,
            check_last_attempt=not args.no_check_last,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check_model_spec(option: str, spec: str, model: str | None, marker: str) -> None:
    from .agents import is_url

    if is_url(spec):
        if not model:
            raise UsageError(f"{option} is a URL: name the served model with {option}-model")
        return
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{option}: folder not found: {folder}")
    if not (folder / marker).is_file():
        raise UsageError(f"{option}: {folder} has no {marker}; point it at a model folder")


def check_args(args: argparse.Namespace) -> None:
    """Everything checkable before a model is loaded, so bad input fails in a second, not after loading."""
    loop_config(args)
    _check_model_spec("--planner", args.planner, args.planner_model, "config.json")
    if args.critic not in ("same", "none"):
        _check_model_spec("--critic", args.critic, args.critic_model, "config.json")
    _check_generator_spec(args.generator)
    if not 1 <= args.max_new_tokens <= 32768:
        raise UsageError(f"--max-new-tokens must be between 1 and 32768, got {args.max_new_tokens}")
    if args.retries < 0 or args.timeout <= 0:
        raise UsageError("--retries must be >= 0 and --timeout > 0")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if not 0 < args.strength <= 1:
        raise UsageError(f"--strength must be in (0, 1], got {args.strength}")
    for option in ("planner_template", "critic_template"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise UsageError(f"--{option.replace('_', '-')}: file not found: {path}")
    if args.api_key_env and not os.environ.get(args.api_key_env):
        raise UsageError(f"--api-key-env: environment variable {args.api_key_env} is not set")


_GENERATOR_SPECS: dict[str, Callable[[argparse.Namespace], Any]] = {}


def register_generator(name: str, factory: Callable[[argparse.Namespace], Any]) -> None:
    """Let a named generator (the sandbox) stand where a pipeline folder would."""
    _GENERATOR_SPECS[name] = factory


def _check_generator_spec(spec: str) -> None:
    if spec in _GENERATOR_SPECS:
        return
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--generator: folder not found: {folder}")
    if not (folder / "model_index.json").is_file():
        raise UsageError(
            f"--generator: {folder} has no model_index.json; point it at a diffusers pipeline folder"
        )


@dataclass
class Models:
    planner: Any
    critic: Any
    generator: Any
    planner_template: Any = None
    critic_template: Any = None
    names: dict[str, str] = field(default_factory=dict)


def load_models(args: argparse.Namespace) -> Models:
    from .agents import Decoding, load_agent
    from .agents.openai_agent import OpenAIAgent
    from .generators.diffusers_generator import DiffusersGenerator
    from .prompts import load_template

    decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.quiet:  # the libraries' own loading bars too
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

    def agent(spec: str, model: str | None):
        if spec.lower().startswith(("http://", "https://")):
            return OpenAIAgent(
                spec,
                model or "",
                api_key_env=args.api_key_env,
                decoding=decoding,
                timeout=args.timeout,
                retries=args.retries,
            )
        return load_agent(spec, decoding=decoding, dtype=args.dtype, device=args.device)

    planner = agent(args.planner, args.planner_model)
    critic = (
        None
        if args.critic == "none"
        else planner
        if args.critic == "same"
        else agent(args.critic, args.critic_model)
    )
    if args.generator in _GENERATOR_SPECS:
        generator = _GENERATOR_SPECS[args.generator](args)
    else:
        generator = DiffusersGenerator(
            args.generator,
            edit_route=args.edit_route,
            steps=args.steps,
            guidance=args.guidance,
            strength=args.strength,
            negative_prompt=args.negative_prompt,
            dtype=args.dtype,
            device=args.device,
            cpu_offload=args.cpu_offload,
        )
    return Models(
        planner=planner,
        critic=critic,
        generator=generator,
        planner_template=load_template(
            args.mode if args.mode != "auto" else "narrative", args.planner_template
        )
        if args.planner_template
        else None,
        critic_template=load_template("critic", args.critic_template) if args.critic_template else None,
    )


def load_images(paths: Sequence[str | Path]):
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.convert("RGB"))
        except FileNotFoundError:
            raise UsageError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise UsageError(f"cannot read image {path}: {error}; use a PNG, JPEG or WebP file") from None
    return images


# ---------------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A tqdm bar over the steps of one story, with the current step and attempt in its postfix."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled
        self.bar = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        kind = event.kind
        if kind == "PlanReady":
            self.bar = tqdm(
                total=len(event.plan.steps),
                desc=self.label,
                unit="step",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        elif self.bar is None:
            return
        elif kind == "AttemptStarted":
            self.bar.set_postfix_str(f"step {event.step_index + 1} attempt {event.attempt}")
        elif kind == "StepDone":
            self.bar.update(1)
            if event.step_index + 1 == event.total_steps:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------------------
# Commands


def run_one(models: Models, instruction: str, images, config, progress: Progress):
    from .loop import run_story

    try:
        return run_story(
            instruction,
            models.planner,
            models.generator,
            models.critic,
            images=images,
            config=config,
            planner_template=models.planner_template,
            critic_template=models.critic_template,
            on_event=progress,
        )
    finally:
        progress.close()


def cmd_run(args: argparse.Namespace) -> int:
    instruction = args.instruction.strip()
    if not instruction:
        raise UsageError("the instruction is empty; say what to illustrate")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out} already exists; choose a new folder or pass --overwrite")
    check_args(args)
    images = load_images(args.image)
    _check_markers(instruction, len(images))
    config = loop_config(args)
    models = load_models(args)
    story = run_one(models, instruction, images, config, Progress("story", not args.quiet))
    story.save(out, overwrite=args.overwrite)
    print(f"{len(story.steps)} steps, {len(story.attempts)} images -> {out / 'index.html'}")
    return EXIT_OK


def _check_markers(instruction: str, image_count: int) -> None:
    from .messages import count_markers

    markers = count_markers(instruction)
    if markers and markers != image_count:
        raise UsageError(f"the instruction has {markers} <image> marker(s) but {image_count} --image file(s)")


@dataclass
class StoryItem:
    id: str
    instruction: str
    images: list[str]
    seed: int | None
    where: str
    error: str = ""


def read_stories(path: str | Path) -> list[StoryItem]:
    """Stories from a text file (one instruction a line, # comments) or JSONL; bad rows carry their error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"stories file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read stories file {path}: {error}") from None
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
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
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                item.instruction = str(row.get("instruction", "")).strip()
                images = row.get("images", [])
                if isinstance(images, str) or not isinstance(images, list):
                    raise ValueError("'images' must be a list of paths")
                item.images = [str(path.parent / p) for p in images]
                seed = row.get("seed")
                if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
                    raise ValueError("'seed' must be a non-negative integer")
                item.seed = seed
                item.id = _safe_id(str(row["id"])) if row.get("id") is not None else ""
            except (ValueError, TypeError) as error:
                item.error = f"{where}: {error}"
        if not item.error and not item.instruction:
            item.error = f"{where}: the instruction is empty"
        base = item.id or _story_id(item)
        item.id, suffix = base, 2
        while item.id in used:
            item.id, suffix = f"{base}-{suffix}", suffix + 1
        used.add(item.id)
        items.append(item)
    if not items:
        raise UsageError(f"{path} holds no stories")
    return items


def _safe_id(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80]
    if not slug:
        raise ValueError("'id' has no usable characters")
    return slug


def _story_id(item: StoryItem) -> str:
    """Stable across reruns and edits of other lines: a slug of the instruction and a hash of the inputs."""
    slug = re.sub(r"[^a-z0-9]+", "-", item.instruction.lower()).strip("-")[:40].strip("-") or "story"
    digest = hashlib.sha1(json.dumps([item.instruction, item.images, item.seed]).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def cmd_batch(args: argparse.Namespace) -> int:
    from .storyboard import FILENAME, Storyboard

    check_args(args)
    items = read_stories(args.stories)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):  # a story cut off half-way is redone from its start
        shutil.rmtree(stale, ignore_errors=True)
    todo = [item for item in items if not item.error and not (out / item.id / FILENAME).is_file()]
    models = load_models(args) if todo else None
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(items, desc="stories", unit="story", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    for item in bar:
        folder = out / item.id
        record = {"id": item.id, "instruction": item.instruction, "where": item.where}
        if item.error:
            record.update(status="failed", error=item.error)
        elif (folder / FILENAME).is_file():
            record.update(status="done")
        else:
            try:
                images = load_images(item.images)
                _check_markers(item.instruction, len(images))
                config = loop_config(args, seed=item.seed)
                story = run_one(
                    models, item.instruction, images, config, Progress(item.id[:24], not args.quiet)
                )
                story.story_id = item.id
                story.save(folder)
                record.update(status="done")
            except KeyboardInterrupt:
                raise
            except Exception as error:  # one bad story is reported and the batch goes on
                record.update(status="failed", error=f"{item.where}: {_one_line(error)}")
        if record["status"] == "failed":
            tqdm.write(f"failed: {record['error']}", file=sys.stderr)
        results[item.id] = record
        write_batch_index(out, [results.get(i.id) or _pending(i) for i in items], Storyboard)
    failed = [r for r in results.values() if r["status"] == "failed"]
    print(f"{len(items) - len(failed)} of {len(items)} stories done -> {out / 'index.html'}")
    return EXIT_BATCH if failed else EXIT_OK


def _pending(item: StoryItem) -> dict[str, Any]:
    return {"id": item.id, "instruction": item.instruction, "where": item.where, "status": "pending"}


def write_batch_index(out: Path, records: list[dict[str, Any]], storyboard_class) -> None:
    """``batch.json`` and ``index.html`` linking every story, each written atomically."""
    e = html.escape
    rows = []
    for record in records:
        link = f"{record['id']}/index.html"
        thumb = ""
        first = out / record["id"] / "steps"
        if record["status"] == "done" and first.is_dir():
            pngs = sorted(first.glob("*.png"))
            if pngs:
                thumb = f'<img src="{e(record["id"])}/steps/{e(pngs[0].name)}" alt="">'
        detail = e(record.get("error", "")) if record["status"] == "failed" else ""
        title = (
            f'<a href="{e(link)}">{e(record["instruction"])}</a>'
            if record["status"] == "done"
            else e(record["instruction"])
        )
        rows.append(
            f'<tr class="{e(record["status"])}"><td>{thumb}</td><td>{title}<div class=err>{detail}</div>'
            f"</td><td>{e(record['status'])}</td></tr>"
        )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Storyboards</title><style>"
        "body{font:16px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;width:100%}td{border-top:1px solid #ddd;padding:.5em;vertical-align:top}"
        "img{width:96px;border-radius:6px}.failed td{background:#fff3f2}.err{color:#a11;font-size:.85em}"
        f"</style></head><body><h1>Storyboards</h1><p>{sum(r['status'] == 'done' for r in records)} of "
        f"{len(records)} done</p><table>{''.join(rows)}</table></body></html>"
    )
    atomic_write_text(out / "index.html", page)
    atomic_write_text(out / "batch.json", json.dumps(records, indent=2, ensure_ascii=False))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    _load_extensions()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .agents.base import AgentError
    from .generators.base import GeneratorError
    from .loop import Cancelled
    from .messages import MessageError
    from .prompts import TemplateError
    from .protocol import ProtocolError
    from .storyboard import StoryboardError

    try:
        return (
            args.handler(args)
            if hasattr(args, "handler")
            else {"run": cmd_run, "batch": cmd_batch}[args.command](args)
        )
    except (UsageError, MessageError, TemplateError, StoryboardError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    except (AgentError, GeneratorError) as error:
        return _fail(error, EXIT_BACKEND)
    except ProtocolError as error:
        return _fail(error, EXIT_PLAN)
    except (KeyboardInterrupt, Cancelled):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(error: BaseException, code: int) -> int:
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return code


def _load_extensions() -> None:
    """Import the parts of the package that add subcommands or named generators."""
    try:
        from .. import sandbox  # noqa: F401  (registers demo, eval and the sandbox generator)
    except ImportError as error:
        if "sandbox" not in str(error):
            raise


if __name__ == "__main__":
    raise SystemExit(main())
