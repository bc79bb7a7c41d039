"""The refine loop: plan once, then for each step generate, critique and regenerate, up to a bound.

Rules (DESIGN.md, "The loop"):
- One Planner call per story; an unparseable plan is re-sampled a bounded number of times, then it is an error
  (or, if the caller chose it, a one-step plan made from the instruction).
- Each step gets at most ``max_attempts`` generations. Every retry edits the same before image with the
  Critic's replacement prompt; the kept image becomes the next step's before image. Edits never chain onto a
  rejected image.
- A step without a generator prompt is text only: the generator is not called.
- Critic output that never parses keeps the candidate, marked "unchecked"; so does a Critic that cannot be
  used (an endpoint answering 500): the picture is drawn, and the error is kept with it.
- Every seed derives from one user seed, so the same inputs give the same storyboard.
- The story's reference pictures (and, anchoring, its first picture) go to the generator with every call
  that can take them, never to the Critic; what each attempt carried is recorded on it.
- ``cancel`` is checked before every model call; events report progress. There are no sleeps.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from PIL import Image

from . import settings
from .agents.base import Agent
from .errors import BackendError, Cancelled, check_cancel
from .generators.base import TEXT_TO_IMAGE, Generator, reference_capacity
from .messages import choose_mode, critic_messages, planner_messages, to_rgb
from .prompts import Template, load_template
from .protocol import Plan, PlanStep, ProtocolError, Verdict, parse_plan, parse_verdict
from .storyboard import ACCEPTED, CRITIC_FAILED, REJECTED, UNCHECKED, Attempt, Step, Storyboard


@dataclass(frozen=True)
class LoopConfig:
    max_attempts: int = settings.DEFAULT_MAX_ATTEMPTS
    max_steps: int = settings.DEFAULT_MAX_STEPS
    planner_tries: int = settings.DEFAULT_PLANNER_TRIES
    critic_tries: int = settings.DEFAULT_CRITIC_TRIES
    seed: int = settings.DEFAULT_SEED
    width: int = settings.DEFAULT_SIZE
    height: int = settings.DEFAULT_SIZE
    mode: str = settings.DEFAULT_MODE
    fallback_single_step: bool = False
    check_last_attempt: bool = True
    keep_attempt: str = settings.DEFAULT_KEEP  # which attempt a step keeps when every one was rejected
    anchor: str = settings.DEFAULT_ANCHOR  # "first": every edit also carries the story's first picture

    def __post_init__(self) -> None:
        settings.check_range("max_attempts", self.max_attempts, 1, settings.MAX_ATTEMPTS_LIMIT)
        settings.check_range("max_steps", self.max_steps, 1, settings.MAX_PLAN_STEPS)
        for name in ("planner_tries", "critic_tries"):
            settings.check_range(name, getattr(self, name), 1, settings.MAX_AGENT_TRIES)
        for name in ("width", "height"):
            settings.check_range(name, getattr(self, name), settings.MIN_SIZE, settings.MAX_SIZE)
        settings.check_choice("mode", self.mode, settings.MODES)
        settings.check_choice("keep_attempt", self.keep_attempt, settings.KEEP_CHOICES)
        settings.check_choice("anchor", self.anchor, settings.ANCHOR_CHOICES)
        settings.check_range("seed", self.seed, 0, settings.SEED_MAX)


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
    planner_info: dict[str, Any] | None = None  # the agent's own account (weights, resident size), if any


@dataclass
class _Runtime:
    on_event: EventHandler | None
    cancel: CancelHook | None

    def emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def check(self) -> None:
        check_cancel(self.cancel)


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
    last = "no output"
    output = ""
    start = time.perf_counter()
    for attempt in range(config.planner_tries):
        runtime.check()
        output = planner.complete(
            messages,
            seed=derive_seed(config.seed, "planner", attempt),
            temperature=None if attempt == 0 else resample_temperature(planner),
            cancel=cancel,
        )
        try:
            plan = parse_plan(output, max_steps=config.max_steps)
        except ProtocolError as error:
            errors.append(str(error))
            last = error.reason  # the final error quotes the output once, not this excerpt too
            continue
        runtime.emit(PlanReady(plan, attempt + 1))
        return PlanResult(
            plan,
            mode,
            output,
            attempt + 1,
            time.perf_counter() - start,
            errors,
            _name(planner),
            _info(planner),
        )
    if config.fallback_single_step:
        plan = Plan.single_step(instruction)
        runtime.emit(PlanReady(plan, config.planner_tries))
        seconds = time.perf_counter() - start
        return PlanResult(
            plan, mode, output, config.planner_tries, seconds, errors, _name(planner), _info(planner)
        )
    raise ProtocolError("plan", f"no valid plan after {config.planner_tries} tries; last: {last}", output)


def run_plan(
    plan: Plan,
    generator: Generator,
    critic: Agent | None = None,
    *,
    instruction: str = "",
    images: Sequence[Image.Image] = (),
    references: Sequence[Image.Image] = (),
    mode: str | None = None,
    config: LoopConfig = LoopConfig(),
    critic_template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
    planning: PlanResult | None = None,
) -> Storyboard:
    """Carry out ``plan`` with ``generator``, checked by ``critic`` (None keeps every first attempt).
    ``references``: pictures that hold the cast, carried by every generator call that can take them."""
    check_references(references)
    runtime = _Runtime(on_event, cancel)
    mode = mode or choose_mode(config.mode, images)
    critic_template = critic_template or load_template("critic")
    started = time.perf_counter()
    story = Storyboard(
        instruction=instruction,
        mode=mode,
        plan=plan,
        steps=[],
        input_images=[to_rgb(image) for image in images],
        reference_images=[to_rgb(image) for image in references],
        width=config.width,
        height=config.height,
        seed=config.seed,
        settings={
            "loop": asdict(config),
            "planner": planning.planner if planning else None,
            "critic": _name(critic) if critic is not None else None,
            "generator": _name(generator),
            "edit_route": getattr(generator, "edit_route", None),
            **_agents_info(planning, critic),
            **references_settings(generator, len(references), config.anchor),
        },
        planner_output=planning.output if planning else "",
        planner_tries=planning.tries if planning else 0,
    )
    _carry_out(story, generator, critic, critic_template, config, runtime)
    story.timings = {"total_seconds": time.perf_counter() - started}
    if planning is not None:
        story.timings["planner_seconds"] = planning.seconds
    return story


def run_story(
    instruction: str,
    planner: Agent,
    generator: Generator,
    critic: Agent | None = None,
    *,
    images: Sequence[Image.Image] = (),
    references: Sequence[Image.Image] = (),
    config: LoopConfig = LoopConfig(),
    planner_template: Template | None = None,
    critic_template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
) -> Storyboard:
    """Plan ``instruction`` and carry the plan out: the whole storyboard in one call."""
    check_references(references)  # before the Planner's time is spent
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
        references=references,
        mode=planning.mode,
        config=config,
        critic_template=critic_template,
        on_event=on_event,
        cancel=cancel,
        planning=planning,
    )
    story.timings["total_seconds"] = time.perf_counter() - started
    return story


def resume(
    story: Storyboard,
    from_step: int,
    generator: Generator,
    critic: Agent | None = None,
    *,
    plan: Plan | None = None,
    prompt: str | None = None,
    seed: int | None = None,
    config: LoopConfig | None = None,
    critic_template: Template | None = None,
    on_event: EventHandler | None = None,
    cancel: CancelHook | None = None,
) -> Storyboard:
    """A new storyboard that keeps ``story``'s steps before ``from_step`` (1-based) as they are and redraws
    the rest: from ``plan`` (an edited plan) if given, with step ``from_step``'s prompt replaced by
    ``prompt`` if given, and seeds derived from ``seed`` (default: the story's). ``story`` is not changed.

    The kept steps are the same objects, so they save to the same bytes; later steps see them exactly as a
    fresh run would (edit source and Critic's before image come from ``Storyboard.edit_source``).
    """
    plan = plan or story.plan
    count = len(plan.steps)
    # The last step a resume can start from: one the storyboard holds, or the first one it lacks.
    settings.check_range("from_step", from_step, 1, min(count, len(story.steps) + 1))
    steps = list(plan.steps)
    if prompt is not None:
        index = from_step - 1
        if not prompt.strip():
            raise settings.BadSetting("prompt", "the step's new prompt (or left out)", prompt)
        steps[index] = replace(steps[index], prompt=prompt.strip())
    # The kept steps stay as they were drawn, whatever the edited plan says of them.
    steps[: from_step - 1] = [step.plan_step for step in story.steps[: from_step - 1]]
    plan = replace(plan, steps=tuple(steps))
    base = config or _saved_config(story)
    config = replace(base, seed=story.seed if seed is None else seed, width=story.width, height=story.height)
    runtime = _Runtime(on_event, cancel)
    started = time.perf_counter()
    resumed = Storyboard(
        instruction=story.instruction,
        mode=story.mode,
        plan=plan,
        steps=list(story.steps[: from_step - 1]),
        input_images=list(story.input_images),
        reference_images=list(story.reference_images),
        width=story.width,
        height=story.height,
        seed=config.seed,
        settings={
            **{key: value for key, value in story.settings.items() if key != "references"},
            "loop": asdict(config),
            "critic": _name(critic) if critic is not None else None,
            "generator": _name(generator),
            "edit_route": getattr(generator, "edit_route", None),
            **references_settings(generator, len(story.reference_images), config.anchor),
            "resumed": {"from_step": from_step, "seed": story.seed, "story_id": story.story_id},
        },
        planner_output=story.planner_output,
        planner_tries=story.planner_tries,
        story_id=story.story_id,
    )
    runtime.emit(PlanReady(plan, 0))
    for index, step in enumerate(resumed.steps):  # progress counts the kept steps as done
        runtime.emit(StepDone(index, step, count))
    _carry_out(resumed, generator, critic, critic_template or load_template("critic"), config, runtime)
    resumed.timings = {"total_seconds": time.perf_counter() - started}
    return resumed


def _saved_config(story: Storyboard) -> LoopConfig:
    """The loop settings a storyboard was made with (those this release knows), else the defaults."""
    saved = story.settings.get("loop") if isinstance(story.settings.get("loop"), dict) else {}
    known = {f.name for f in fields(LoopConfig)}
    return LoopConfig(**{key: value for key, value in saved.items() if key in known})


def _carry_out(
    story: Storyboard,
    generator: Generator,
    critic: Agent | None,
    critic_template: Template,
    config: LoopConfig,
    runtime: _Runtime,
) -> None:
    """Draw and check the plan's steps that ``story`` does not hold yet, appending each as it is done."""
    steps = story.plan.steps
    for index in range(len(story.steps), len(steps)):
        plan_step = steps[index]
        attempts: list[Attempt] = []
        if plan_step.makes_image:
            attempts = _run_step(story, index, plan_step, generator, critic, critic_template, config, runtime)
        step = Step(plan_step, attempts, *choose_kept(attempts, config.keep_attempt))
        story.steps.append(step)
        runtime.emit(StepDone(index, step, len(steps)))


def _run_step(
    story: Storyboard,
    index: int,
    plan_step: PlanStep,
    generator: Generator,
    critic: Agent | None,
    critic_template: Template,
    config: LoopConfig,
    runtime: _Runtime,
) -> list[Attempt]:
    source = story.edit_source(index)
    before = story.before_image(index)  # what the Critic compares against: the source, or the white canvas
    prompt = plan_step.prompt or ""
    extras = story.extra_references(index, config.anchor)[: reference_capacity(generator)]
    carried = {"references": [image for _, image in extras]} if extras else {}
    attempts: list[Attempt] = []
    for number in range(1, config.max_attempts + 1):
        runtime.check()
        runtime.emit(AttemptStarted(index, plan_step, number, prompt))
        seed = derive_seed(config.seed, "image", index, number)
        start = time.perf_counter()
        if source is None:
            image = generator.text_to_image(
                prompt, width=config.width, height=config.height, seed=seed, **carried
            )
            route = TEXT_TO_IMAGE
        else:
            image = generator.edit(source, prompt, seed=seed, **carried)
            route = generator.edit_route
        generate_seconds = time.perf_counter() - start
        runtime.emit(ImageReady(index, number, image))

        last = number == config.max_attempts
        judged = Critique()
        if critic is not None and (not last or config.check_last_attempt):
            asked = time.perf_counter()
            try:
                judged = critique(
                    critic,
                    before,
                    image,
                    plan_step.prompt or "",
                    prompt,
                    template=critic_template,
                    seed=config.seed,
                    place=(index, number),
                    tries=config.critic_tries,
                    cancel=runtime.cancel,
                )
            except BackendError as error:  # the picture exists: keep it unchecked, with why
                reason = " ".join(str(error).split()) or type(error).__name__
                judged = Critique(error=f"{CRITIC_FAILED}: {reason}", seconds=time.perf_counter() - asked)
        attempts.append(
            Attempt(
                number=number,
                prompt=prompt,
                seed=seed,
                route=route,
                image=image,
                status=judged.status,
                verdict=judged.verdict,
                critic_output=judged.output,
                critic_error=judged.error,
                generate_seconds=generate_seconds,
                critic_seconds=judged.seconds,
                references=tuple(label for label, _ in extras),
            )
        )
        runtime.emit(VerdictReady(index, number, judged.status, judged.verdict))
        if judged.status != REJECTED:
            break
        prompt = judged.verdict.refine_prompt or prompt
    return attempts


# Words with which a verdict's reasoning names something wrong; one count per word found.
_PROBLEM_WORDS = re.compile(
    r"\b(missing|wrong|incorrect|absent|lacks?|lacking|extra|unwanted|instead|fails?|failed|broken|"
    r"distorted|blurry|not)\b",
    re.IGNORECASE,
)


def problem_count(verdict: Verdict | None) -> int | None:
    """How many problems a verdict's reasoning names; None when it gives no reasoning to count."""
    if verdict is None or not verdict.reasoning.strip():
        return None
    return len(_PROBLEM_WORDS.findall(verdict.reasoning))


def choose_kept(attempts: Sequence[Attempt], keep: str) -> tuple[int | None, str]:
    """``(attempt number, reason)`` for a step whose every attempt was rejected, with ``keep="best"``: the
    attempt whose verdict names the fewest problems, the later one on a tie (it was drawn from the Critic's
    refined prompt). ``(None, "")`` otherwise: the step keeps its last attempt, as it always has."""
    if keep != settings.KEEP_BEST or len(attempts) < 2 or any(a.status != REJECTED for a in attempts):
        return None, ""
    counts = [problem_count(a.verdict) for a in attempts]
    if all(count is None for count in counts):
        return None, ""  # no evidence to go on
    scored = [
        (count if count is not None else float("inf"), -a.number, a) for count, a in zip(counts, attempts)
    ]
    count, _, best = min(scored, key=lambda item: item[:2])
    listed = ", ".join(f"attempt {a.number}: {'?' if c is None else c}" for c, a in zip(counts, attempts))
    return (
        best.number,
        f"every attempt was rejected; attempt {best.number} names the fewest problems ({listed})",
    )


@dataclass(frozen=True)
class Critique:
    """What the Critic said of one picture. No verdict (no Critic, or no answer parsed) is "unchecked"."""

    verdict: Verdict | None = None
    output: str = ""  # the last raw answer
    error: str = ""  # why no answer parsed
    seconds: float = 0.0
    tries: int = 0

    @property
    def status(self) -> str:
        if self.verdict is None:
            return UNCHECKED
        return ACCEPTED if self.verdict.accepted else REJECTED


def critique(
    critic: Agent,
    before: Image.Image,
    after: Image.Image,
    step_prompt: str,
    used_prompt: str,
    *,
    template: Template | None = None,
    seed: int = settings.DEFAULT_SEED,
    place: tuple = (),
    tries: int = settings.DEFAULT_CRITIC_TRIES,
    cancel: CancelHook | None = None,
) -> Critique:
    """Ask ``critic`` whether ``after`` carries out the step, re-sampling while its answer does not parse.

    ``step_prompt`` is the plan's prompt for the step and ``used_prompt`` the one the picture was drawn from.
    Seeds derive from ``seed`` and ``place`` (the loop passes the step and attempt), so a verdict is
    reproducible.
    """
    messages = critic_messages(before, after, step_prompt, used_prompt, template or load_template("critic"))
    output, error = "", ""
    start = time.perf_counter()
    for attempt in range(tries):
        check_cancel(cancel)
        output = critic.complete(
            messages,
            seed=derive_seed(seed, "critic", *place, attempt),
            temperature=None if attempt == 0 else resample_temperature(critic),
            cancel=cancel,
        )
        try:
            verdict = parse_verdict(output)
        except ProtocolError as failure:
            error = str(failure)
            continue
        return Critique(verdict, output, "", time.perf_counter() - start, attempt + 1)
    return Critique(None, output, error, time.perf_counter() - start, tries)


def check_references(references: Sequence[Image.Image]) -> None:
    if len(references) > settings.MAX_REFERENCES:
        raise settings.BadSetting(
            "references", f"at most {settings.MAX_REFERENCES} reference pictures", len(references)
        )


def references_settings(generator: Generator, count: int, anchor: str) -> dict[str, Any]:
    """``{"references": ...}`` for the storyboard's settings when the story has references or anchors:
    how many, and a plain note when the generator cannot take them all (an img2img model takes none)."""
    if not count and anchor == settings.ANCHOR_NONE:
        return {}
    capacity = reference_capacity(generator)
    wanted = count + (anchor != settings.ANCHOR_NONE)
    what = " and ".join(
        part
        for part in (
            f"{count} reference picture{'s' if count != 1 else ''}" if count else "",
            "the anchor (the first picture)" if anchor != settings.ANCHOR_NONE else "",
        )
        if part
    )
    note = ""
    if capacity == 0:
        note = (
            f"{_name(generator)} takes no reference pictures (it edits by "
            f"{getattr(generator, 'edit_route', 'its own route')}), so these are not used: {what}. An edit "
            "model (FLUX.2, FLUX.1 Kontext, Qwen-Image-Edit-Plus) carries them."
        )
    elif capacity < wanted:
        note = f"{_name(generator)} takes {capacity} reference picture(s) a call: only the first are used."
    info: dict[str, Any] = {"given": count, "anchor": anchor, "generator_takes": capacity}
    if note:
        info["note"] = note
    return {"references": info}


def _name(model: object) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _info(agent: object) -> dict[str, Any] | None:
    info = getattr(agent, "info", None)
    return dict(info) if isinstance(info, dict) else None


def _agents_info(planning: PlanResult | None, critic: Agent | None) -> dict[str, Any]:
    """``{"agents": {"planner": ..., "critic": ...}}`` for agents that describe their weights (a local model:
    format, resident bytes); nothing when neither does, so such storyboards read as before."""
    agents = {"planner": planning.planner_info if planning else None, "critic": _info(critic)}
    agents = {role: info for role, info in agents.items() if info is not None}
    return {"agents": agents} if agents else {}


def resample_temperature(agent: Agent) -> float:
    """The temperature of a second try: the agent's own choice, else the project's default."""
    decoding = getattr(agent, "decoding", None)
    return getattr(decoding, "resample_temperature", settings.RESAMPLE_TEMPERATURE)


__all__ = [
    "AttemptStarted",
    "Cancelled",
    "Critique",
    "Event",
    "ImageReady",
    "LoopConfig",
    "PlanReady",
    "PlanResult",
    "StepDone",
    "VerdictReady",
    "check_cancel",
    "check_references",
    "choose_kept",
    "critique",
    "derive_seed",
    "make_plan",
    "problem_count",
    "references_settings",
    "resample_temperature",
    "resume",
    "run_plan",
    "run_story",
]
