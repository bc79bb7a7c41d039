"""The refine loop: plan once, then for each step generate, critique and regenerate, up to a bound.

Rules (DESIGN.md, "The loop"):
- One Planner call per story; an unparseable plan is re-sampled a bounded number of times, then it is an error
  (or, if the caller chose it, a one-step plan made from the instruction).
- Each step gets at most ``max_attempts`` generations. Every retry edits the same before image with the Critic's
  replacement prompt; the kept image becomes the next step's before image. Edits never chain onto a rejected
  image.
- A step without a generator prompt is text only: the generator is not called.
- Critic output that never parses keeps the candidate, marked "unchecked".
- Every seed derives from one user seed, so the same inputs give the same storyboard.
- ``cancel`` is checked before every model call; events report progress. There are no sleeps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from PIL import Image

from .agents.base import Agent
from .generators.base import TEXT_TO_IMAGE, Generator
from .messages import choose_mode, critic_messages, planner_messages, to_rgb, white_canvas
from .prompts import Template, load_template
from .protocol import MAX_PLAN_STEPS, Plan, PlanStep, ProtocolError, Verdict, parse_plan, parse_verdict
from .storyboard import ACCEPTED, REJECTED, UNCHECKED, Attempt, Step, Storyboard

MAX_ATTEMPTS_LIMIT = 10
MAX_AGENT_TRIES = 10
MIN_SIZE, MAX_SIZE = 64, 4096


class Cancelled(RuntimeError):
    """The cancel hook asked the loop to stop; nothing after the last finished model call was done."""


@dataclass(frozen=True)
class LoopConfig:
    max_attempts: int = 3
    max_steps: int = 12
    planner_tries: int = 3
    critic_tries: int = 2
    seed: int = 0
    width: int = 1024
    height: int = 1024
    mode: str = "auto"
    fallback_single_step: bool = False
    check_last_attempt: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}"
            )
        if not 1 <= self.max_steps <= MAX_PLAN_STEPS:
            raise ValueError(f"max_steps must be between 1 and {MAX_PLAN_STEPS}, got {self.max_steps}")
        for name in ("planner_tries", "critic_tries"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_AGENT_TRIES:
                raise ValueError(f"{name} must be between 1 and {MAX_AGENT_TRIES}, got {value}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not MIN_SIZE <= value <= MAX_SIZE:
                raise ValueError(f"{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value}")
        if self.mode not in ("auto", "narrative", "guidance"):
            raise ValueError(f"mode must be auto, narrative or guidance, got {self.mode!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def derive_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed for one model call, fixed by the user's seed and the call's place in the story."""
    digest = hashlib.blake2b(repr((seed,) + parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**32)


# ---------------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class Event:
    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class PlanReady(Event):
    plan: Plan
    tries: int


@dataclass(frozen=True)
class AttemptStarted(Event):
    step_index: int
    step: PlanStep
    attempt: int
    prompt: str


@dataclass(frozen=True)
class ImageReady(Event):
    step_index: int
    attempt: int
    image: Image.Image


@dataclass(frozen=True)
class VerdictReady(Event):
    step_index: int
    attempt: int
    status: str
    verdict: Verdict | None


@dataclass(frozen=True)
class StepDone(Event):
    step_index: int
    step: Step
    total_steps: int


EventHandler = Callable[[Event], None]
CancelHook = Callable[[], bool]


# ---------------------------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    plan: Plan
    mode: str
    output: str
    tries: int
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    planner: str = ""


@dataclass
class _Runtime:
    on_event: EventHandler | None
    cancel: CancelHook | None

    def emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")


def make_plan(
    planner: Agent,
    instruction: str,
    images: Sequence[Image.Image] = (),
    *,
    config: LoopConfig = LoopConfig(),
    template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
) -> PlanResult:
    """One Planner call, re-sampled up to ``config.planner_tries`` times while its output does not parse."""
    runtime = _Runtime(on_event, cancel)
    mode = choose_mode(config.mode, images)
    messages = planner_messages(instruction, images, mode, template or load_template(mode))
    errors: list[str] = []
    output = ""
    start = time.perf_counter()
    for attempt in range(config.planner_tries):
        runtime.check()
        output = planner.complete(
            messages,
            seed=derive_seed(config.seed, "planner", attempt),
            temperature=None if attempt == 0 else _resample_temperature(planner),
        )
        try:
            plan = parse_plan(output, max_steps=config.max_steps)
        except ProtocolError as error:
            errors.append(str(error))
            continue
        runtime.emit(PlanReady(plan, attempt + 1))
        return PlanResult(
            plan, mode, output, attempt + 1, time.perf_counter() - start, errors, _name(planner)
        )
    if config.fallback_single_step:
        plan = Plan.single_step(instruction)
        runtime.emit(PlanReady(plan, config.planner_tries))
        seconds = time.perf_counter() - start
        return PlanResult(plan, mode, output, config.planner_tries, seconds, errors, _name(planner))
    last = errors[-1] if errors else "no output"
    raise ProtocolError("plan", f"no valid plan after {config.planner_tries} tries; last: {last}", output)


def run_plan(
    plan: Plan,
    generator: Generator,
    critic: Agent | None = None,
    *,
    instruction: str = "",
    images: Sequence[Image.Image] = (),
    mode: str | None = None,
    config: LoopConfig = LoopConfig(),
    critic_template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
    planning: PlanResult | None = None,
) -> Storyboard:
    """Carry out ``plan`` with ``generator``, checked by ``critic`` (None keeps every first attempt)."""
    runtime = _Runtime(on_event, cancel)
    mode = mode or choose_mode(config.mode, images)
    critic_template = critic_template or load_template("critic")
    started = time.perf_counter()
    images = [to_rgb(image) for image in images]
    # Narrative stories start on a white canvas; guidance stories continue from the user's last image.
    before = images[-1] if mode == "guidance" and images else None
    steps: list[Step] = []
    for index, plan_step in enumerate(plan.steps):
        attempts: list[Attempt] = []
        if plan_step.makes_image:
            attempts = _run_step(
                index, plan_step, before, generator, critic, critic_template, config, runtime
            )
            before = attempts[-1].image
        step = Step(plan_step, attempts)
        steps.append(step)
        runtime.emit(StepDone(index, step, len(plan.steps)))
    timings = {"total_seconds": time.perf_counter() - started}
    if planning is not None:
        timings["planner_seconds"] = planning.seconds
    return Storyboard(
        instruction=instruction,
        mode=mode,
        plan=plan,
        steps=steps,
        input_images=list(images),
        width=config.width,
        height=config.height,
        seed=config.seed,
        settings={
            "loop": asdict(config),
            "planner": planning.planner if planning else None,
            "critic": _name(critic) if critic is not None else None,
            "generator": _name(generator),
            "edit_route": getattr(generator, "edit_route", None),
        },
        planner_output=planning.output if planning else "",
        planner_tries=planning.tries if planning else 0,
        timings=timings,
    )


def run_story(
    instruction: str,
    planner: Agent,
    generator: Generator,
    critic: Agent | None = None,
    *,
    images: Sequence[Image.Image] = (),
    config: LoopConfig = LoopConfig(),
    planner_template: Template | None = None,
    critic_template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
) -> Storyboard:
    """Plan ``instruction`` and carry the plan out: the whole storyboard in one call."""
    started = time.perf_counter()
    planning = make_plan(
        planner,
        instruction,
        images,
        config=config,
        template=planner_template,
        on_event=on_event,
        cancel=cancel,
    )
    story = run_plan(
        planning.plan,
        generator,
        critic,
        instruction=instruction,
        images=images,
        mode=planning.mode,
        config=config,
        critic_template=critic_template,
        on_event=on_event,
        cancel=cancel,
        planning=planning,
    )
    story.timings["total_seconds"] = time.perf_counter() - started
    return story


def _run_step(
    index: int,
    plan_step: PlanStep,
    before: Image.Image | None,
    generator: Generator,
    critic: Agent | None,
    critic_template: Template,
    config: LoopConfig,
    runtime: _Runtime,
) -> list[Attempt]:
    from_text = before is None
    critic_before = white_canvas(config.width, config.height) if from_text else before
    prompt = plan_step.prompt or ""
    attempts: list[Attempt] = []
    for number in range(1, config.max_attempts + 1):
        runtime.check()
        runtime.emit(AttemptStarted(index, plan_step, number, prompt))
        seed = derive_seed(config.seed, "image", index, number)
        start = time.perf_counter()
        if from_text:
            image = generator.text_to_image(prompt, width=config.width, height=config.height, seed=seed)
            route = TEXT_TO_IMAGE
        else:
            image = generator.edit(before, prompt, seed=seed)
            route = generator.edit_route
        generate_seconds = time.perf_counter() - start
        runtime.emit(ImageReady(index, number, image))

        last = number == config.max_attempts
        verdict, output, error, critic_seconds = None, "", "", 0.0
        if critic is not None and (not last or config.check_last_attempt):
            verdict, output, error, critic_seconds = _critique(
                critic,
                critic_template,
                critic_before,
                image,
                plan_step.prompt or "",
                prompt,
                config,
                (index, number),
                runtime,
            )
        status = UNCHECKED if verdict is None else ACCEPTED if verdict.accepted else REJECTED
        attempts.append(
            Attempt(
                number=number,
                prompt=prompt,
                seed=seed,
                route=route,
                image=image,
                status=status,
                verdict=verdict,
                critic_output=output,
                critic_error=error,
                generate_seconds=generate_seconds,
                critic_seconds=critic_seconds,
            )
        )
        runtime.emit(VerdictReady(index, number, status, verdict))
        if status != REJECTED:
            break
        prompt = verdict.refine_prompt or prompt
    return attempts


def _critique(
    critic: Agent,
    template: Template,
    before: Image.Image,
    after: Image.Image,
    original: str,
    used: str,
    config: LoopConfig,
    place: tuple[int, int],
    runtime: _Runtime,
) -> tuple[Verdict | None, str, str, float]:
    messages = critic_messages(before, after, original, used, template)
    output, error = "", ""
    start = time.perf_counter()
    for attempt in range(config.critic_tries):
        runtime.check()
        output = critic.complete(
            messages,
            seed=derive_seed(config.seed, "critic", *place, attempt),
            temperature=None if attempt == 0 else _resample_temperature(critic),
        )
        try:
            return parse_verdict(output), output, "", time.perf_counter() - start
        except ProtocolError as failure:
            error = str(failure)
    return None, output, error, time.perf_counter() - start


def _name(model: object) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _resample_temperature(agent: Agent) -> float:
    decoding = getattr(agent, "decoding", None)
    return getattr(decoding, "resample_temperature", 0.7)


__all__ = [
    "AttemptStarted",
    "Cancelled",
    "Event",
    "ImageReady",
    "LoopConfig",
    "PlanReady",
    "PlanResult",
    "StepDone",
    "VerdictReady",
    "derive_seed",
    "make_plan",
    "run_plan",
    "run_story",
]
