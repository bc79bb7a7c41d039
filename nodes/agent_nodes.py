"""Load Agent, Planner and Critic: the VLM side of the pack."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from ..core import settings
from ..core.agents import Decoding, load_agent
from ..core.agents.transformers_agent import TransformersAgent
from ..core.endpoints import (
    CONFIG_FILE_NAME,
    DEFAULT_KEY_ENV,
    ENDPOINTS_ENV,
    KEY_ENVS_ENV,
    EndpointPolicy,
    EndpointPolicyError,
)
from ..core.loop import LoopConfig, critique, make_plan
from ..core.protocol import ProtocolError
from ..core.storyboard import ACCEPTED, REJECTED, UNCHECKED
from . import memory
from .host import (
    NodeError,
    Progress,
    check_agent_name,
    engine_errors,
    find_agent_folder,
    folder_fingerprint,
    interrupted,
    list_agent_folders,
    module,
    optional_module,
)
from .images import single, to_pil
from .types import AGENT, CATEGORY, PLAN, StoryPlan

LOCAL = "local folder (models/LLM)"
ENDPOINT = "OpenAI-compatible endpoint"
KEEP = "keep on GPU"
OFFLOAD = "offload to CPU between calls"
# The widget's words for the engine's memory policies (the words are stored in saved workflows).
MEMORY_POLICIES = dict(zip((KEEP, OFFLOAD), settings.MEMORY_POLICIES))
DEVICES = ("auto", "cpu")
PROBE_TIMEOUT = 10.0
PROGRESS_EVERY = 0.25  # seconds between two token updates of the Planner's progress bar


def _seed_input(tooltip: str):
    return (
        "INT",
        {
            "default": settings.DEFAULT_SEED,
            "min": 0,
            "max": settings.SEED_MAX,
            "control_after_generate": True,
            "tooltip": tooltip,
        },
    )


class LoadAgent:
    """A Planner/Critic VLM: a folder in models/LLM run with transformers, or an OpenAI-compatible server."""

    DESCRIPTION = (
        "Loads a vision-language model to act as Planner and/or Critic. One agent can serve both roles. "
        "Local folders live in models/LLM; endpoints (vLLM, Ollama, LM Studio) take their key from an "
        "environment variable, never from the graph."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (AGENT,)
    RETURN_NAMES = ("agent",)
    OUTPUT_TOOLTIPS = ("The agent handle; connect it to a Planner, a Critic or the Refine Loop's critic.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "backend": (
                    [LOCAL, ENDPOINT],
                    {
                        "default": LOCAL,
                        "tooltip": "Run a model folder from models/LLM here, or call an OpenAI-compatible "
                        "server.",
                    },
                ),
                "model": (
                    list_agent_folders(),
                    {
                        "tooltip": "A Hugging Face VLM folder (with config.json) inside models/LLM. Local "
                        "backend only; a name reaching outside models/LLM is refused."
                    },
                ),
                "endpoint_url": (
                    "STRING",
                    {
                        "default": "http://127.0.0.1:8000/v1",
                        "tooltip": "Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. "
                        "Endpoint backend only. Only loopback (127.0.0.1, ::1, localhost) is allowed unless "
                        f"this machine's owner lists the host in the environment variable {ENDPOINTS_ENV} or "
                        f'under "endpoints" in ComfyUI/user/{CONFIG_FILE_NAME}: a shared workflow cannot '
                        "send requests anywhere else.",
                    },
                ),
                "endpoint_model": (
                    "STRING",
                    {"default": "", "tooltip": "The model name the server knows. Endpoint backend only."},
                ),
                "api_key_env": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Name of the environment variable that holds the API key (not the key "
                        "itself); empty for servers without a key. Endpoint backend only. Allowed: "
                        f"{DEFAULT_KEY_ENV}, and names the machine's owner lists in {KEY_ENVS_ENV} or under "
                        f'"api_key_env" in ComfyUI/user/{CONFIG_FILE_NAME}; any other name is refused '
                        "unread.",
                    },
                ),
                "dtype": (
                    list(settings.DTYPES),
                    {
                        "default": "auto",
                        "tooltip": "Weight precision; auto is bf16/fp16 on a GPU and fp32 on the CPU. Local "
                        "backend only.",
                    },
                ),
                "device": (
                    list(DEVICES),
                    {
                        "default": "auto",
                        "tooltip": "auto runs on ComfyUI's device (the GPU if it has one); cpu keeps the "
                        "agent off the GPU. Local backend only.",
                    },
                ),
                "memory": (
                    list(MEMORY_POLICIES),
                    {
                        "default": KEEP,
                        "tooltip": "keep on GPU: stays there between calls and leaves only when ComfyUI "
                        "needs the room (loading the diffusion model, Unload models). offload: back to the "
                        "CPU after every call (slower, smallest footprint).",
                    },
                ),
                "max_new_tokens": (
                    "INT",
                    {
                        "default": settings.DEFAULT_MAX_NEW_TOKENS,
                        "min": 1,
                        "max": settings.MAX_NEW_TOKENS_LIMIT,
                        "tooltip": "Upper bound on the length of one answer.",
                    },
                ),
                "temperature": (
                    "FLOAT",
                    {
                        "default": settings.DEFAULT_TEMPERATURE,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "0 decodes greedily (same answer every run); above 0 samples, seeded.",
                    },
                ),
            },
            # Optional and last: workflows saved before it load unchanged (widgets are stored by place).
            "optional": {
                "quantize": (
                    list(settings.QUANTIZATIONS),
                    {
                        "default": settings.DEFAULT_QUANTIZATION,
                        "tooltip": "Store the linear layers in 8 bits (int8) or 4 bits (nf4) with "
                        "bitsandbytes; the rest stays in dtype. An 8B agent takes about 16 GB in bf16, 9 GB "
                        "in int8 and 6 GB in nf4. Local backend only.",
                    },
                ),
                "fast_decoding": (
                    "BOOLEAN",
                    {
                        "default": settings.DEFAULT_FAST_DECODING,
                        "tooltip": "Decode with a static KV cache, which transformers compiles on a GPU: "
                        "may answer faster there; on the CPU it measured no faster, hence off. At "
                        "temperature 0 the answers are the same token for token. Local backend only.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        """Refused when the prompt is queued: a model name that reaches outside models/LLM, whatever the
        backend (a graph has no business naming such a path).

        Only ``model`` is taken: ComfyUI repeats a failed check on every input named here, and skips its
        own list check for them (an endpoint user may have no folder at all). Whether the folder exists
        depends on the backend, so it is checked by ``load``, as are the endpoint settings: both before any
        file is read or any request is sent.
        """
        try:
            check_agent_name(model)
        except NodeError as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, backend, model, **kwargs):
        """Local folders rerun when any file in them changes; endpoints when the machine's allow-list does
        (an agent cached before a host was taken off the list must not keep calling it)."""
        if backend != LOCAL:
            try:
                return hashlib.sha256(repr(endpoint_policy()).encode()).hexdigest()
            except EndpointPolicyError:
                return "refused"
        try:
            folder = find_agent_folder(model)
        except NodeError:
            return "missing"
        return hashlib.sha256(folder_fingerprint(folder).encode()).hexdigest()

    def load(
        self,
        backend,
        model,
        endpoint_url,
        endpoint_model,
        api_key_env,
        dtype,
        device,
        memory,
        max_new_tokens,
        temperature,
        quantize=None,
        fast_decoding=None,
    ):
        if backend not in (LOCAL, ENDPOINT):
            raise NodeError(f"backend must be {LOCAL!r} or {ENDPOINT!r}, got {backend!r}")
        with engine_errors():
            decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature)
            if backend == ENDPOINT:
                return (self._endpoint(endpoint_url, endpoint_model, api_key_env, decoding),)
            quantize = quantize or settings.DEFAULT_QUANTIZATION
            fast = settings.DEFAULT_FAST_DECODING if fast_decoding is None else bool(fast_decoding)
            return (self._local(model, dtype, device, memory, decoding, quantize, fast),)

    @staticmethod
    def _local(
        model,
        dtype,
        device,
        policy,
        decoding,
        quantize=settings.DEFAULT_QUANTIZATION,
        fast_decoding=settings.DEFAULT_FAST_DECODING,
    ):
        if policy not in MEMORY_POLICIES:
            raise NodeError(f"memory must be {KEEP!r} or {OFFLOAD!r}, got {policy!r}")
        if quantize not in settings.QUANTIZATIONS:
            raise NodeError(f"quantize must be one of {', '.join(settings.QUANTIZATIONS)}, got {quantize!r}")
        folder = find_agent_folder(model)
        if device == "auto":
            device = str(module("comfy.model_management").get_torch_device())
        agent = load_agent(
            folder,
            dtype=dtype,
            device=device,
            decoding=decoding,
            memory=MEMORY_POLICIES[policy],
            quantize=quantize,
            fast_decoding=fast_decoding,
            host=memory.HOST,  # ComfyUI's model management places the weights
        )
        memory.track(agent)
        show_on_node(f"Load Agent: {agent.describe()}")
        return agent

    @staticmethod
    def _endpoint(url, model, api_key_env, decoding):
        policy = _check_endpoint(url, model, api_key_env)  # before anything is read or sent
        agent = load_agent(
            url, model=model, api_key_env=api_key_env.strip() or None, decoding=decoding, policy=policy
        )
        agent.probe(PROBE_TIMEOUT, cancel=interrupted)
        return agent


def show_on_node(text: str) -> None:
    """Write ``text`` in ComfyUI's log and on the running node (the frontend shows it under the widgets)."""
    logging.getLogger(__name__).info(text)
    context = optional_module("comfy_execution.utils")
    server = optional_module("server")
    running = context.get_executing_context() if context is not None else None
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if running is not None and instance is not None:
        instance.send_progress_text(text, running.node_id)


def endpoint_policy() -> EndpointPolicy:
    """What this machine allows: loopback, the environment's lists and the file in ComfyUI's user folder
    (its root, which ComfyUI's /userdata API cannot write to). Never the graph's choice."""
    user = Path(module("folder_paths").get_user_directory())
    return EndpointPolicy.machine(user / CONFIG_FILE_NAME)


def _check_endpoint(url: str, model: str, api_key_env: str) -> EndpointPolicy:
    """The machine's policy once ``url`` and ``api_key_env`` passed it; the key itself is not read here."""
    policy = endpoint_policy()
    policy.check(url, "endpoint_url")
    policy.check_key_env(api_key_env)
    if not str(model).strip():
        raise NodeError("endpoint_model is empty: give the model name the server serves")
    return policy


EMPTY_INSTRUCTION = "instruction is empty: write what to illustrate (a story, a process, a recipe)"


class _PlannerProgress:
    """The Planner's agent as make_plan calls it, moving ComfyUI's progress bar: one stretch per try and,
    for a local agent (its cancel hook is asked after every generated token), token by token within a try,
    so a model that never plans is a moving bar, not a silent wait. Everything else is the agent's own."""

    def __init__(self, agent, tries: int):
        self.agent = agent
        decoding = getattr(agent, "decoding", None)
        per_token = isinstance(agent, TransformersAgent) and decoding is not None
        self.per_try = decoding.max_new_tokens if per_token else 1
        self.progress = Progress(tries * self.per_try)
        self.tries = 0

    def __getattr__(self, name):
        if name == "agent":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.agent, name)

    def complete(self, messages, *, seed, temperature=None, cancel=None):
        start = self.tries * self.per_try
        self.tries += 1
        self.progress.set(start)
        hook = self._counting(cancel, start) if self.per_try > 1 else cancel
        answer = self.agent.complete(messages, seed=seed, temperature=temperature, cancel=hook)
        self.progress.set(start + self.per_try)
        return answer

    def _counting(self, cancel, start: int):
        looks, shown = 0, time.monotonic()

        def hook() -> bool:
            nonlocal looks, shown
            if cancel is not None and cancel():
                return True  # no bar update: ComfyUI's would raise the interrupt inside generation
            looks += 1  # the first look comes before the first token
            now = time.monotonic()
            if now - shown >= PROGRESS_EVERY:
                shown = now
                self.progress.set(start + min(looks - 1, self.per_try))
            return False

        return hook


class Planner:
    """The Planner: one instruction (and optional images) into an ordered plan of steps."""

    DESCRIPTION = (
        "Asks the agent for a plan: the steps of the story or process, each with a prompt for the "
        "image model and text for the reader. Same inputs and seed give the same plan (cached)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PLAN, "STRING")
    RETURN_NAMES = ("plan", "plan_json")
    OUTPUT_TOOLTIPS = (
        "The plan, for the Refine Loop or Plan to Prompts.",
        "The plan as JSON in the official execution_plan format.",
    )
    FUNCTION = "plan"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent": (AGENT, {"tooltip": "The Planner model, from Load Agent."}),
                "instruction": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "What to illustrate: a story, a process, a recipe (an empty one is "
                        "refused when queued). With images, an <image> marker places each one in the text; "
                        "without markers they come first.",
                    },
                ),
                "mode": (
                    list(settings.MODES),
                    {
                        "default": settings.DEFAULT_MODE,
                        "tooltip": "narrative: a story drawn from a white canvas. guidance: continue from "
                        "your last image. auto: guidance when images are connected, narrative otherwise.",
                    },
                ),
                "max_steps": (
                    "INT",
                    {
                        "default": settings.DEFAULT_MAX_STEPS,
                        "min": 1,
                        "max": settings.MAX_PLAN_STEPS,
                        "tooltip": "Plans longer than this are rejected and the Planner asked again.",
                    },
                ),
                "seed": _seed_input("Seeds the Planner's re-sampling when an answer does not parse."),
            },
            "optional": {
                "images": (
                    "IMAGE",
                    {"tooltip": "Optional pictures for the Planner to read (guidance mode)."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, instruction):
        """An empty instruction is refused when the prompt is queued, before any model loads. A linked
        instruction is not known yet (None here) and is checked when the node runs."""
        if instruction is None or str(instruction).strip():
            return True
        return EMPTY_INSTRUCTION

    def plan(self, agent, instruction, mode, max_steps, seed, images=None):
        if not str(instruction).strip():
            raise NodeError(EMPTY_INSTRUCTION)
        pictures = to_pil(images)
        with engine_errors("the Planner"):
            config = LoopConfig(max_steps=max_steps, seed=seed, mode=mode)
            watched = _PlannerProgress(agent, config.planner_tries)
            try:
                result = make_plan(watched, instruction, pictures, config=config, cancel=interrupted)
            except ProtocolError as error:
                shown = (
                    f" (its last answer began: {error.excerpt!r})"
                    if error.excerpt
                    else " (its answer was empty)"
                )
                raise NodeError(
                    f"the Planner ({_name(agent)}) gave no valid plan: {error.reason}{shown}. Try another "
                    f"seed, a larger max_new_tokens, or a model trained for planning"
                ) from None
        return (StoryPlan(result, instruction.strip(), pictures), result.plan.to_json())


# What the Critic node and the Critic Prompt node both take: the pictures and the step's two prompts.
CRITIC_STEP_INPUTS = {
    "before": (
        "IMAGE",
        {"tooltip": "The picture before the step (a white canvas for a story's first step)."},
    ),
    "after": ("IMAGE", {"tooltip": "The picture the image model made for the step."}),
    "step_instruction": (
        "STRING",
        {
            "multiline": True,
            "default": "",
            "tooltip": "The step's original prompt from the plan.",
        },
    ),
    "prompt_used": (
        "STRING",
        {
            "multiline": True,
            "default": "",
            "tooltip": "The prompt actually given to the image model for this picture.",
        },
    ),
}


def critic_pictures(before, after):
    """The before and after pictures as PIL images, one each and of one size, as the Critic compares them."""
    try:
        before_image, after_image = single(before, "before image"), single(after, "after image")
    except ValueError as error:
        raise NodeError(str(error)) from None
    if before_image.size != after_image.size:
        raise NodeError(
            "the before image is {}x{} but the after image is {}x{}: the Critic compares pictures of one "
            "size. Scale one of them first".format(*before_image.size, *after_image.size)
        )
    return before_image, after_image


def verdict_outputs(verdict, prompt_used: str, why_none: str) -> tuple[bool, str, str, str]:
    """(accepted, refined prompt, reasoning, verdict word): no verdict is "unchecked", never an acceptance."""
    if verdict is None:
        return (False, prompt_used, f"{why_none}; the picture was not judged", UNCHECKED)
    status = ACCEPTED if verdict.accepted else REJECTED
    refined = prompt_used if verdict.accepted else (verdict.refine_prompt or prompt_used)
    return (verdict.accepted, refined, verdict.reasoning or status, status)


class Critic:
    """The Critic: does the after image carry out the step? If not, a better prompt."""

    DESCRIPTION = (
        "Compares the before and after images with the step and answers accepted, or not accepted "
        "with a refined prompt for another attempt. When its answer never parses, the verdict output "
        "says unchecked and accepted is False."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("BOOLEAN", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("accepted", "refined_prompt", "reasoning", "verdict")
    OUTPUT_TOOLTIPS = (
        "True only when the Critic accepted the after image; False when it rejected it or gave no verdict.",
        "The prompt for the next attempt: the Critic's rewrite, or the prompt used when accepted.",
        "The Critic's reasoning, or why there is no verdict.",
        "accepted, rejected, or unchecked (the Critic's answer never parsed: the picture was not judged).",
    )
    FUNCTION = "judge"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent": (AGENT, {"tooltip": "The Critic model, from Load Agent (may be the Planner's)."}),
                **CRITIC_STEP_INPUTS,
                "seed": _seed_input("Seeds the Critic's re-sampling when an answer does not parse."),
            }
        }

    def judge(self, agent, before, after, step_instruction, prompt_used, seed):
        before_image, after_image = critic_pictures(before, after)
        with engine_errors("the Critic"):
            judged = critique(
                agent, before_image, after_image, step_instruction, prompt_used, seed=seed, cancel=interrupted
            )
        why = f"no verdict after {judged.tries} tries ({judged.error})"
        return verdict_outputs(judged.verdict, prompt_used, why)


def _name(agent) -> str:
    return str(getattr(agent, "name", type(agent).__name__))
