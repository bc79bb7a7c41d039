"""Every limit, default and choice list that more than one entry point shows, defined once.

The CLI, the nodes, the sandbox and training import these names; none restates a number.
"""

from __future__ import annotations

from .errors import BadInput

# -- the story ---------------------------------------------------------------------------------------------
MODES = ("auto", "narrative", "guidance")  # auto: guidance when images are given
DEFAULT_MODE = "auto"
DEFAULT_MAX_STEPS = 12
# A plan longer than this is a runaway generation, not a story.
MAX_PLAN_STEPS = 64
DEFAULT_MAX_ATTEMPTS = 3  # generations per step, retries included
# Which attempt a step keeps when the Critic rejected every one: the last, or the one whose verdict names the
# fewest problems (the default is what measured better in the sandbox: README, "Best of the attempts").
KEEP_LAST, KEEP_BEST = "last", "best"
KEEP_CHOICES = (KEEP_LAST, KEEP_BEST)
DEFAULT_KEEP = KEEP_LAST
# References that hold the cast: pictures of characters, a style or a place that every step's generator call
# carries beside the picture it edits (the Critic never sees them: its weights expect before/after only).
MAX_REFERENCES = 8
# Anchoring against drift: "first" also gives each edit the story's first picture, so a chain of edits keeps
# looking back at where it began (README, "References and anchoring").
ANCHOR_NONE, ANCHOR_FIRST = "none", "first"
ANCHOR_CHOICES = (ANCHOR_NONE, ANCHOR_FIRST)
DEFAULT_ANCHOR = ANCHOR_NONE
MAX_ATTEMPTS_LIMIT = 10
DEFAULT_PLANNER_TRIES = 3  # Planner answers tried before giving up
DEFAULT_CRITIC_TRIES = 2  # Critic answers tried before an attempt is kept unchecked
MAX_AGENT_TRIES = 10
DEFAULT_SEED = 0
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # what ComfyUI's seed widgets allow
DEFAULT_SIZE = 1024
MIN_SIZE, MAX_SIZE = 64, 4096
# The most pixels an input image may have (8192x8192), read from its header before anything is decoded.
# Below Pillow's own decompression-bomb limit, so a bomb meets this rule first. Inputs are fitted to the
# story's --width x --height anyway, so a larger picture only costs memory.
MAX_INPUT_PIXELS = 8192 * 8192

# -- agents ------------------------------------------------------------------------------------------------
DEFAULT_MAX_NEW_TOKENS = 2048
MAX_NEW_TOKENS_LIMIT = 32768
DEFAULT_TEMPERATURE = 0.0  # greedy: the same answer every run
# Re-sampling after an unparseable answer must differ from the first try, so it never runs greedy.
RESAMPLE_TEMPERATURE = 0.7
DTYPES = ("auto", "bf16", "fp16", "fp32")
# How a local agent's linear layers are stored: as ``dtype`` ("none"), 8-bit (LLM.int8) or 4-bit NF4 through
# bitsandbytes. The rest of the model (embeddings, norms, the output layer) stays in ``dtype``.
QUANTIZATIONS = ("none", "int8", "nf4")
DEFAULT_QUANTIZATION = "none"
DEFAULT_DEVICE = "auto"
# A local agent's fast decoding path: a static KV cache, which transformers compiles with torch.compile on an
# accelerator (never on the CPU). Off by default: on the CPU it measured no faster (bench/gpu_inference.py
# --agent DIR), and on CUDA it has not been measured yet; bench/gpu_inference.py measures it on a card.
DEFAULT_FAST_DECODING = False
MEMORY_POLICIES = ("keep", "offload")  # keep on the accelerator between calls, or back to the CPU after each
DEFAULT_HTTP_TIMEOUT = 120.0  # seconds
DEFAULT_HTTP_RETRIES = 3

# -- generators --------------------------------------------------------------------------------------------
DEFAULT_STRENGTH = 0.6  # img2img denoise
# What a ComfyUI server's stock checkpoint graphs sample with when --steps / --guidance are not given.
DEFAULT_COMFYUI_STEPS = 20
DEFAULT_COMFYUI_CFG = 7.0

# -- batch -------------------------------------------------------------------------------------------------
# Stories of a batch in flight at once. 1 runs them one after another; more overlap one story's agent calls
# with another's pictures (models that cannot be called from two threads at once are taken in turn).
DEFAULT_CONCURRENCY = 1
MAX_CONCURRENCY = 64


class BadSetting(BadInput):
    """A setting out of its range. ``setting`` is the field's name, so an entry point can name its own
    option."""

    def __init__(self, setting: str, rule: str, value):
        self.setting, self.rule, self.value = setting, rule, value
        super().__init__(f"{setting} must be {rule}, got {value!r}")

    def named(self, name: str) -> BadSetting:
        """The same error, naming the setting as the user typed it (``--max-attempts``, a widget name)."""
        return BadSetting(name, self.rule, self.value)


def check_range(setting: str, value, low, high) -> None:
    if not low <= value <= high:
        raise BadSetting(setting, f"between {low} and {high}", value)


def check_choice(setting: str, value, choices) -> None:
    if value not in choices:
        raise BadSetting(setting, "one of " + ", ".join(choices), value)
