"""The engine's command line: ``run``, ``resume`` and ``batch``, as :class:`Command` objects.

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

    gen = parser.add_argument_group(
        "generator (--generator, or --comfyui with --checkpoint or --comfyui-graph)"
    )
    gen.add_argument("--generator", metavar="DIR", help="diffusers pipeline folder")
    gen.add_argument(
        "--comfyui",
        action="append",
        default=[],
        metavar="URL",
        help="a running ComfyUI server that draws the pictures (e.g. http://127.0.0.1:8188); repeat it for "
        "several servers, one per GPU, each call going to a free one",
    )
    gen.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="with --comfyui: the checkpoint file the servers load (as in their models/checkpoints), drawn "
        "with stock text-to-image and img2img graphs",
    )
    gen.add_argument(
        "--comfyui-graph",
        metavar="FILE",
        help="with --comfyui: your own text-to-image graph in API format, with {{prompt}} {{seed}} "
        "{{width}} {{height}} (instead of --checkpoint)",
    )
    gen.add_argument(
        "--comfyui-edit-graph",
        metavar="FILE",
        help="with --comfyui-graph: the edit graph ({{prompt}} {{seed}} {{image}}); without it every step "
        "is drawn from text",
    )
    gen.add_argument(
        "--edit-route",
        default="auto",
        choices=EDIT_ROUTE_CHOICES,
        help="how later steps edit the previous image (default: auto, from the pipeline family)",
    )
    gen.add_argument(
        "--steps",
        type=int,
        help=f"sampling steps (default: the pipeline's; {settings.DEFAULT_COMFYUI_STEPS} with --checkpoint)",
    )
    gen.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (default: the pipeline's; "
        f"cfg {settings.DEFAULT_COMFYUI_CFG:g} with --checkpoint)",
    )
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
    add_step_choices(loop)
    loop.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FILE",
        help="a picture that holds the cast (a character, a style, a place), given to the generator with "
        f"every step, never to the Critic (repeatable, at most {settings.MAX_REFERENCES}); an img2img "
        "model cannot use it, and the storyboard says so",
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
    device.add_argument(
        "--fast-decoding",
        action="store_true",
        default=settings.DEFAULT_FAST_DECODING,
        help="decode a local agent with a static KV cache, compiled by transformers on a GPU: the same "
        "greedy answers; off by default (no faster on the CPU; measure it on your GPU with "
        "bench/gpu_inference.py)",
    )
    device.add_argument("--quiet", action="store_true", help="no progress bars")


def add_step_choices(parser) -> None:
    """``--keep-attempt`` and ``--anchor``: how a step chooses its picture and what each edit looks back
    at. The engine's commands and the sandbox's ``eval`` share them."""
    parser.add_argument(
        "--keep-attempt",
        default=settings.DEFAULT_KEEP,
        choices=settings.KEEP_CHOICES,
        help="when the Critic rejects every attempt of a step, keep the last one or the best one (whose "
        f"verdict names the fewest problems; recorded with its reason). Default {settings.DEFAULT_KEEP}",
    )
    parser.add_argument(
        "--anchor",
        default=settings.DEFAULT_ANCHOR,
        choices=settings.ANCHOR_CHOICES,
        help="first: every edit also carries the story's first picture, against drift over a long story "
        f"(default {settings.DEFAULT_ANCHOR})",
    )


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
            keep_attempt=getattr(args, "keep_attempt", settings.DEFAULT_KEEP),
            anchor=getattr(args, "anchor", settings.DEFAULT_ANCHOR),
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
    _check_generator(args, generators)
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


def _check_generator(args: argparse.Namespace, generators: Mapping[str, GeneratorFactory]) -> None:
    servers = getattr(args, "comfyui", None) or []
    comfyui_only = [
        option_name(name)
        for name in ("checkpoint", "comfyui_graph", "comfyui_edit_graph")
        if getattr(args, name, None)
    ]
    if not servers:
        if not args.generator:
            raise BadInput(
                "name the generator: --generator DIR (a diffusers pipeline folder) or --comfyui URL "
                "(a running ComfyUI server)"
            )
        if comfyui_only:
            raise BadInput(f"{comfyui_only[0]} goes with --comfyui URL, not with --generator")
        _check_generator_spec(args.generator, generators)
        return
    if args.generator:
        raise BadInput("give --generator or --comfyui, not both")
    comfyui_generators(args)  # builds the graphs and checks them; nothing is sent to a server yet


def comfyui_generators(args: argparse.Namespace):
    """One ``ComfyUIServerGenerator`` per ``--comfyui`` URL, all with the same graphs, in a pool."""
    from .generators.base import GeneratorError, GeneratorPool
    from .generators.comfyui_server import ComfyUIServerGenerator

    urls = [url.strip().rstrip("/") for url in args.comfyui]
    for url in urls:
        if not url.lower().startswith(("http://", "https://")):
            raise BadInput(f"--comfyui: not an http(s) URL: {url!r} (expected e.g. http://127.0.0.1:8188)")
    twice = sorted({url for url in urls if urls.count(url) > 1})
    if twice:
        raise BadInput(f"--comfyui {twice[0]} is given twice; name each server once")
    if bool(args.checkpoint) == bool(args.comfyui_graph):
        raise BadInput(
            "--comfyui needs one of --checkpoint NAME (a checkpoint file on the servers) or --comfyui-graph "
            "FILE (your own API-format graph)"
        )
    if args.comfyui_edit_graph and not args.comfyui_graph:
        raise BadInput("--comfyui-edit-graph goes with --comfyui-graph")
    option = "--checkpoint"
    try:
        if args.checkpoint:
            return GeneratorPool(
                [
                    ComfyUIServerGenerator.for_checkpoint(
                        url,
                        args.checkpoint,
                        steps=args.steps or settings.DEFAULT_COMFYUI_STEPS,
                        cfg=settings.DEFAULT_COMFYUI_CFG if args.guidance is None else args.guidance,
                        denoise=args.strength,
                        negative_prompt=args.negative_prompt or "",
                        edit_route=args.edit_route,
                    )
                    for url in urls
                ]
            )
        option = "--comfyui-graph"
        name = f"ComfyUI {Path(args.comfyui_graph).name}"  # the same on every server: storyboards agree
        return GeneratorPool(
            [
                ComfyUIServerGenerator(
                    url, args.comfyui_graph, args.comfyui_edit_graph, edit_route=args.edit_route, name=name
                )
                for url in urls
            ]
        )
    except GeneratorError as error:  # a graph that cannot be read or lacks a placeholder: the user's to fix
        raise BadInput(f"{option}: {error}") from None


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
            fast_decoding=args.fast_decoding,
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
    if getattr(args, "comfyui", None):
        generator = comfyui_generators(args)
    elif args.generator in generators:
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


def load_references(paths: Sequence[str | Path], story_pixels: int):
    """The story's reference pictures, checked as input images are, and at most ``MAX_REFERENCES``."""
    if len(paths) > settings.MAX_REFERENCES:
        raise BadInput(
            f"{len(paths)} reference pictures given; a story takes at most {settings.MAX_REFERENCES}"
        )
    return load_images(paths, story_pixels)


def story_notes(story) -> list[str]:
    """What the summary says beside the counts: unchecked pictures, references the generator cannot use."""
    reference_note = (story.settings.get("references") or {}).get("note", "")
    return [note for note in (unchecked_note(story), reference_note) if note]


def unchecked_note(story) -> str:
    """A line for the summary when the Critic could not be used for some pictures, else ""."""
    failed = [attempt for attempt in story.attempts if attempt.critic_failed]
    if not failed:
        return ""
    return f"{len(failed)} of {len(story.attempts)} pictures are unchecked: {failed[0].critic_error}"


# ---------------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A tqdm bar over the steps of one story, with the current step and attempt in its postfix.
    ``position`` is its line under the batch's bar when several stories run at once."""

    def __init__(self, label: str, enabled: bool = True, position: int | None = None):
        self.label = label
        self.enabled = enabled
        self.position = position
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
                position=self.position,
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


def run_one(models: Models, instruction: str, images, config, progress: Progress, cancel=None, references=()):
    from .loop import run_story

    try:
        return run_story(
            instruction,
            models.planner,
            models.generator,
            models.critic,
            images=images,
            references=references,
            config=config,
            planner_template=models.planner_template,
            critic_template=models.critic_template,
            on_event=progress,
            cancel=cancel,
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
    parser.add_argument(
        "--plan",
        metavar="FILE",
        help="draw this plan instead of asking the Planner: plan text in the Planner's schema (an "
        "execution_plan JSON, in <answer> tags or bare), e.g. a storyboard's plan edited by hand",
    )
    _add_model_options(parser)


def _configure_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stories",
        metavar="STORIES",
        help="a text file (one instruction a line) or JSONL (instruction, images, references, seed, id)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the storyboards and index.html"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=settings.DEFAULT_CONCURRENCY,
        metavar="N",
        help="stories in flight at once, so that one story's agent calls overlap another's pictures "
        f"(1-{settings.MAX_CONCURRENCY}, default {settings.DEFAULT_CONCURRENCY}: one after another). A local "
        "model answers one call at a time; agents on a server (vLLM) and several --comfyui servers "
        "take many",
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
        references = load_references(args.reference, args.width * args.height)
        config = loop_config(args)
        plan = read_plan(args.plan, config.max_steps) if args.plan else None
        models = load_models(args, generators)
        progress = Progress("story", not args.quiet)
        if plan is None:
            story = run_one(models, instruction, images, config, progress, references=references)
        else:
            story = draw_plan(models, plan, instruction, images, config, progress, references=references)
        try:
            story.save(out, overwrite=args.overwrite)
        except OSError as error:
            raise BadInput(f"cannot write --out {out}: {error}") from None
        print(f"{len(story.steps)} steps, {len(story.attempts)} images -> {out / 'index.html'}")
        for note in story_notes(story):
            print(note)
        return EXIT_OK

    return run


def read_plan(path: str | Path, max_steps: int = settings.MAX_PLAN_STEPS):
    """The plan in file ``path``, checked by the engine's own parser; a bad one is bad input (exit 2)."""
    from .protocol import parse_plan

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--plan: cannot read {path}: {error}") from None
    try:
        return parse_plan(text, max_steps=max_steps)
    except ProtocolError as error:
        raise BadInput(
            f"--plan {path}: {error.reason}; fix the file: an execution_plan list of steps, each with "
            "step_number, step_name, instruction, prompt and auxiliary_text"
        ) from None


def draw_plan(
    models: Models, plan, instruction: str, images, config, progress: Progress, cancel=None, references=()
):
    """``run --plan``: the plan as given, drawn and checked; the Planner is not asked."""
    from .loop import PlanReady, run_plan
    from .messages import choose_mode

    progress(PlanReady(plan, 0))
    try:
        return run_plan(
            plan,
            models.generator,
            models.critic,
            instruction=instruction,
            images=images,
            references=references,
            mode=choose_mode(config.mode, images),
            config=config,
            critic_template=models.critic_template,
            on_event=progress,
            cancel=cancel,
        )
    finally:
        progress.close()


def _configure_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("storyboard", metavar="STORYBOARD_DIR", help="a saved storyboard folder")
    parser.add_argument(
        "--from-step",
        type=int,
        required=True,
        metavar="K",
        help="first step to redraw; steps before it are kept byte for byte",
    )
    parser.add_argument("--prompt", metavar="TEXT", help="a new generator prompt for step K")
    parser.add_argument(
        "--plan", metavar="FILE", help="an edited plan for steps K on (steps before K are kept as drawn)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="storyboard folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing storyboard folder")
    _add_model_options(parser)
    # Unset, the story's own seed and anchor: the same storyboard redrawn from step K with a new prompt only.
    parser.set_defaults(seed=None, anchor=None)


def make_resume(generators: Mapping[str, GeneratorFactory]) -> Callable[[argparse.Namespace], int]:
    def resume_command(args: argparse.Namespace) -> int:
        from .loop import resume
        from .storyboard import Storyboard

        source, out = Path(args.storyboard), Path(args.out)
        if out.resolve() == source.resolve():
            raise BadInput("--out is the storyboard being resumed; write the resumed one to a new folder")
        if args.reference:
            raise BadInput("resume keeps the storyboard's own reference pictures; leave out --reference")
        story = Storyboard.load(source)
        check_args(_with_saved(args, story), generators)
        check_out(out, args.overwrite)
        config = loop_config(_with_saved(args, story))
        plan = read_plan(args.plan, config.max_steps) if args.plan else None
        models = load_models(args, generators)
        progress = Progress("resume", not args.quiet)
        try:
            resumed = resume(
                story,
                args.from_step,
                models.generator,
                models.critic,
                plan=plan,
                prompt=args.prompt,
                seed=config.seed,
                config=config,
                critic_template=models.critic_template,
                on_event=progress,
            )
        except BadSetting as error:
            raise error.named(option_name(error.setting)) from None
        finally:
            progress.close()
        try:
            resumed.save(out, overwrite=args.overwrite)
        except OSError as error:
            raise BadInput(f"cannot write --out {out}: {error}") from None
        kept = args.from_step - 1
        print(f"{kept} steps kept, {len(resumed.steps) - kept} redrawn -> {out / 'index.html'}")
        for note in story_notes(resumed):
            print(note)
        return EXIT_OK

    return resume_command


def _with_saved(args: argparse.Namespace, story) -> argparse.Namespace:
    """``args`` with the story's own seed and anchor where the user did not give one."""
    saved = story.settings.get("loop") if isinstance(story.settings.get("loop"), dict) else {}
    anchor = args.anchor if args.anchor is not None else saved.get("anchor", settings.DEFAULT_ANCHOR)
    seed = story.seed if args.seed is None else args.seed
    return argparse.Namespace(**{**vars(args), "seed": seed, "anchor": anchor})


def make_batch(generators: Mapping[str, GeneratorFactory]) -> Callable[[argparse.Namespace], int]:
    def batch(args: argparse.Namespace) -> int:
        check_args(args, generators)
        settings.check_range("--concurrency", args.concurrency, 1, settings.MAX_CONCURRENCY)
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
    bar = tqdm(
        total=len(items),
        desc="stories",
        unit="story",
        file=sys.stderr,
        disable=args.quiet,
        dynamic_ncols=True,
    )

    def settle(item: StoryItem, record: dict[str, Any]) -> None:
        """Record one story's outcome; batch.json and index.html are rewritten, always in the stories'
        order, and only from this thread."""
        if record["status"] == "failed":
            tqdm.write(f"failed: {record['error']}", file=sys.stderr)
        elif "note" in record:
            tqdm.write(f"{item.id}: {record['note']}", file=sys.stderr)
        results[item.id] = record
        bar.update(1)
        write_batch_index(out, [results.get(i.id) or _pending(i) for i in items])

    try:
        if args.concurrency == 1:
            for item in items:
                record = _known_record(item, out)
                if record is None:
                    record = _story_record(models, args, item, out, Progress(item.id[:24], not args.quiet))
                settle(item, record)
        else:
            for item in items:
                if (record := _known_record(item, out)) is not None:
                    settle(item, record)
            left = [item for item in items if item.id not in results]
            if left:
                _run_overlapping(shared_models(models), args, left, out, settle)
    finally:
        bar.close()
    failed = [r for r in results.values() if r["status"] == "failed"]
    unchecked = sum("note" in r for r in results.values())
    note = f"; {unchecked} with pictures the Critic could not check" if unchecked else ""
    print(f"{len(items) - len(failed)} of {len(items)} stories done{note} -> {out / BATCH_INDEX}")
    return EXIT_BATCH if failed else EXIT_OK


def _known_record(item: StoryItem, out: Path) -> dict[str, Any] | None:
    """The record of a story that needs no run (a bad row, a finished storyboard), else None."""
    from .storyboard import Storyboard

    record = {"id": item.id, "instruction": item.instruction, "where": item.where}
    if item.error:
        return record | {"status": "failed", "error": item.error}
    if Storyboard.is_saved(out / item.id):
        return record | {"status": "done"}
    return None


def _story_record(models: Models, args, item: StoryItem, out: Path, progress: Progress, cancel=None):
    """Run one story and save it; its record. One bad story is a failed record; a stop is raised."""
    from .storyboard import Storyboard

    folder = out / item.id
    record = {"id": item.id, "instruction": item.instruction, "where": item.where}
    try:
        # What is left of a story whose storyboard.json was lost is redone; files not ours stay.
        Storyboard.check_replaceable(folder)
        images = load_images(item.images, args.width * args.height)
        _check_markers(item.instruction, len(images))
        references = load_references(item.references, args.width * args.height)
        config = loop_config(args, seed=item.seed)
        story = run_one(models, item.instruction, images, config, progress, cancel, references)
        story.story_id = item.id
        story.save(folder, overwrite=True)
        record.update(status="done")
        if notes := story_notes(story):
            record.update(note=" ".join(notes))
    except (KeyboardInterrupt, Cancelled):
        raise
    except Exception as error:  # one bad story is reported and the batch goes on
        record.update(status="failed", error=f"{item.where}: {one_line(error)}")
    return record


def shared_models(models: Models) -> Models:
    """``models`` made safe to call from several threads: what cannot take two calls at once is put behind a
    lock, one for the generator (an in-process pipeline) and one for the local agents together (a sampling
    agent seeds torch's one random state, and they share a device). Agents on a server and a ComfyUI pool
    take calls as they come."""
    import dataclasses
    import threading

    from .agents import SerialAgent
    from .generators.base import SerialGenerator, concurrent_safe

    agents_lock = threading.Lock()
    wrapped: dict[int, Any] = {}

    def agent(model):
        if model is None or concurrent_safe(model):
            return model
        return wrapped.setdefault(id(model), SerialAgent(model, agents_lock))

    generator = models.generator
    return dataclasses.replace(
        models,
        planner=agent(models.planner),
        critic=agent(models.critic),
        generator=generator if concurrent_safe(generator) else SerialGenerator(generator),
    )


def _run_overlapping(models: Models, args, items: list[StoryItem], out: Path, settle) -> None:
    """Up to ``--concurrency`` stories at once, each in a worker thread; outcomes are settled here, in this
    thread. A stop (Ctrl-C, or one raised in a worker) cancels the others at their next model call and waits
    for them, so nothing is written after the lock is let go."""
    import queue
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .errors import check_cancel

    workers = min(args.concurrency, len(items))
    stop = threading.Event()
    lines: queue.SimpleQueue[int] = queue.SimpleQueue()  # a progress line under the batch's bar per worker
    for line in range(1, workers + 1):
        lines.put(line)

    def work(item: StoryItem) -> dict[str, Any]:
        check_cancel(stop.is_set)
        line = lines.get()
        try:
            progress = Progress(item.id[:24], not args.quiet, position=line)
            return _story_record(models, args, item, out, progress, stop.is_set)
        finally:
            lines.put(line)

    order = {item.id: index for index, item in enumerate(items)}
    pool = ThreadPoolExecutor(workers, thread_name_prefix="story")
    futures = {pool.submit(work, item): item for item in items}
    unsettled = dict(futures)

    def by_order(future) -> int:
        return order[futures[future].id]

    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=by_order):
                record = future.result()  # a stop raised in a worker is raised here
                del unsettled[future]
                settle(futures[future], record)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future in sorted(unsettled, key=by_order):  # finished (so saved) while the others stopped
            if future.done() and not future.cancelled() and future.exception() is None:
                try:
                    settle(futures[future], future.result())
                except Exception:  # the stop is what is reported; a rerun rewrites the index anyway
                    break
        raise
    finally:
        pool.shutdown(wait=True)


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
    """``run``, ``resume`` and ``batch``; ``generators`` are the named generators ``--generator`` accepts
    besides folders."""
    return [
        Command(
            "run",
            "make one storyboard",
            "Plan, draw and check one story.",
            _configure_run,
            make_run(generators),
        ),
        Command(
            "resume",
            "redraw a saved storyboard from one step on",
            "Keep a storyboard's steps before --from-step byte for byte and redraw the rest, with a new "
            "prompt for that step (--prompt), an edited plan (--plan) or a new --seed.",
            _configure_resume,
            make_resume(generators),
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
