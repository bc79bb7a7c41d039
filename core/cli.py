"""The engine's command line: ``run`` and ``batch``, as :class:`Command` objects.

The ``interleave-thinker`` program (``interleave_thinker/cli.py``) is built from an explicit list of commands:
these, plus the sandbox's ``demo`` and ``eval``; this module knows nothing of them.

Exit codes (:func:`exit_code`, from the error tree in ``errors``): 0 done; 2 bad input (the message says what
to fix); 3 a model or endpoint could not be used; 4 the Planner never produced a valid plan; 5 some stories of
a batch failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .errors import BackendError, BadInput, Cancelled, InterleaveThinkerError
from .files import FolderLock, FolderLocked, atomic_write_text, check_writable, remove
from .pages import badge, escape, page
from .protocol import ProtocolError
from .settings import BadSetting
from .stories import BATCH_INDEX, BATCH_JSON, BATCH_LOCK, StoryItem, read_stories

EXIT_OK, EXIT_BAD_INPUT, EXIT_BACKEND, EXIT_PLAN, EXIT_BATCH, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130
# The one map from the error tree to exit codes; the first matching branch wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ProtocolError, EXIT_PLAN),
    (BadInput, EXIT_BAD_INPUT),
    (BackendError, EXIT_BACKEND),
    (Cancelled, EXIT_INTERRUPTED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)


def exit_code(error: BaseException) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_BACKEND


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help, how it adds its arguments, and what runs it (returns an exit
    code)."""

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# A named generator (``--generator sandbox``) stands where a pipeline folder would; it is built from the args.
GeneratorFactory = Callable[[argparse.Namespace], Any]


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
        "--max-new-tokens",
        type=int,
        default=settings.DEFAULT_MAX_NEW_TOKENS,
        help=f"bound on each agent answer (default {settings.DEFAULT_MAX_NEW_TOKENS})",
    )
    agents.add_argument(
        "--temperature",
        type=float,
        default=settings.DEFAULT_TEMPERATURE,
        help="agent sampling temperature; 0 is greedy (default)",
    )
    agents.add_argument(
        "--retries",
        type=int,
        default=settings.DEFAULT_HTTP_RETRIES,
        help=f"HTTP retries per agent call (default {settings.DEFAULT_HTTP_RETRIES})",
    )
    agents.add_argument(
        "--timeout",
        type=float,
        default=settings.DEFAULT_HTTP_TIMEOUT,
        help="the most seconds one agent call over HTTP may take, retries included "
        f"(default {settings.DEFAULT_HTTP_TIMEOUT:g})",
    )
    agents.add_argument(
        "--planner-template", metavar="FILE", help="your own Planner template (needs {text_input})"
    )
    agents.add_argument(
        "--critic-template",
        metavar="FILE",
        help="your own Critic template (needs {original_instruction} and {rewritten_prompt})",
    )

    from .generators.base import EDIT_ROUTE_CHOICES

    gen = parser.add_argument_group("generator")
    gen.add_argument("--generator", required=True, metavar="DIR", help="diffusers pipeline folder")
    gen.add_argument(
        "--edit-route",
        default="auto",
        choices=EDIT_ROUTE_CHOICES,
        help="how later steps edit the previous image (default: auto, from the pipeline family)",
    )
    gen.add_argument("--steps", type=int, help="sampling steps (default: the pipeline's)")
    gen.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    gen.add_argument(
        "--strength",
        type=float,
        default=settings.DEFAULT_STRENGTH,
        help=f"img2img denoise strength (default {settings.DEFAULT_STRENGTH})",
    )
    gen.add_argument("--negative-prompt", help="negative prompt, where the pipeline takes one")
    gen.add_argument(
        "--cpu-offload", action="store_true", help="offload pipeline parts to the CPU between uses"
    )

    loop = parser.add_argument_group("loop")
    loop.add_argument(
        "--max-attempts",
        type=int,
        default=settings.DEFAULT_MAX_ATTEMPTS,
        help=f"generations per step, retries included (1-{settings.MAX_ATTEMPTS_LIMIT}, "
        f"default {settings.DEFAULT_MAX_ATTEMPTS})",
    )
    loop.add_argument(
        "--max-steps",
        type=int,
        default=settings.DEFAULT_MAX_STEPS,
        help=f"longest plan accepted (1-{settings.MAX_PLAN_STEPS}, default {settings.DEFAULT_MAX_STEPS})",
    )
    loop.add_argument(
        "--planner-tries",
        type=int,
        default=settings.DEFAULT_PLANNER_TRIES,
        help=f"Planner answers tried before giving up (default {settings.DEFAULT_PLANNER_TRIES})",
    )
    loop.add_argument(
        "--seed",
        type=int,
        default=settings.DEFAULT_SEED,
        help=f"one seed for the whole story (default {settings.DEFAULT_SEED})",
    )
    loop.add_argument("--width", type=int, default=settings.DEFAULT_SIZE)
    loop.add_argument("--height", type=int, default=settings.DEFAULT_SIZE)
    loop.add_argument(
        "--mode",
        default=settings.DEFAULT_MODE,
        choices=settings.MODES,
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
    device.add_argument("--device", default=settings.DEFAULT_DEVICE, help="auto, cpu, cuda, cuda:1, mps")
    device.add_argument("--dtype", default="auto", choices=settings.DTYPES)
    device.add_argument(
        "--quantize",
        default=settings.DEFAULT_QUANTIZATION,
        choices=settings.QUANTIZATIONS,
        help="store a local agent's linear layers in 8 bits (int8) or 4 bits (nf4) with bitsandbytes; "
        "the rest stays in --dtype (an 8B Planner takes about 6 GB at nf4)",
    )
    device.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interleave-thinker",
        description="Interleaved text-image storyboards: a Planner plans, a diffusion model draws, "
        "a Critic checks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.description)
        command.configure(child)
        child.set_defaults(handler=command.run)
    return parser


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
    except BadSetting as error:  # name the option, not the field
        raise error.named(option_name(error.setting)) from None


def option_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def check_agent_options(args: argparse.Namespace) -> None:
    """The agent options every command shares: decoding bounds and the key variable."""
    settings.check_range("--max-new-tokens", args.max_new_tokens, 1, settings.MAX_NEW_TOKENS_LIMIT)
    if getattr(args, "api_key_env", None) and not os.environ.get(args.api_key_env):
        raise BadInput(f"--api-key-env: environment variable {args.api_key_env} is not set")


def endpoint_policy(args: argparse.Namespace, *specs: str | None):
    """What the machine allows, plus what the person typing the command named: their own URL flags and
    ``--api-key-env`` are trusted. Stories files and storyboards never reach this."""
    from .agents import is_url
    from .endpoints import EndpointPolicy

    urls = [spec for spec in specs if spec and is_url(spec)]
    return EndpointPolicy.machine().allow(endpoints=urls, key_envs=[getattr(args, "api_key_env", None)])


def _check_agent(option: str, spec: str, model: str | None) -> None:
    from .agents import check_agent_spec

    try:
        check_agent_spec(spec, model)
    except BadInput as error:
        raise BadInput(f"{option}: {error}") from None


def check_args(args: argparse.Namespace, generators: Mapping[str, GeneratorFactory]) -> None:
    """Everything checkable before a model is loaded, so bad input fails in a second, not after loading."""
    loop_config(args)
    check_agent_options(args)
    _check_agent("--planner", args.planner, args.planner_model)
    if args.critic not in ("same", "none"):
        _check_agent("--critic", args.critic, args.critic_model)
    _check_generator_spec(args.generator, generators)
    if args.retries < 0 or args.timeout <= 0:
        raise BadInput("--retries must be >= 0 and --timeout > 0")
    if args.steps is not None and args.steps < 1:
        raise BadInput(f"--steps must be at least 1, got {args.steps}")
    if not 0 < args.strength <= 1:
        raise BadInput(f"--strength must be in (0, 1], got {args.strength}")
    for option in ("planner_template", "critic_template"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise BadInput(f"{option_name(option)}: file not found: {path}")


def _check_generator_spec(spec: str, generators: Mapping[str, GeneratorFactory]) -> None:
    if spec in generators:
        return
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise BadInput(f"--generator: folder not found: {folder}")
    if not (folder / "model_index.json").is_file():
        raise BadInput(
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


def quiet_libraries() -> None:
    """Silence the libraries' own loading bars too (``--quiet``)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        import diffusers
    except ImportError:  # an extra: only the diffusers generator needs it
        return
    diffusers.utils.logging.disable_progress_bar()


def load_models(args: argparse.Namespace, generators: Mapping[str, GeneratorFactory]) -> Models:
    from .agents import Decoding, load_agent
    from .prompts import load_template

    decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    policy = endpoint_policy(args, args.planner, args.critic)
    if args.quiet:
        quiet_libraries()

    def agent(spec: str, model: str | None):
        return load_agent(
            spec,
            model=model,
            api_key_env=args.api_key_env,
            decoding=decoding,
            dtype=args.dtype,
            quantize=args.quantize,
            device=args.device,
            timeout=args.timeout,
            retries=args.retries,
            policy=policy,
        )

    planner = agent(args.planner, args.planner_model)
    critic = (
        None
        if args.critic == "none"
        else planner
        if args.critic == "same"
        else agent(args.critic, args.critic_model)
    )
    if args.generator in generators:
        generator = generators[args.generator](args)
    else:
        from .generators.diffusers_generator import DiffusersGenerator

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


def load_images(paths: Sequence[str | Path], story_pixels: int | None = None):
    """The input images, each refused above ``settings.MAX_INPUT_PIXELS`` before it is decoded, and fitted
    into ``story_pixels`` (--width x --height): the story's size is the user's choice, not the photo's."""
    from .messages import fit_pixels, open_image

    images = [open_image(path) for path in paths]
    return [fit_pixels(image, story_pixels) for image in images] if story_pixels else images


def check_out(out: Path, overwrite: bool) -> None:
    """What ``run`` checks of --out before any model loads: it may be replaced, and it can be written."""
    from .storyboard import Storyboard, StoryboardError

    if os.path.lexists(out):
        if not overwrite:
            raise BadInput(f"--out {out} already exists; choose a new folder or pass --overwrite")
        try:
            Storyboard.check_replaceable(out)
        except StoryboardError as error:
            raise BadInput(f"--out {error}") from None
    check_writable(out, beside=True)  # the storyboard is made beside it, then renamed into place


def unchecked_note(story) -> str:
    """A line for the summary when the Critic could not be used for some pictures, else ""."""
    failed = [attempt for attempt in story.attempts if attempt.critic_failed]
    if not failed:
        return ""
    return f"{len(failed)} of {len(story.attempts)} pictures are unchecked: {failed[0].critic_error}"


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
# run and batch


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


def _check_markers(instruction: str, image_count: int) -> None:
    from .messages import count_markers

    markers = count_markers(instruction)
    if markers and markers != image_count:
        raise BadInput(f"the instruction has {markers} <image> marker(s) but {image_count} --image file(s)")


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instruction", help="what to illustrate; mark where input images stand with <image>")
    parser.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="an input image (repeatable)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="storyboard folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing storyboard folder")
    _add_model_options(parser)


def _configure_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stories",
        metavar="STORIES",
        help="a text file (one instruction a line) or JSONL (instruction, images, seed, id)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the storyboards and index.html"
    )
    _add_model_options(parser)


def make_run(generators: Mapping[str, GeneratorFactory]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        instruction = args.instruction.strip()
        if not instruction:
            raise BadInput("the instruction is empty; say what to illustrate")
        out = Path(args.out)
        check_args(args, generators)
        check_out(out, args.overwrite)
        images = load_images(args.image, args.width * args.height)
        _check_markers(instruction, len(images))
        config = loop_config(args)
        models = load_models(args, generators)
        story = run_one(models, instruction, images, config, Progress("story", not args.quiet))
        try:
            story.save(out, overwrite=args.overwrite)
        except OSError as error:
            raise BadInput(f"cannot write --out {out}: {error}") from None
        print(f"{len(story.steps)} steps, {len(story.attempts)} images -> {out / 'index.html'}")
        if note := unchecked_note(story):
            print(note)
        return EXIT_OK

    return run


def make_batch(generators: Mapping[str, GeneratorFactory]) -> Callable[[argparse.Namespace], int]:
    def batch(args: argparse.Namespace) -> int:
        check_args(args, generators)
        items = read_stories(args.stories)
        out = Path(args.out)
        check_writable(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInput(f"--out {out} cannot be made: {error}") from None
        lock = FolderLock(out, BATCH_LOCK)
        try:
            lock.acquire()
        except FolderLocked as error:
            raise BadInput(f"--out {error}") from None
        except OSError as error:  # say, a folder where the lock file goes
            raise BadInput(f"--out {out}: cannot take the lock {lock.path}: {error}") from None
        try:
            return _run_batch(args, generators, items, out)
        finally:  # every way out lets go, Ctrl-C included
            lock.release()

    return batch


# A temporary name of the batch's own making (files.temporary_name): ".<name>.tmp-<8 hex digits>".
_TEMPORARY = re.compile(r"\.(.+)\.tmp-[0-9a-f]{8}")


def _run_batch(args, generators, items: list[StoryItem], out: Path) -> int:
    from tqdm import tqdm

    from .storyboard import Storyboard

    ours = {item.id for item in items} | {BATCH_INDEX, BATCH_JSON}
    for entry in out.iterdir():  # a story cut off half-way is redone from its start
        match = _TEMPORARY.fullmatch(entry.name)
        if match and match.group(1) in ours:
            remove(entry)
    todo = [item for item in items if not item.error and not Storyboard.is_saved(out / item.id)]
    models = load_models(args, generators) if todo else None
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(items, desc="stories", unit="story", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    for item in bar:
        folder = out / item.id
        record = {"id": item.id, "instruction": item.instruction, "where": item.where}
        if item.error:
            record.update(status="failed", error=item.error)
        elif Storyboard.is_saved(folder):
            record.update(status="done")
        else:
            try:
                # What is left of a story whose storyboard.json was lost is redone; files not ours stay.
                Storyboard.check_replaceable(folder)
                images = load_images(item.images, args.width * args.height)
                _check_markers(item.instruction, len(images))
                config = loop_config(args, seed=item.seed)
                progress = Progress(item.id[:24], not args.quiet)
                story = run_one(models, item.instruction, images, config, progress)
                story.story_id = item.id
                story.save(folder, overwrite=True)
                record.update(status="done")
                if note := unchecked_note(story):
                    record.update(note=note)
                    tqdm.write(f"{item.id}: {note}", file=sys.stderr)
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as error:  # one bad story is reported and the batch goes on
                record.update(status="failed", error=f"{item.where}: {one_line(error)}")
        if record["status"] == "failed":
            tqdm.write(f"failed: {record['error']}", file=sys.stderr)
        results[item.id] = record
        write_batch_index(out, [results.get(i.id) or _pending(i) for i in items])
    failed = [r for r in results.values() if r["status"] == "failed"]
    unchecked = sum("note" in r for r in results.values())
    note = f"; {unchecked} with pictures the Critic could not check" if unchecked else ""
    print(f"{len(items) - len(failed)} of {len(items)} stories done{note} -> {out / BATCH_INDEX}")
    return EXIT_BATCH if failed else EXIT_OK


def _pending(item: StoryItem) -> dict[str, Any]:
    return {"id": item.id, "instruction": item.instruction, "where": item.where, "status": "pending"}


_BATCH_CSS = """
table{border-collapse:collapse;width:100%}td{border-top:1px solid #ddd;padding:.5em;vertical-align:top}
td img{width:96px;border-radius:6px}tr.failed td{background:#fff3f2}.err{color:#a11;font-size:.85em}
"""


def write_batch_index(out: Path, records: list[dict[str, Any]]) -> None:
    """``batch.json`` and ``index.html`` linking every story, each written atomically."""
    import json

    from .storyboard import Storyboard

    e = escape
    rows = []
    for record in records:
        folder = out / record["id"]
        thumb = ""
        if record["status"] == "done" and Storyboard.is_saved(folder):
            pngs = sorted((folder / "steps").glob("*.png"))
            if pngs:
                thumb = f'<img src="{e(record["id"])}/steps/{e(pngs[0].name)}" alt="">'
        detail = e(record.get("error", "") if record["status"] == "failed" else record.get("note", ""))
        title = (
            f'<a href="{e(record["id"])}/index.html">{e(record["instruction"])}</a>'
            if record["status"] == "done"
            else e(record["instruction"])
        )
        rows.append(
            f'<tr class="{e(record["status"])}"><td>{thumb}</td><td>{title}<div class=err>{detail}</div>'
            f"</td><td>{badge(record['status'])}</td></tr>"
        )
    done = sum(r["status"] == "done" for r in records)
    body = f"<h1>Storyboards</h1><p>{done} of {len(records)} done</p><table>{''.join(rows)}</table>"
    atomic_write_text(out / BATCH_INDEX, page("Storyboards", body, _BATCH_CSS))
    atomic_write_text(out / BATCH_JSON, json.dumps(records, indent=2, ensure_ascii=False))


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def engine_commands(generators: Mapping[str, GeneratorFactory] = {}) -> list[Command]:  # noqa: B006
    """``run`` and ``batch``; ``generators`` are the named generators ``--generator`` accepts besides
    folders."""
    return [
        Command(
            "run",
            "make one storyboard",
            "Plan, draw and check one story.",
            _configure_run,
            make_run(generators),
        ),
        Command(
            "batch",
            "make many storyboards, resumably",
            "One storyboard per story. A rerun skips finished stories.",
            _configure_batch,
            make_batch(generators),
        ),
    ]


# ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; every project error becomes its exit code and one line."""
    parser = build_parser(engine_commands() if commands is None else commands)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (KeyboardInterrupt, Cancelled):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InterleaveThinkerError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    raise SystemExit(main())
